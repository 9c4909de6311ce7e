"""Parity with `effdet`, the reference PyTorch port of EfficientDet (parity extra; it imports
torchvision, so it needs PYTHONPATH=tests/refshim under the CPU-only torch): parameter counts of
D0-D7x, and a tf_efficientdet checkpoint loaded into effscale's detector giving effdet's outputs
and decoded boxes."""
import dataclasses
import math

import pytest
import torch

from effscale import EffscaleError, create_model
from effscale.dense import dense_cost, resolve_dense_spec
from effscale.dense.boxes import anchor_boxes, decode, flatten_outputs
from effscale.dense.modules import build_dense_model


def _effdet():
    try:
        return pytest.importorskip("effdet")
    except (ImportError, RuntimeError) as error:  # torchvision's C ops against a CPU-only torch, no shim
        pytest.skip(f"effdet unavailable: {error}")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_d0_to_d7x_have_effdets_parameter_counts_exactly():
    effdet = _effdet()
    for name in ("d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d7x"):
        with torch.device("meta"):  # shapes only: no memory, no init
            reference = effdet.create_model(f"tf_efficientdet_{name}", pretrained=False, pretrained_backbone=False)
        expected = sum(p.numel() for p in reference.parameters())
        assert dense_cost(resolve_dense_spec(f"efficientdet_{name}", num_classes=90))["params"] == expected, name


@pytest.fixture(scope="module")
def d0_checkpoint(tmp_path_factory):
    """A tf_efficientdet_d0 at 256 px with every weight, BN statistic and fusion weight random."""
    effdet = _effdet()
    torch.manual_seed(0)
    reference = effdet.create_model("tf_efficientdet_d0", pretrained=False, pretrained_backbone=False,
                                    image_size=(256, 256))
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1), module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5), module.bias.normal_(0, 0.1)
            if hasattr(module, "edge_weights"):
                module.edge_weights.uniform_(0.2, 2.0)
    path = tmp_path_factory.mktemp("effdet") / "tf_efficientdet_d0.pth"
    torch.save(reference.state_dict(), path)
    return reference.eval(), path


def test_a_tf_efficientdet_checkpoint_gives_effdets_outputs_and_boxes(d0_checkpoint):
    effdet = _effdet()
    reference, path = d0_checkpoint
    model = create_model("efficientdet_d0,resolution=256", weights=path)
    assert model.spec.num_classes == 90 and model.spec.backbone.padding == "same"
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, ours = reference(images), model(images)
        # the same model with the neck and backbone padded symmetrically: what parity rules out
        symmetric = build_dense_model(dataclasses.replace(
            model.spec, backbone=model.spec.backbone.replace(padding="symmetric")))
        symmetric.load_state_dict(model.state_dict())
        other = symmetric.eval()(images)
    for a, b, c in zip(theirs[0], ours[0], other[0]):
        error = (a - b).abs().max().item()
        assert error < 1e-5 and (a - c).abs().max().item() > 100 * error
    logits, offsets = flatten_outputs(*ours, 90)
    their_logits, their_offsets = flatten_outputs(*theirs, 90)
    assert torch.allclose(logits, their_logits, atol=1e-5)
    # decoded boxes: effdet's anchors with exact sqrt(2) ratios (its default is the rounded 1.4 x 0.7)
    root = math.sqrt(2)
    anchors = effdet.anchors.Anchors(3, 7, 3, [(1, 1), (root, 1 / root), (1 / root, root)], 4.0, (256, 256)).boxes
    expected = effdet.anchors.decode_box_outputs(their_offsets[0], anchors, output_xyxy=True)
    assert torch.allclose(anchor_boxes(model.spec), anchors[:, [1, 0, 3, 2]], atol=1e-3)
    assert torch.allclose(decode(offsets[0], anchor_boxes(model.spec)), expected, atol=1e-3)


def test_checkpoints_that_do_not_fit_are_refused_with_the_reason(d0_checkpoint, tmp_path):
    _, path = d0_checkpoint
    with pytest.raises(EffscaleError, match="does not fit efficientdet-phi-1"):
        create_model("efficientdet@-1", weights=path)
    state = torch.load(path, weights_only=True)
    pytorch_native = {k: v for k, v in state.items() if not (k.startswith("fpn.") and k.endswith("conv_pw.bias"))}
    torch.save(pytorch_native, tmp_path / "efficientdet_d0.pth")
    with pytest.raises(EffscaleError, match="redundant_bias=False"):
        create_model("efficientdet_d0,resolution=256", weights=tmp_path / "efficientdet_d0.pth")
    torch.save({"conv_stem.weight": torch.zeros(1)}, tmp_path / "classifier.pth")
    with pytest.raises(EffscaleError, match="neither an effscale detector"):
        create_model("efficientdet_d0", weights=tmp_path / "classifier.pth")
