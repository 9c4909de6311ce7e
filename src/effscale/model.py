"""`create_model`: a name or spec (plus overrides) to a ready module, optionally with weights."""
from __future__ import annotations

import os

from torch import nn

from .nn.network import EfficientNet
from .spec import NetworkSpec
from .zoo import resolve_image_spec


def create_model(name_or_spec: str | NetworkSpec, *, num_classes: int = 1000, in_chans: int = 3,
                 weights: str | os.PathLike | None = None, features_only: bool = False,
                 **overrides) -> nn.Module:
    """Build a model from a name in `list_models()` or a NetworkSpec; detectors and segmenters from
    their names (`efficientdet_d0`..`d7x`, `efficientdet@PHI`, `segmenter@PHI`, see
    dense.DENSE_NAME_FORMS) or a DetectorSpec / SegmenterSpec, with `num_classes` object classes.

    `overrides` replace spec fields (e.g. `padding="same"` for TF-ported weights, `bn_eps=1e-5`,
    `drop_path_rate=0.1`); their names are recorded in `model.explicit_fields`, and loading
    weights later never changes them. `weights` loads a checkpoint in any supported key layout,
    with the BN eps and padding its implementation computes with: applied before building for a
    named model, set with a warning for a NetworkSpec that differs (see
    `weights.model_from_checkpoint`, `weights.load_weights`).
    """
    if is_dense_reference(name_or_spec):
        return _create_dense(name_or_spec, num_classes=num_classes, in_chans=in_chans, weights=weights,
                             features_only=features_only, overrides=overrides)
    if weights is not None:
        from .weights import model_from_checkpoint
        return model_from_checkpoint(weights, name_or_spec, num_classes=num_classes, in_chans=in_chans,
                                     features_only=features_only, **overrides)
    spec = resolve_image_spec(name_or_spec, **overrides)
    model = EfficientNet(spec, num_classes=num_classes, in_chans=in_chans, features_only=features_only)
    model.explicit_fields = frozenset(overrides)  # the user's choices win over a checkpoint's (load_weights)
    return model


def is_dense_reference(reference) -> bool:
    from .dense.spec import DetectorSpec, EFFICIENTDET_TABLE, SegmenterSpec

    if isinstance(reference, (DetectorSpec, SegmenterSpec)):
        return True
    return isinstance(reference, str) and (reference.split(",")[0] in EFFICIENTDET_TABLE
                                           or reference.startswith(("efficientdet@", "segmenter@", "multitask@")))


def _create_dense(reference, *, num_classes, in_chans, weights, features_only, overrides) -> nn.Module:
    import dataclasses

    from .dense.io import load_dense_model
    from .dense.modules import build_dense_model
    from .dense.spec import resolve_dense_spec
    from .errors import EffscaleError

    if features_only or overrides:
        raise EffscaleError("detectors and segmenters take no features_only or spec overrides here; give "
                            "overrides in the name (e.g. 'efficientdet@-3,anchor_scale=2')")
    if weights is not None:
        from .dense.io import is_dense_file

        if is_dense_file(weights):
            return load_dense_model(weights)
        return _from_effdet(reference, weights, in_chans)
    spec = resolve_dense_spec(reference, num_classes=num_classes) if isinstance(reference, str) \
        else dataclasses.replace(reference, num_classes=num_classes)
    return build_dense_model(spec, in_chans)


def _from_effdet(reference, path, in_chans: int) -> nn.Module:
    """A detector with an effdet tf_efficientdet_* checkpoint: the spec named by `reference`, made to
    compute as the port does, with the checkpoint's class count."""
    import dataclasses

    from .dense.effdet_weights import effdet_compute, is_effdet_state, load_effdet_weights
    from .dense.modules import build_dense_model
    from .dense.spec import DetectorSpec, resolve_dense_spec
    from .errors import EffscaleError
    from .weights import read_state_dict

    state = read_state_dict(path)
    if not is_effdet_state(state):
        raise EffscaleError(f"{str(path)!r} is neither an effscale detector / segmenter file nor an effdet "
                            "EfficientDet checkpoint (tf_efficientdet_*)")
    spec = resolve_dense_spec(reference, num_classes=1) if isinstance(reference, str) else reference
    if not isinstance(spec, DetectorSpec):
        raise EffscaleError(f"{str(path)!r} is an effdet detector checkpoint; {spec.name} is not a detector")
    classes = state["class_net.predict.conv_pw.weight"].shape[0] // spec.num_anchors
    spec = dataclasses.replace(spec, num_classes=classes)
    model = build_dense_model(effdet_compute(spec), in_chans)
    return load_effdet_weights(model, state).eval()
