"""Analytic cost of a `SeriesSpec`, from the spec alone (never by tracing a module).

It walks `SeriesSpec.blocks()` and each block's `layers()` exactly as `nn.SeriesNet` builds its modules and follows the
image family's counting convention (effscale/cost.py): `params` is every parameter of the built
module (conv weights, the SE convs' and classifier's biases, the BN affine pairs), `macs` counts
convolutions and the classifier only (what `torch.utils.flop_counter` reports as conv + mm
FLOPs / 2; BN, activations, pooling, the SE multiply and residual adds are not MACs), and
`activations` is the output elements of those conv and linear layers (batch included).
Lengths follow the convs: out = floor((in + 2 * (k // 2) - k) / s) + 1.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..cost import _check_int, conv_output_size
from ..errors import EffscaleError
from ..spec import STEM_STRIDE
from .spec import DEFAULT_NUM_CLASSES, SeriesSpec


@dataclass(frozen=True)
class SeriesCost:
    """Totals of one inference pass of a series network at (length, batch)."""

    name: str
    length: int
    batch: int
    num_classes: int
    in_chans: int
    params: int
    macs: int
    activations: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Tally:
    def __init__(self, batch: int):
        self.batch, self.params, self.macs, self.activations = batch, 0, 0, 0

    def conv(self, in_channels: int, out_channels: int, kernel: int, length: int, stride: int = 1,
             groups: int = 1, *, bias: bool = False, norm: bool = True) -> int:
        """Adds a conv1d (and the batch norm after it, when `norm`); returns its output length."""
        out_length = conv_output_size(length, kernel, stride)
        weights = out_channels * (in_channels // groups) * kernel
        self.params += weights + (out_channels if bias else 0) + (2 * out_channels if norm else 0)
        self.macs += self.batch * out_length * weights
        self.activations += self.batch * out_channels * out_length
        return out_length


def series_cost(spec: SeriesSpec, batch: int = 1, *, length: int | None = None,
                num_classes: int = DEFAULT_NUM_CLASSES, in_chans: int = 1) -> SeriesCost:
    """Params, MACs and activations of `SeriesNet(spec, num_classes, in_chans)` on `batch` sequences of
    `length` samples (default: the spec's own length)."""
    if not isinstance(spec, SeriesSpec):
        raise EffscaleError(f"series_cost() takes a SeriesSpec, got {type(spec).__name__}")
    length = spec.resolution if length is None else length
    for name, value, minimum in (("length", length, 1), ("batch", batch, 1), ("num_classes", num_classes, 0),
                                 ("in_chans", in_chans, 1)):
        _check_int(name, value, minimum)
    tally = _Tally(batch)
    steps = tally.conv(in_chans, spec.stem_channels, spec.stem_kernel, length, STEM_STRIDE)
    for block in spec.blocks():
        for layer in block.layers():  # as SeriesNet builds them
            if layer.kind == "se":  # on the time-pooled vector (length 1), biased, no batch norm
                tally.conv(layer.in_channels, layer.squeeze, 1, 1, bias=True, norm=False)
                tally.conv(layer.squeeze, layer.in_channels, 1, 1, bias=True, norm=False)
            else:
                steps = tally.conv(layer.in_channels, layer.out_channels, layer.kernel, steps, layer.stride,
                                   groups=layer.groups)
    tally.conv(spec.out_channels, spec.head_channels, 1, steps)
    if num_classes:  # a linear layer is a length-1 1x1 conv with a bias
        tally.conv(spec.head_channels, num_classes, 1, 1, bias=True, norm=False)
    return SeriesCost(name=spec.name, length=length, batch=batch, num_classes=num_classes, in_chans=in_chans,
                      params=tally.params, macs=tally.macs, activations=tally.activations)
