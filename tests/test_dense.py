"""Detector specs and EfficientDet's compound scaling (issue 12, first part): the published
table for the named models, the formula for any other phi, and the input-size rule."""
import math

import pytest

import effscale
from effscale import EffscaleError
from effscale.dense import DetectorSpec, EFFICIENTDET_TABLE, efficientdet, efficientdet_formula, fast_scaling


def test_the_named_detectors_follow_the_formula_up_to_hand_rounding_and_break_it_at_d5_d7():
    for phi in range(8):
        table, formula = efficientdet(phi), efficientdet_formula(phi)
        assert table.name == f"efficientdet_d{phi}" and table.resolution % 128 == 0
        assert table.backbone.name == f"efficientnet_b{min(phi, 6)}"  # D7 reuses B6
        assert table.backbone.resolution == table.resolution  # the backbone sees the detector's input
        # D0-D6 widths are 64 * 1.35^phi rounded by hand (within 10 %); D7 keeps D6's 384
        assert abs(table.fpn_channels / (64 * 1.35 ** min(phi, 6)) - 1) < 0.10
        if phi <= 4:  # the formula exactly, for repeats and input
            assert (table.fpn_layers, table.head_layers, table.resolution) == (
                formula["fpn_layers"], formula["head_layers"], formula["resolution"])
        else:  # the table caps BiFPN repeats (and raises D5's and D7's input): the table wins
            assert table.fpn_layers < formula["fpn_layers"] and table.resolution >= formula["resolution"]
    assert efficientdet(5).resolution > efficientdet_formula(5)["resolution"]
    d7x = efficientdet("d7x")
    assert d7x.levels == (3, 4, 5, 6, 7, 8) and d7x.backbone.name == "efficientnet_b7" and d7x.resolution % 256 == 0
    assert set(EFFICIENTDET_TABLE) == {f"efficientdet_d{i}" for i in range(8)} | {"efficientdet_d7x"}


@pytest.mark.parametrize("phi", [-2.0, -1.0, -0.5, 0.5, 2.5, 8.0])
def test_any_phi_gives_a_legal_detector_scaled_with_its_backbone(phi):
    spec = efficientdet(phi)
    assert spec.resolution % 2 ** spec.max_level == 0 and spec.fpn_channels % 8 == 0
    assert spec.fpn_layers >= 1 and spec.head_layers >= 1
    assert spec.backbone == effscale.compound(effscale.get_spec("efficientnet_b0"), phi).replace(
        resolution=spec.resolution)
    smaller, larger = efficientdet(phi - 1), efficientdet(phi + 1)
    assert smaller.fpn_channels <= spec.fpn_channels <= larger.fpn_channels
    assert smaller.resolution <= spec.resolution <= larger.resolution
    assert efficientdet_formula(0.5)["resolution"] == 640  # 576 px: to the nearest multiple of 128, halves up


def test_bad_detector_specs_name_the_value_and_what_is_allowed():
    b0 = effscale.get_spec("efficientnet_b0")
    with pytest.raises(EffscaleError, match=r"input resolution 500 must be a multiple of 2\^max_level = 128 .*"
                                            r"e\.g\. 384 or 512"):
        DetectorSpec("d", b0, 500, 64, 3, 3)
    with pytest.raises(EffscaleError, match=r"resolution 640 must be a multiple of 2\^max_level = 256 .*"
                                            r"e\.g\. 512 or 768"):
        DetectorSpec("d", b0, 640, 64, 3, 3, max_level=8)
    with pytest.raises(EffscaleError, match="fpn_channels=0 must be an integer >= 1"):
        DetectorSpec("d", b0, 512, 0, 3, 3)
    with pytest.raises(EffscaleError, match="neck 'panet' is unknown; allowed: bifpn, fpn"):
        DetectorSpec("d", b0, 512, 64, 3, 3, neck="panet")
    with pytest.raises(EffscaleError, match="min_level 6 is beyond the backbone's deepest level P5"):
        DetectorSpec("d", b0, 512, 64, 3, 3, min_level=6)
    with pytest.raises(EffscaleError, match="detector 'd9' is unknown; named: efficientdet_d0"):
        efficientdet("d9")
    with pytest.raises(EffscaleError, match="phi=nan must be a finite number"):
        efficientdet(math.nan)


def test_fast_scaling_gives_width_most_of_the_flops_and_multiplies_them_by_the_factor():
    b0 = effscale.get_spec("efficientnet_b0")
    from effscale.dense.spec import fast_scaling_coefficients

    c = fast_scaling_coefficients(4.0, alpha=0.8)
    assert c.depth * c.width ** 2 * c.resolution ** 2 == pytest.approx(4.0)
    assert c.width ** 2 == pytest.approx(4.0 ** 0.8) and c.depth == pytest.approx(c.resolution ** 2)
    scaled = fast_scaling(b0, 4.0)
    # rounding repeats up (ceil) and channels to multiples of 8 only adds: 5.2x here, not 4x
    assert 4.0 <= effscale.cost(scaled).macs / effscale.cost(b0).macs < 5.5
    with pytest.raises(EffscaleError, match="alpha=1.5 must be at most 1"):
        fast_scaling(b0, 2.0, alpha=1.5)


def test_d0_d7_parameter_counts_match_the_published_ones():
    from effscale.dense.cost import detector_params

    # EfficientDet paper (Tan, Pang & Le 2020) Table 2, 90 COCO classes, in millions rounded to 0.1:
    # our count must round to the same figure (|ours - published| < 0.05 M)
    published = [3.9, 6.6, 8.1, 12.0, 20.7, 33.7, 51.9, 51.9]
    for phi, millions in enumerate(published):
        counted = detector_params(efficientdet(phi))
        assert abs(counted["total"] / 1e6 - millions) < 0.05, (phi, counted)
        assert counted["total"] == sum(v for k, v in counted.items() if k != "total")
    d0 = detector_params(efficientdet("d0"))
    b0 = effscale.cost("efficientnet_b0")
    # D0's backbone is B0 without its head conv (320 -> 1280, with batch norm) and classifier
    assert d0["backbone"] == b0.params - (320 * 1280 + 2 * 1280) - (1280 * 1000 + 1000)
    fewer = detector_params(efficientdet("d0", num_classes=1))
    assert d0["class_head"] - fewer["class_head"] == 9 * 89 * (64 + 1)  # 9 anchors x 89 classes, weights + bias


def test_the_module_has_exactly_the_parameters_the_spec_counts_and_one_map_per_level():
    import torch

    from effscale.dense import detector_params
    from effscale.dense.modules import EfficientDet

    for spec in (efficientdet("d0"), efficientdet("d7x")):
        module = EfficientDet(spec)
        assert sum(p.numel() for p in module.parameters()) == detector_params(spec)["total"]
    backbone = effscale.scale(effscale.get_spec("efficientnet_b0"), effscale.Coefficients(width=0.25, depth=0.5))
    tiny = DetectorSpec("tiny", backbone, 128, 16, 2, 2, num_classes=3)
    module = EfficientDet(tiny)
    assert sum(p.numel() for p in module.parameters()) == detector_params(tiny)["total"]
    classes, boxes = module(torch.randn(2, 3, 128, 128))
    assert [tuple(t.shape) for t in classes] == [(2, 27, 128 // 2 ** lvl, 128 // 2 ** lvl) for lvl in range(3, 8)]
    assert [t.shape[1] for t in boxes] == [36] * 5
    (sum(t.mean() for t in classes) + sum(t.mean() for t in boxes)).backward()
    assert all(p.grad is not None for p in module.parameters())  # every part takes part


def _brute_force_nms(boxes, scores, classes, threshold):
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(classes[i] != classes[k] or iou(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_batched_nms_equals_a_brute_force_one(seed):
    import torch

    from effscale.dense.nms import batched_nms

    generator = torch.Generator().manual_seed(seed)
    n = 200
    corner = torch.rand(n, 2, generator=generator) * 100
    size = torch.rand(n, 2, generator=generator) * 40 + 1
    boxes = torch.cat([corner, corner + size], dim=1)
    scores = torch.rand(n, generator=generator).round(decimals=2)  # ties too
    classes = torch.randint(0, 3, (n,), generator=generator)
    for threshold in (0.0, 0.3, 0.5, 0.9):
        kept = batched_nms(boxes, scores, classes, threshold).tolist()
        assert kept == _brute_force_nms(boxes.tolist(), scores.tolist(), classes.tolist(), threshold)
    assert batched_nms(boxes, scores, classes, 1.0).tolist() == sorted(range(n), key=lambda i: (-float(scores[i]), i))
    with pytest.raises(EffscaleError, match=r"iou_threshold=1.5 must be in \[0, 1\]"):
        batched_nms(boxes, scores, classes, 1.5)


def test_detector_macs_equal_the_modules_counted_flops_and_the_published_figures():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from effscale.dense.cost import detector_macs
    from effscale.dense.modules import EfficientDet

    backbone = effscale.scale(effscale.get_spec("efficientnet_b0"), effscale.Coefficients(width=0.25, depth=0.5))
    tiny = DetectorSpec("tiny", backbone, 128, 16, 2, 2, num_classes=3)
    module = EfficientDet(tiny).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.randn(1, 3, 128, 128))
    assert counter.get_total_flops() == 2 * detector_macs(tiny)["total"]  # exactly: every conv, every level
    # EfficientDet paper Table 2 "FLOPs" (multiply-adds), in billions: ours within 2 %
    published = [2.5, 6.1, 11, 25, 55, 135, 226, 325]
    for phi, billions in enumerate(published):
        assert abs(detector_macs(efficientdet(phi))["total"] / 1e9 / billions - 1) < 0.02


@pytest.mark.parametrize("name", ["efficientdet@-3,anchor_scale=2", "efficientdet@-3,neck=fpn,max_level=5",
                                  "multitask@-3,resolution=64"])
def test_per_layer_cost_adds_up_to_the_module_and_names_its_convs(name):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from effscale.dense import dense_cost, dense_layer_cost, resolve_dense_spec
    from effscale.dense.modules import build_dense_model

    spec = resolve_dense_spec(name, num_classes=3)
    counted = dense_layer_cost(spec)
    module = build_dense_model(spec).eval()
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        module(torch.zeros(1, 3, spec.resolution, spec.resolution))
    assert counted.params == sum(p.numel() for p in module.parameters()) == dense_cost(spec)["params"]
    assert 2 * counted.macs == flops.get_total_flops() and counted.macs == dense_cost(spec)["macs"]
    convs = [row for row in counted.layers if row.kind in ("conv", "pointwise", "depthwise", "se_reduce", "se_expand")]
    for row in convs:  # each conv row is the module's conv of that path and shape
        conv = module.get_submodule(row.name)
        assert (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.groups) == (
            row.in_channels, row.out_channels, row.kernel, row.groups), row.name
    kinds = {row.kind for row in counted.layers}
    expected = {"upsample", "add", "pool", "linear"}  # the multi-task segmenter's decoder and image head
    if hasattr(spec, "neck"):  # a detector's node sums, resizes and (BiFPN) bottom-up pooling
        expected = {"fusion", "upsample", "maxpool"} if spec.neck == "bifpn" else {"fusion", "upsample"}
    assert expected <= kinds
    # a shared head conv is counted once but read at every level
    if hasattr(spec, "neck"):
        rows = [r for r in counted.layers if r.name == "class_head.predict.pointwise"]
        assert len(rows) == len(spec.levels) and rows[0].params > 0 and all(r.params == 0 for r in rows[1:])
        assert all(r.bytes_read > r.activations for r in rows[1:])
    twice = dense_layer_cost(spec, batch=2)  # activations and their peak scale with the batch, weights do not
    assert twice.peak_activation_bytes == 2 * counted.peak_activation_bytes and twice.params == counted.params
