"""Dense tasks end to end on tiny data: the generator, COCO / mask loading with malformed-annotation
reports, anchors and losses, the metrics (faster-coco-eval cross-checked with pycocotools), the
segmenter's cost, training through the trainer (exact resume), eval and predict."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from effscale.data import DataWarning
from effscale.dense import boxes as B
from effscale.dense.cost import dense_cost
from effscale.dense.data import IGNORE, load_dense
from effscale.dense.io import load_dense_model
from effscale.dense.metrics import coco_map, confusion_matrix, segmentation_scores
from effscale.dense.modules import build_dense_model
from effscale.dense.spec import DetectorSpec, dense_spec_from_dict, dense_spec_to_dict, resolve_dense_spec
from effscale.dense.synth import decode_rle, encode_rle, make_dense_task
from effscale.errors import EffscaleError

def pycocotools_map(ground_truth: dict, detections: list[dict]) -> list[float]:
    """The first three COCO stats by pycocotools, the reference faster-coco-eval is checked against."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats[:3]]


TINY_DET = "efficientdet@-3,resolution=64,max_level=5,anchor_scale=2"
TINY_SEG = "segmenter@-3,resolution=64,output_stride=8,decoder_channels=16"
TINY_MT = "multitask@-3,resolution=64,output_stride=8,decoder_channels=16"
TINY = {"detection": TINY_DET, "segmentation": TINY_SEG, "multitask": TINY_MT}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense") / "task"
    make_dense_task(out, train_images=12, test_images=4, size=64, min_object=8, max_object=32, seed=3)
    return out


def test_generator_writes_consistent_coco_and_masks(task_dir, tmp_path):
    coco = json.loads((task_dir / "train" / "instances.json").read_text())
    assert len(coco["images"]) == 12 and [c["id"] for c in coco["categories"]] == list(range(1, 11))
    for image in coco["images"][:4]:
        semantic = np.asarray(Image.open(task_dir / "train" / "masks" / image["file_name"]))
        objects = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert objects
        painted = np.zeros_like(semantic)
        for annotation in objects:
            mask = decode_rle(annotation["segmentation"])
            ys, xs = np.nonzero(mask)
            x, y, w, h = annotation["bbox"]
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # box = mask extent
            assert annotation["area"] == mask.sum()
            painted[mask] = annotation["category_id"]
        assert (painted == semantic).all()  # the PNG mask is exactly the instances' pixels
    again = tmp_path / "again"
    make_dense_task(again, train_images=12, test_images=4, size=64, min_object=8, max_object=32, seed=3)
    assert (again / "train" / "instances.json").read_text() == (task_dir / "train" / "instances.json").read_text()
    with pytest.raises(EffscaleError, match="already holds"):
        make_dense_task(again)


def test_rle_matches_pycocotools():
    from pycocotools import mask as coco_mask

    mask = np.random.default_rng(0).random((7, 5)) > 0.6
    mask[0, 0] = True  # a leading run of ones: counts start with a zero run
    rle = encode_rle(mask)
    assert (decode_rle(rle) == mask).all()
    compressed = coco_mask.frPyObjects(rle, *rle["size"])
    assert (coco_mask.decode(compressed).astype(bool) == mask).all()
    # compressed RLE (COCO's crowd annotations) read without pycocotools: small and long runs, both ends
    rng = np.random.default_rng(1)
    for shape, density in (((7, 5), 0.6), ((64, 48), 0.97), ((120, 90), 0.02), ((33, 200), 0.5)):
        mask = rng.random(shape) > density
        mask[:, 10:30] = True  # long runs: counts of several 5-bit groups, and large differences
        encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert (decode_rle(encoded) == mask).all()  # counts as pycocotools' bytes
        assert (decode_rle({**encoded, "counts": encoded["counts"].decode()}) == mask).all()  # as JSON's string
    with pytest.raises(ValueError, match="ends inside a count"):
        decode_rle({"size": [2, 2], "counts": "0o"})


def test_malformed_annotations_are_counted_not_crashing(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 40), (9, 9, 9)).save(images / "a.png")
    Image.new("RGB", (40, 40)).save(images / "b.png")
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"},
                       {"id": 3, "file_name": "gone.png"}],
            "categories": [{"id": 7, "name": "thing"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 10]},     # fine
                {"id": 2, "image_id": 1, "category_id": 7, "bbox": [70, 30, 20, 20]},     # partly outside: clipped
                {"id": 3, "image_id": 1, "category_id": 7, "bbox": [5, 5, -3, 4]},        # negative size
                {"id": 4, "image_id": 1, "category_id": 99, "bbox": [1, 1, 4, 4]},        # unknown category
                {"id": 5, "image_id": 42, "category_id": 7, "bbox": [1, 1, 4, 4]},        # unknown image
                {"id": 6, "image_id": 1, "category_id": 7, "bbox": [200, 200, 5, 5]},     # entirely outside
                {"id": 7, "image_id": 2, "category_id": 7, "bbox": [0, 0, 8, 8]}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    from effscale.dense import data as D

    with pytest.warns(DataWarning) as caught:
        # hold-out rule off: every image in train, so the test split is empty -> a clear error
        with pytest.raises(EffscaleError, match="no usable images"):
            load_dense(f"coco:{path},{images}", kind="boxes", size=64)
    message = str(caught[0].message)
    for phrase in ("1 boxes partly outside the image (clipped)", "1 boxes with zero or negative size (dropped)",
                   "1 unknown category ids (dropped)", "1 annotations of unknown image ids (dropped)",
                   "1 boxes outside the image (dropped)", "1 missing image files (image dropped)"):
        assert phrase in message
    dataset = D._from_coco(coco, images, "boxes", 64, "t")
    assert len(dataset) == 2 and dataset.scales[0] == pytest.approx(64 / 80)
    rows = dataset.labels[0][dataset.labels[0][:, 4] >= 0]
    clipped = rows[1, :4] / dataset.scales[0]
    assert clipped.tolist() == pytest.approx([70, 30, 80, 40])  # clipped to the 80 x 40 image
    assert dataset.coco_ground_truth()["annotations"][0]["bbox"] == pytest.approx([10, 10, 20, 10])
    with pytest.raises(EffscaleError, match="scheme 'voc:' is unknown"):
        load_dense("voc:x", kind="boxes", size=64)


def test_anchor_order_matches_flattened_head_outputs():
    spec = resolve_dense_spec(TINY_DET, num_classes=2)
    anchors = B.anchor_boxes(spec)
    levels = spec.levels
    assert len(anchors) == sum((64 // 2 ** level) ** 2 for level in levels) * spec.num_anchors
    # a fake head whose box map carries each cell's centre: flattening must line up with the anchors
    maps = []
    for level in levels:
        cells = 64 // 2 ** level
        centre = (torch.arange(cells) + 0.5) * 2 ** level
        cy, cx = torch.meshgrid(centre, centre, indexing="ij")
        per_anchor = torch.stack([cx, cy, cx, cy])  # 4 x H x W
        maps.append(per_anchor.repeat(spec.num_anchors, 1, 1)[None])
    classes = [torch.zeros(1, spec.num_anchors * 2, m.shape[-2], m.shape[-1]) for m in maps]
    _, flat = B.flatten_outputs(classes, maps, 2)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert torch.allclose(flat[0, :, :2], centres)


def test_matching_encoding_and_losses():
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 20, 20], [50, 50, 60, 60]], dtype=torch.float32)
    box = torch.tensor([[0, 0, 11, 11]], dtype=torch.float32)
    assigned = B.match(anchors, box)
    assert assigned.tolist() == [0, -1, -1]  # IoU 0.83 positive, 0.30 negative, 0 negative
    tiny = torch.tensor([[55, 55, 57, 57]], dtype=torch.float32)
    assert B.match(anchors, tiny).tolist() == [-1, -1, 0]  # IoU 0.04, yet its best anchor is claimed
    offsets = B.encode(box.repeat(3, 1), anchors)
    assert torch.allclose(B.decode(offsets, anchors), box.repeat(3, 1), atol=1e-5)
    assert B.generalized_iou(box, box).item() == pytest.approx(1)
    apart = B.generalized_iou(torch.tensor([[0., 0, 1, 1]]), torch.tensor([[2., 0, 3, 1]])).item()
    assert apart == pytest.approx(-1 / 3)  # no overlap: IoU 0 - (hull 3 - union 2) / hull 3
    logit, target = torch.tensor([0.3]), torch.tensor([1.0])
    p = torch.sigmoid(logit)
    assert B.focal_loss(logit, target).item() == pytest.approx(
        (0.25 * (1 - p) ** 1.5 * -torch.log(p)).item(), rel=1e-5)
    # a perfect box regression has no box loss; the class term stays
    targets = torch.tensor([[[0, 0, 11, 11, 1]]], dtype=torch.float32)
    logits = torch.zeros(1, 3, 2)
    for kind in B.BOX_LOSSES:
        parts = B.detection_loss(logits, offsets[None], anchors, targets, kind)
        assert parts["box"].item() == pytest.approx(0, abs=1e-5) and parts["class"].item() > 0
    wrong = offsets[None].clone()
    wrong[0, 0, 0] += 0.5
    # Huber (delta 0.1) of a 0.5 error is 0.1 * (0.5 - 0.05); weight 50, over 4 offsets, 1 positive
    assert B.detection_loss(logits, wrong, anchors, targets)["box"].item() == pytest.approx(50 * 0.045 / 4)


def test_coco_map_matches_pycocotools_and_perfect_is_100():
    rng = np.random.default_rng(1)
    images = [{"id": i, "width": 100, "height": 100} for i in range(1, 6)]
    truth, detections = [], []
    for image in images:
        for _ in range(3):
            x, y, s = rng.uniform(0, 60), rng.uniform(0, 60), rng.uniform(5, 40)
            category = int(rng.integers(1, 3))
            truth.append({"id": len(truth) + 1, "image_id": image["id"], "category_id": category,
                          "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0})
            jitter = rng.normal(0, 2, 4)
            detections.append({"image_id": image["id"], "category_id": category,
                               "bbox": [x + jitter[0], y + jitter[1], s + jitter[2], s + jitter[3]],
                               "score": float(rng.uniform(0.1, 1))})
    gt = {"images": images, "annotations": truth, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    ours = coco_map(gt, detections)
    reference = pycocotools_map(gt, detections)
    assert [ours[k] for k in ("map", "map_50", "map_75")] == pytest.approx([100 * v for v in reference[:3]], abs=1e-3)
    assert 0 < ours["map"] < 100
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in truth]
    assert coco_map(gt, perfect)["map"] == pytest.approx(100)
    nothing = coco_map(gt, [])
    assert nothing["map"] == 0 and nothing["map_large"] is None  # no large objects: None, not 0


def test_segmentation_scores_from_a_known_confusion():
    truth = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, 1]])
    predicted = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    confusion = confusion_matrix(predicted, truth, 3)
    assert confusion.sum() == 7  # the IGNORE pixel is left out
    scores = segmentation_scores(confusion, ["bg", "a", "b"])
    # IoU: bg 1/3, a 2/4, b 1/3 -> mean 0.3889; pixel accuracy 4/7
    assert scores["miou"] == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 3) / 3, abs=1e-3)
    assert scores["pixel_accuracy"] == pytest.approx(100 * 4 / 7, abs=1e-3)


@pytest.mark.parametrize("reference", [TINY_SEG, TINY_MT])
def test_segmenter_cost_equals_the_module_and_flop_counter(reference):
    from torch.utils.flop_counter import FlopCounterMode

    spec = resolve_dense_spec(reference, num_classes=3)
    model = build_dense_model(spec).eval()
    counted = dense_cost(spec)
    assert counted["params"] == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as flops:
        model(torch.zeros(1, 3, 64, 64))
    assert counted["macs"] == flops.get_total_flops() // 2
    assert dense_spec_from_dict(json.loads(json.dumps(dense_spec_to_dict(spec)))) == spec


def test_dense_names_and_overrides():
    spec = resolve_dense_spec("efficientdet@-3,anchor_scale=2", num_classes=4)
    assert isinstance(spec, DetectorSpec) and spec.resolution == 128 and spec.anchor_scale == 2
    assert spec.fpn_channels == 24 and spec.fpn_layers == 1 and spec.head_layers == 2  # the rule at phi -3
    with pytest.raises(EffscaleError, match="override 'colour=red' must be field=value"):
        resolve_dense_spec("efficientdet@-3,colour=red", num_classes=4)
    with pytest.raises(EffscaleError, match="unknown"):
        resolve_dense_spec("retinanet", num_classes=4)
    with pytest.raises(EffscaleError, match="multiple of 2\\^max_level = 128"):
        resolve_dense_spec("efficientdet@-3,resolution=100", num_classes=4)


def _config(task, data, out, **changes):
    from effscale.train import TrainConfig

    model = changes.pop("model", TINY[task])
    return TrainConfig(data=data, out=str(out), task=task, model=model, epochs=2, batch_size=4,
                       progress=False, threads=1, **changes)


@pytest.mark.parametrize("task", ["detection", "segmentation", "multitask"])
def test_dense_training_resumes_exactly_and_evaluates(task, task_dir, tmp_path):
    from effscale.train import train

    data = f"coco:{task_dir}" if task == "detection" else f"masks:{task_dir}"
    from effscale.train import trainer

    whole = train(_config(task, data, tmp_path / "whole", checkpoint_every=1))
    original = trainer._checkpoint

    def stop_after_step_4(run):  # as a Ctrl-C right after step 4's checkpoint
        original(run)
        if run.step == 4:
            raise KeyboardInterrupt

    trainer._checkpoint = stop_after_step_4
    try:
        with pytest.raises(KeyboardInterrupt):
            train(_config(task, data, tmp_path / "part", checkpoint_every=1))
    finally:
        trainer._checkpoint = original
    resumed = train(_config(task, data, tmp_path / "part", checkpoint_every=1, resume=True))
    assert resumed["steps"] == whole["steps"] == 6
    a = load_dense_model(tmp_path / "whole")
    b = load_dense_model(tmp_path / "part")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    metric = "test_map" if task == "detection" else "test_miou"
    assert whole[metric] == resumed[metric]
    if task == "multitask":
        assert 0 <= whole["test_top1"] <= 100 and whole["test_top1"] == resumed["test_top1"]
    assert whole["params"] == sum(p.numel() for p in a.parameters())
    assert a.classes[0] == "T-shirt/top"


def test_dense_training_refuses_classification_options(task_dir, tmp_path):
    from effscale.train import train

    with pytest.raises(EffscaleError, match="--teacher is for classification"):
        train(_config("detection", f"coco:{task_dir}", tmp_path / "x", teacher="t"))
    with pytest.raises(EffscaleError, match="mask folders have no boxes"):
        train(_config("detection", f"masks:{task_dir}", tmp_path / "y"))
    with pytest.raises(EffscaleError, match="--task multitask trains a multi-task model"):
        train(_config("multitask", f"masks:{task_dir}", tmp_path / "z", model=TINY_SEG))
    with pytest.raises(EffscaleError, match="loss weights"):
        train(_config("multitask", f"masks:{task_dir}", tmp_path / "w", loss_weights=(0, 0)))
    with pytest.raises(EffscaleError, match="scale jitter 2,1 must be two numbers LO,HI"):
        train(_config("detection", f"coco:{task_dir}", tmp_path / "v", scale_jitter=(2, 1)))


def test_biased_rules_keep_the_flops_per_phi():
    from effscale.dense.data import dominant_classes
    from effscale.scaling import ScalingRule

    rule = ScalingRule()
    for toward in ("resolution", "width"):
        biased = rule.biased(toward)
        assert biased.flops_base == pytest.approx(rule.flops_base)
        assert (biased.gamma > rule.gamma) == (toward == "resolution") and biased.alpha < rule.alpha
    with pytest.raises(EffscaleError, match="allowed: strength up to 1.095"):
        rule.biased("width", 1.2)
    with pytest.raises(EffscaleError, match="rule bias 'depth' is unknown"):
        rule.biased("depth")
    wide = resolve_dense_spec("multitask@1,rule=width", num_classes=3)
    tall = resolve_dense_spec("multitask@1,rule=resolution", num_classes=3)
    assert tall.resolution > wide.resolution and wide.backbone.stages[-1].out_channels > \
        tall.backbone.stages[-1].out_channels
    masks = torch.tensor([[[0, 1, 1], [2, IGNORE, 0]], [[0, 0, 0], [0, 0, 0]]])
    assert dominant_classes(masks, 3).tolist() == [0, -100]  # value 1 = class 0 covers most; none: ignored


def test_cli_eval_and_predict_for_a_detector(task_dir, tmp_path):
    from effscale.train import train

    train(_config("detection", f"coco:{task_dir}", tmp_path / "run", max_steps=1))
    run = [sys.executable, "-m", "effscale"]
    evaluated = subprocess.run(run + ["eval", str(tmp_path / "run"), "--data", f"coco:{task_dir}", "--json"],
                               capture_output=True, text=True, check=True)
    result = json.loads(evaluated.stdout)
    assert result["task"] == "detection" and result["samples"] == 4 and "map_50" in result
    image = task_dir / "test" / "images" / "000000.png"
    predicted = subprocess.run(run + ["predict", str(image), "--weights", str(tmp_path / "run"), "--out",
                                      str(tmp_path / "drawn"), "--score-threshold", "0", "--json"],
                               capture_output=True, text=True, check=True)
    rows = json.loads(predicted.stdout)
    assert rows[0]["detections"] and Image.open(rows[0]["drawing"]).size == (64, 64)
    assert all(math.isfinite(v) for d in rows[0]["detections"] for v in d["box_xyxy"])


def test_dense_study_matches_macs_then_trains_and_resumes(task_dir, tmp_path, monkeypatch):
    from effscale.search import dense_study as S

    base = resolve_dense_spec(TINY_DET, num_classes=10)
    runs = {r["strategy"]: r for r in S.plan_dense_runs(S.DenseStudyConfig("detection", "x", "y", targets=(2,)), base)}
    base_macs = dense_cost(base)["macs"]
    for strategy in ("depth", "width"):
        assert runs[strategy]["matched"]
        assert dense_cost(runs[strategy]["spec"])["macs"] / base_macs == pytest.approx(runs[strategy]["macs_ratio"],
                                                                                        abs=1e-3)
    assert runs["width"]["spec"].fpn_channels == base.fpn_channels  # backbone-only strategies leave the neck
    assert runs["joint"]["spec"].fpn_channels > base.fpn_channels  # EfficientDet's rule grows it too
    config = S.DenseStudyConfig("segmentation", f"masks:{task_dir}", str(tmp_path / "study"), model=TINY_SEG,
                                strategies=("width",), seeds=1, epochs=1, batch_size=4, progress=False)
    result = S.run_dense_study(config)
    assert [r["strategy"] for r in result["rows"]] == ["base", "width"]
    assert (tmp_path / "study" / "study.png").exists() and "| 2x | width |" in (tmp_path / "study" / "report.md").read_text()

    def no_training(_config):
        raise AssertionError("a finished study must not train again")

    monkeypatch.setattr("effscale.train.train", no_training)
    assert S.run_dense_study(config)["rows"] == result["rows"]
    with pytest.raises(EffscaleError, match="other settings"):
        S.run_dense_study(S.DenseStudyConfig("segmentation", f"masks:{task_dir}", str(tmp_path / "study"),
                                             model=TINY_SEG, strategies=("width",), seeds=1, epochs=2, batch_size=4))


@pytest.mark.parametrize("neck", ["bifpn", "fpn"])
def test_detector_cost_equals_the_module_for_both_necks_ending_inside_the_backbone(neck):
    """P3-P5 ends inside the backbone: the top level is a backbone feature to be width-converted."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = resolve_dense_spec(f"{TINY_DET},neck={neck}", num_classes=3)
    model = build_dense_model(spec).eval()
    counted = dense_cost(spec)
    assert counted["params"] == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as flops:
        class_maps, box_maps = model(torch.zeros(1, 3, 64, 64))
    assert counted["macs"] == flops.get_total_flops() // 2
    assert [m.shape[-1] for m in class_maps] == [8, 4, 2] and box_maps[0].shape[1] == spec.num_anchors * 4
    if neck == "fpn":  # no fusion weights, no bottom-up nodes: fewer parameters than the BiFPN
        bifpn = dense_cost(resolve_dense_spec(TINY_DET, num_classes=3))
        assert counted["params_by_part"]["bifpn"] < bifpn["params_by_part"]["bifpn"]


def test_info_shows_a_detector_by_part(capsys):
    from effscale.cli import main

    assert main(["info", "efficientdet_d0", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["params"] == 3_880_067 and shown["params_by_part"]["total"] == shown["params"]
    assert main(["info", "efficientdet@-3", "--phi", "1"]) == 2
    assert "--phi is for classifier specs" in capsys.readouterr().err


def test_an_exported_detector_evaluates_and_predicts_as_the_pytorch_one(task_dir, tmp_path, capsys):
    from effscale.cli import main
    from effscale.dense.io import save_dense_weights
    from effscale.dense_predict import evaluate_dense_weights, predict_dense
    from effscale.export import export, load_exported
    from effscale.train import train

    pytest.importorskip("onnxruntime")
    train(_config("detection", f"coco:{task_dir}", tmp_path / "run", max_steps=2))
    # two steps leave every score near the prior 0.01, and exact ties order differently in any two
    # runtimes: spread the class logits so that the detections compared below are well separated
    trained = load_dense_model(tmp_path / "run")
    with torch.no_grad():
        trained.class_head.predict.pointwise.weight.normal_(0, 5.0, generator=torch.Generator().manual_seed(0))
        trained.class_head.predict.pointwise.bias.fill_(0.0)
    save_dense_weights(trained, tmp_path / "run" / "model.safetensors", extra={"classes": trained.classes})
    manifest = export(tmp_path / "run", tmp_path / "onnx")
    assert manifest["task"] == "detection" and [o["name"] for o in manifest["outputs"]] == ["scores", "boxes"]
    assert manifest["parity"]["passed"] and manifest["classes"][0] == "T-shirt/top"
    model = load_exported(tmp_path / "onnx")
    scores, boxes = model(torch.zeros(2, 3, 64, 64))
    anchors = sum(9 * (64 // 2 ** level) ** 2 for level in (3, 4, 5))
    assert scores.shape == (2, anchors, 10) and boxes.shape == (2, anchors, 4) and 0 <= scores.min() <= scores.max() <= 1
    torch_result = evaluate_dense_weights(tmp_path / "run", f"coco:{task_dir}")
    onnx_result = evaluate_dense_weights(tmp_path / "onnx", f"coco:{task_dir}")
    assert onnx_result["runtime"] == "onnxruntime" and torch_result["runtime"] == "torch"
    for key in ("map", "map_50", "map_75"):
        assert onnx_result[key] == pytest.approx(torch_result[key], abs=0.05)
    image = str(task_dir / "test" / "images" / "000000.png")
    ours = predict_dense([image], tmp_path / "run", tmp_path / "a", score_threshold=0.3)[0]["detections"]
    theirs = predict_dense([image], tmp_path / "onnx", tmp_path / "b", score_threshold=0.3)[0]["detections"]
    assert len(ours) == len(theirs) > 0
    assert all(a["class"] == b["class"] and a["box_xyxy"] == pytest.approx(b["box_xyxy"], abs=0.2)
               for a, b in zip(ours, theirs))
    assert main(["eval", str(tmp_path / "onnx"), "--data", f"coco:{task_dir}"]) == 0
    assert "(onnxruntime)" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "run"), "--data", f"coco:{task_dir}", "--runtime", "onnxruntime"]) == 2
    assert "--runtime is for exported artifact directories" in capsys.readouterr().err


def test_dense_training_starts_its_backbone_from_a_classifier(task_dir, tmp_path):
    from effscale import create_model
    from effscale.train import train
    from effscale.weights import save_weights

    backbone = resolve_dense_spec(TINY_DET, num_classes=1).backbone
    classifier = create_model(backbone.replace(padding="same", bn_eps=1e-3, mean=(0.1, 0.2, 0.3),
                                               std=(0.5, 0.5, 0.5)), num_classes=7)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in classifier.parameters():  # weights no fresh model has
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    save_weights(classifier, tmp_path / "classifier.safetensors")
    train(_config("detection", f"coco:{task_dir}", tmp_path / "run", max_steps=1, lr=1e-9,
                  init=str(tmp_path / "classifier.safetensors")))
    detector = load_dense_model(tmp_path / "run")
    # the backbone computes and preprocesses as the classifier did, and starts from its weights
    assert (detector.spec.backbone.padding, detector.spec.backbone.bn_eps) == ("same", 1e-3)
    assert detector.spec.backbone.mean == (0.1, 0.2, 0.3)
    theirs = dict(classifier.named_parameters())
    ours = dict(detector.backbone.named_parameters())
    assert len(ours) > 20 and all(torch.allclose(value, theirs[key], atol=1e-5) for key, value in ours.items())
    wrong = create_model("efficientnet_b0", num_classes=7)
    save_weights(wrong, tmp_path / "b0.safetensors")
    with pytest.raises(EffscaleError, match="choose a model whose backbone has the same stages"):
        train(_config("detection", f"coco:{task_dir}", tmp_path / "x", max_steps=1,
                      init=str(tmp_path / "b0.safetensors")))


@pytest.mark.parametrize("zoom", [0.6, 1.0, 1.7])
def test_scale_jitter_moves_boxes_and_masks_with_the_pixels(zoom):
    from effscale.dense.data import IGNORE
    from effscale.train.dense_task import _jitter

    torch.manual_seed(int(zoom * 10))
    images = torch.zeros(4, 3, 64, 64)
    images[:, :, 20:36, 24:44] = 255.0  # one white object per image: x 24..44, y 20..36
    boxes = torch.tensor([[[24.0, 20.0, 44.0, 36.0, 2.0], [0.0, 0.0, 0.0, 0.0, -1.0]]]).repeat(4, 1, 1)
    moved_images, moved = _jitter(images, boxes, (zoom, zoom), boxes=True)
    masks = (images[:, 0] > 0).long() * 3
    torch.manual_seed(int(zoom * 10))  # the same draws: the same zoom and shift
    _, moved_masks = _jitter(images, masks, (zoom, zoom), boxes=False)
    for k in range(4):
        bright = (moved_images[k, 0] > 127).nonzero()
        if moved[k, 0, 4] < 0:  # dropped: (almost) nothing of the object is left in view
            assert len(bright) < 0.3 * (20 * 16 * zoom * zoom)
            continue
        x1, y1, x2, y2 = moved[k, 0, :4].tolist()
        assert moved[k, 0, 4] == 2 and moved[k, 1, 4] == -1  # the padding row stays padding
        assert abs(bright[:, 1].min() - x1) <= 1 and abs(bright[:, 1].max() + 1 - x2) <= 1
        assert abs(bright[:, 0].min() - y1) <= 1 and abs(bright[:, 0].max() + 1 - y2) <= 1
        assert x2 - x1 <= 20 * zoom + 1e-4 and y2 - y1 <= 16 * zoom + 1e-4  # scaled, or clipped at the border
        inside = moved_masks[k] == 3
        assert ((moved_images[k, 0] > 127) == inside).float().mean() > 0.98  # masks follow the pixels
        if zoom < 1:  # a zoom out uncovers the canvas: unknown there, not background
            assert (moved_masks[k] == IGNORE).any() and (moved_images[k, 0][moved_masks[k] == IGNORE] == 0).all()
        else:
            assert not (moved_masks[k] == IGNORE).any()
