"""Training: recipe pieces, exact resume after SIGKILL, divergence, transfer, distillation, DDP.

Runs use a tiny spec and a small generated IDX dataset so each takes seconds.
"""
import gzip
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import effscale
from effscale import EffscaleError, NetworkSpec
from effscale.train import TrainConfig, TrainingDiverged, distillation_loss, get_recipe, regularisation, train
from effscale.train.optim import RMSpropTF, lr_factor, parameter_groups

TINY_SPEC = """network tiny res=32 stem=8 head=32 act=swish dropout=0.1 drop_path=0.1 bn_momentum=0.1
mbconv r1 k3 s1 e1 c8 se0.25
mbconv r2 k3 s2 e3 c16 se0.25
mbconv r1 k3 s2 e3 c24 se0.25"""


def write_idx(folder: Path, n_train: int = 192, n_test: int = 64, classes: int = 4, seed: int = 0) -> Path:
    """A learnable toy dataset in the IDX format whose classes survive crops and flips: horizontal
    stripes, vertical stripes, a checkerboard, a flat field (plus noise)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:28, :28]
    patterns = [(rows // 3) % 2, (cols // 3) % 2, ((rows // 3) + (cols // 3)) % 2, np.full((28, 28), 0.5)]
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % classes
        noise = rng.integers(0, 60, size=(n, 28, 28))
        images = np.stack([patterns[label] * 180 for label in labels]) + noise
        images = images.clip(0, 255).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())
    return folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    spec_file = root / "tiny.txt"
    spec_file.write_text(TINY_SPEC)
    return {"data": f"idx:{write_idx(root / 'idx')}", "spec": str(spec_file), "root": root}


def config(toy, out, **changes) -> TrainConfig:
    options = dict(data=toy["data"], out=str(out), model=toy["spec"], batch_size=32, epochs=2, seed=3,
                   progress=False)
    options.update(changes)
    return TrainConfig(**options)


def read_weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


# -- recipe pieces -------------------------------------------------------------------------------
def test_recipes_follow_the_spec_and_batch():
    b0, b7 = effscale.get_spec("efficientnet_b0"), effscale.get_spec("efficientnet_b7")
    paper = get_recipe("paper", b0, batch_size=4096)
    assert paper.lr == pytest.approx(0.256) and paper.optimizer == "rmsprop_tf" and paper.ema_decay == 0.9999
    assert (paper.weight_decay, paper.label_smoothing, paper.warmup_epochs, paper.epochs) == (1e-5, 0.1, 5, 350)
    assert regularisation(b0) == (0.2, 0.2) and regularisation(b7)[0] == 0.5
    small = effscale.compound(b0, -3)
    assert regularisation(small)[0] < 0.2
    with pytest.raises(EffscaleError, match="unknown recipe 'quik'; did you mean quick"):
        get_recipe("quik", b0)


def test_lr_schedules():
    recipe = get_recipe("paper", effscale.get_spec("efficientnet_b0"))
    factors = [lr_factor(s, steps_per_epoch=10, total_steps=1000, recipe=recipe) for s in range(200)]
    assert factors[0] == pytest.approx(1 / 50) and factors[49] == 1.0  # 5 epochs of linear warmup
    assert factors[50] == 1.0 and factors[50 + 24] == pytest.approx(0.97)  # x0.97 every 2.4 epochs
    quick = get_recipe("quick", effscale.get_spec("efficientnet_b0"))
    end = lr_factor(999, steps_per_epoch=10, total_steps=1000, recipe=quick)
    assert end < 1e-4 and lr_factor(10, steps_per_epoch=10, total_steps=1000, recipe=quick) == pytest.approx(1.0)


def test_rmsprop_tf_matches_the_tf_update_rule():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = RMSpropTF([param], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    square, buffer, value = torch.ones(2), torch.zeros(2), param.detach().clone()
    for grad in (torch.tensor([0.5, -1.0]), torch.tensor([0.2, 0.3])):
        param.grad = grad.clone()
        optimizer.step()
        square = 0.9 * square + 0.1 * grad ** 2
        buffer = 0.9 * buffer + 0.1 * grad / torch.sqrt(square + 1e-3)
        value = value - buffer
        torch.testing.assert_close(param.detach(), value)


def test_no_weight_decay_on_bn_and_bias():
    model = effscale.create_model(NetworkSpec.from_text(TINY_SPEC), num_classes=3)
    decay, no_decay = parameter_groups(model, 0.1)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0 and len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_distillation_loss():
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert distillation_loss(logits, torch.randn(4, 5), labels, alpha=0, temperature=4, label_smoothing=0) == \
        pytest.approx(ce.item())
    assert distillation_loss(logits, logits.clone(), labels, alpha=1, temperature=4, label_smoothing=0) == \
        pytest.approx(0, abs=1e-6)


# -- runs ----------------------------------------------------------------------------------------
def test_train_writes_summary_metrics_and_weights(toy, tmp_path):
    out = tmp_path / "run"
    summary = train(config(toy, out, epochs=8, lr=0.01))
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    for key in ("test_top1", "test_top5", "params", "macs", "wall_s", "world_size", "command"):
        assert key in saved
    assert saved["world_size"] == 1 and saved["steps"] == 8 * (192 // 32)
    assert saved["test_top1"] > 50  # the toy classes are separable; chance is 25 %
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 49))
    assert [r["epoch"] for r in records if "test_top1" in r] == list(range(8))
    model = effscale.weights.model_from_file(out / "model.safetensors")
    assert model.num_classes == 4 and model.in_chans == 1
    assert effscale.weights.read_metadata(out / "model.safetensors")["extra"]["classes"] == ["0", "1", "2", "3"]


def _cli(*args, env=None) -> list[str]:
    return [sys.executable, "-m", "effscale", *args]


def test_resume_after_sigkill_is_bit_identical(toy, tmp_path):
    args = ["train", "--data", toy["data"], "--model", toy["spec"], "--batch-size", "32", "--epochs", "4",
            "--seed", "5", "--checkpoint-every", "1"]
    reference = tmp_path / "reference"
    subprocess.run(_cli(*args, "--out", str(reference)), check=True, capture_output=True, timeout=300)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(_cli(*args, "--out", str(interrupted)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoint = interrupted / "checkpoint.pt"
    deadline = time.time() + 240
    step = 0
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists():
            try:
                step = torch.load(checkpoint, weights_only=True)["step"]
            except Exception:  # noqa: BLE001 - caught between writes; try again
                step = 0
            if step >= 8:
                break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 8 <= step < 24 and step % 6, f"wanted a kill mid-epoch of the second or third epoch, got step {step}"
    assert not (interrupted / "summary.json").exists()
    subprocess.run(_cli(*args, "--out", str(interrupted), "--resume"), check=True, capture_output=True, timeout=300)

    ours, theirs = read_weights(interrupted / "model.safetensors"), read_weights(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    metrics = lambda run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    strip = lambda records: [{k: v for k, v in r.items() if k != "img_per_s"} for r in records]
    assert strip(metrics(interrupted)) == strip(metrics(reference))


def test_resume_refuses_a_different_run(toy, tmp_path):
    out = tmp_path / "run"
    train(config(toy, out, max_steps=2, checkpoint_every=1))
    with pytest.raises(EffscaleError, match="different seed"):
        train(config(toy, out, max_steps=2, seed=4, resume=True))
    with pytest.raises(EffscaleError, match="no checkpoint"):
        train(config(toy, tmp_path / "empty", resume=True))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(toy, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"the (loss|weights) became (nan|inf|non-finite)"):
        train(config(toy, out, lr=1e12, epochs=50, checkpoint_every=1, recipe="quick"))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.dtype.is_floating_point)
    assert not (out / "summary.json").exists()


def test_unwritable_out_and_full_disk_fail_before_training(toy, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EffscaleError, match="is not writable"):
        train(config(toy, blocker / "run"))
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(EffscaleError, match="MB free; this run needs"):
        train(config(toy, tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_bad_options(toy, tmp_path):
    with pytest.raises(EffscaleError, match="batch_size=0"):
        train(config(toy, tmp_path / "a", batch_size=0))
    with pytest.raises(EffscaleError, match="fp16 needs a GPU"):
        train(config(toy, tmp_path / "b", precision="fp16"))
    with pytest.raises(EffscaleError, match="larger than the training split"):
        train(config(toy, tmp_path / "c", batch_size=4096))
    with pytest.raises(EffscaleError, match="divisible"):
        train(config(toy, tmp_path / "d", batch_size=30, accumulation=4))


def test_init_new_head_linear_probe_and_distillation(toy, tmp_path):
    teacher = tmp_path / "teacher"
    train(config(toy, teacher, epochs=8, lr=0.01))
    other_classes = f"idx:{write_idx(tmp_path / 'idx3', classes=3, seed=1)}"
    probe = tmp_path / "probe"
    summary = train(config(toy, probe, data=other_classes, init=str(teacher), linear_probe=True, epochs=1, model=None))
    before = read_weights(teacher / "model.safetensors")
    after = read_weights(probe / "model.safetensors")
    assert after["classifier.weight"].shape[0] == 3  # head re-initialised for 3 classes
    frozen = [k for k in after if not k.startswith("classifier.")]
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # backbone (and its BN stats) untouched
    assert summary["model"] == "tiny"

    student = tmp_path / "student"
    summary = train(config(toy, student, teacher=str(teacher), distill_alpha=0.7, epochs=1))
    assert math.isfinite(summary["test_top1"])
    with pytest.raises(EffscaleError, match="predicts 4 classes"):
        train(config(toy, tmp_path / "bad", data=other_classes, teacher=str(teacher)))


def test_eval_cli_json(toy, tmp_path, capsys):
    out = tmp_path / "run"
    train(config(toy, out, epochs=1))
    from effscale.cli import main

    assert main(["eval", str(out), "--data", toy["data"], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"top1", "top5", "samples", "per_class", "confusion"} <= set(result)
    assert result["samples"] == 64 and len(result["confusion"]) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert result["top1"] == pytest.approx(summary["test_top1"])
    assert main(["eval", str(tmp_path), "--data", toy["data"]]) == 2

    from PIL import Image

    image = tmp_path / "stripes.png"
    Image.fromarray((np.indices((28, 28))[0] // 3 % 2 * 200).astype(np.uint8)).save(image)
    assert main(["predict", str(image), "--weights", str(out / "model.safetensors"), "--top-k", "2", "--json"]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert {entry["label"] for entry in prediction[0]["top_k"]} <= {"0", "1", "2", "3"}  # the run's class names


@pytest.mark.slow
def test_ddp_two_processes_gloo(toy, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "-m", "effscale", "train", "--data", toy["data"], "--model", toy["spec"], "--batch-size", "32",
               "--epochs", "1", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["weights_identical_across_ranks"] is True
    assert summary["steps"] == 192 // 32


def test_accumulation_bf16_and_checkpointing_run(toy, tmp_path):
    summary = train(config(toy, tmp_path / "run", epochs=1, accumulation=2, precision="bf16",
                           grad_checkpointing=True))
    assert summary["steps"] == 192 // 32 and summary["recipe"]["precision"] == "bf16"
    assert math.isfinite(summary["test_top1"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
