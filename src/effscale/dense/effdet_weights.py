"""Checkpoints of `effdet` (Ross Wightman's efficientdet-pytorch, the reference PyTorch port) in
effscale's EfficientDet.

effdet's `tf_efficientdet_*` models carry the TF reference's released weights. The architecture is
the one `modules.EfficientDet` builds (the parameter counts agree exactly, D0-D7x); the state dict
differs in names and in three conventions, which `convert_effdet_state` translates:
- names: `fpn.resample` / `fpn.cell.L.fnode.N` / `class_net` / `box_net`, timm's backbone names;
- the heads' batch norms are indexed [repeat][level] in effdet, [level][repeat] here;
- box outputs are (ty, tx, th, tw) per anchor in effdet (TF's y-first order), (tx, ty, tw, th) here:
  the box head's last conv is permuted, so the decoded boxes are effdet's.
and `effdet_compute` sets the spec to compute as the port does: TF 'same' padding in the backbone
and the neck's max pooling, backbone BN eps 1e-3, anchors in effdet's order (aspect ratios 1, 2,
1/2 for each scale). effdet's anchors for ratio 2 are 1.4 x 0.7 of the base size (the TF
reference's rounded figures); here they are sqrt(2) x 1/sqrt(2), about 1 % apart.

Only the tf_* ports are accepted: effdet's own PyTorch-trained `efficientdet_*` models drop the
conv bias before every batch norm (its `redundant_bias=False`) and use timm's own backbones, a
different parameter set.
"""
from __future__ import annotations

import dataclasses
import re

import torch

from ..errors import EffscaleError
from ..weights import key_map
from .spec import DetectorSpec

EFFDET_SIGNATURE = ("class_net.predict.conv_pw.weight", "box_net.predict.conv_pw.weight")
EFFDET_ASPECT_RATIOS = (1.0, 2.0, 0.5)  # effdet's (1, 1), (1.4, 0.7), (0.7, 1.4), as width / height
BOX_ORDER = (1, 0, 3, 2)  # effdet (ty, tx, th, tw) -> effscale (tx, ty, tw, th)


def is_effdet_state(keys) -> bool:
    keys = set(keys)
    return all(key in keys for key in EFFDET_SIGNATURE)


def effdet_compute(spec: DetectorSpec) -> DetectorSpec:
    """`spec` computing as effdet's tf_* ports do (see the module docstring)."""
    backbone = spec.backbone.replace(padding="same", bn_eps=1e-3)
    return dataclasses.replace(spec, backbone=backbone, aspect_ratios=EFFDET_ASPECT_RATIOS)


def _neck_name(key: str, model) -> str | None:
    """effscale's name for an effdet neck key, or None when the key is not a neck key."""
    found = re.fullmatch(r"fpn\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)", key)
    if found:
        return f"first_above.{'0' if found[2] == 'conv' else '1'}.{found[3]}"
    found = re.fullmatch(r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.(.+)", key)
    if not found:
        return None
    layer, node, rest = found[1], int(found[2]), found[3]
    prefix = f"bifpn.{layer}.nodes.{node}"
    if rest == "combine.edge_weights":
        return f"{prefix}.weights"
    converted = re.fullmatch(r"combine\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)", rest)
    if converted:  # keyed by the input's index in the running list of maps; ours by its position
        sources = model.bifpn[int(layer)].nodes[node].sources
        offset = int(converted[1])
        if offset not in sources:
            raise EffscaleError(f"effdet key {key!r}: node {node} has no input {offset} here (inputs {sources})")
        return f"{prefix}.convert.{sources.index(offset)}.{'0' if converted[2] == 'conv' else '1'}.{converted[3]}"
    conv = re.fullmatch(r"after_combine\.conv\.(conv_dw|conv_pw|bn)\.(\w+)", rest)
    if conv:
        part = {"conv_dw": "depthwise", "conv_pw": "pointwise", "bn": "bn"}[conv[1]]
        return f"{prefix}.conv.{part}.{conv[2]}"
    return None


def _head_name(key: str) -> str | None:
    found = re.fullmatch(r"(class|box)_net\.(conv_rep\.(\d+)|predict)\.(conv_dw|conv_pw)\.(\w+)", key)
    if found:
        part = "depthwise" if found[4] == "conv_dw" else "pointwise"
        where = f"convs.{found[3]}" if found[3] is not None else "predict"
        return f"{found[1]}_head.{where}.{part}.{found[5]}"
    found = re.fullmatch(r"(class|box)_net\.bn_rep\.(\d+)\.(\d+)\.bn\.(\w+)", key)
    if found:  # effdet [repeat][level] -> effscale [level][repeat]
        return f"{found[1]}_head.norms.{found[3]}.{found[2]}.{found[4]}"
    return None


def convert_effdet_state(state: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """effdet's state dict in the names and conventions of `model` (an effscale EfficientDet built
    from the matching spec); EffscaleError naming the keys when the two do not fit."""
    if not is_effdet_state(state):
        raise EffscaleError("not an effdet EfficientDet checkpoint: it lacks " + ", ".join(EFFDET_SIGNATURE))
    if "fpn.cell.0.fnode.0.after_combine.conv.conv_pw.bias" not in state:
        raise EffscaleError("this effdet checkpoint has no conv bias before its batch norms (one of effdet's own "
                            "efficientdet_* models, redundant_bias=False); only the tf_efficientdet_* ports of the "
                            "TF reference are supported")
    backbone = {theirs: ours for ours, theirs in key_map(model.spec.backbone, "timm").items()}
    converted, unknown = {}, []
    for key, value in state.items():
        name = None
        if key.startswith("backbone."):
            module, _, leaf = key[len("backbone."):].rpartition(".")
            if module in backbone:
                name = f"backbone.{backbone[module]}.{leaf}"
        else:
            name = _neck_name(key, model) or _head_name(key)
        if name is None:
            unknown.append(key)
            continue
        if name.startswith("box_head.predict.pointwise."):
            order = torch.tensor(BOX_ORDER)
            value = value.reshape(-1, 4, *value.shape[1:])[:, order].reshape(value.shape)
        converted[name] = value
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted]
    wrong = [k for k in converted if k in expected and converted[k].shape != expected[k].shape]
    unknown += [k for k in converted if k not in expected]
    if missing or wrong or unknown:
        raise EffscaleError(f"the effdet checkpoint does not fit {model.spec.name} ({len(missing)} missing, "
                            f"{len(wrong)} of another shape, {len(unknown)} unexpected keys, e.g. "
                            f"{(missing + wrong + unknown)[:3]}); is it the same model and class count?")
    return converted


def load_effdet_weights(model, state: dict[str, torch.Tensor]):
    """Copy an effdet checkpoint into `model` (built from `effdet_compute(spec)`); returns the model."""
    model.load_state_dict(convert_effdet_state(state, model), strict=True)
    return model


__all__ = ["EFFDET_ASPECT_RATIOS", "convert_effdet_state", "effdet_compute", "is_effdet_state",
           "load_effdet_weights"]
