"""Training: recipe pieces, exact resume after SIGKILL, divergence, transfer, distillation, DDP.

Runs use a tiny spec and a small generated IDX dataset so each takes seconds.
"""
import contextlib
import gzip
import json
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


# Runs `effscale train ARGS...` in a child that stops itself for good just before it would save the
# checkpoint of step STOP_AT: the checkpoint of the step before is on disk, the metrics line of step
# STOP_AT is written past it, and the marker file says so. The parent kills it then, at the same
# point on every machine however busy (polling the checkpoint file raced the child's progress).
HANG_BEFORE_CHECKPOINT = """
import runpy, sys, time
from pathlib import Path
from effscale.train import trainer

stop_at, marker, save = int(sys.argv[1]), Path(sys.argv[2]), trainer.save_checkpoint

def save_or_hang(state, out):
    if state["step"] >= stop_at:
        marker.write_text(str(state["step"]))
        while True:
            time.sleep(60)
    save(state, out)

trainer.save_checkpoint = save_or_hang
sys.argv = ["effscale", *sys.argv[3:]]
runpy.run_module("effscale", run_name="__main__", alter_sys=True)
"""


def _native_bf16() -> bool:
    """bf16 where the CPU computes it natively (AVX-512 BF16 or AMX); emulated bf16 is slow."""
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    return torch.backends.mkldnn.is_available() and ("avx512_bf16" in flags or "amx_bf16" in flags)


def _kill_at_step(args: list[str], stop_at: int, tmp_path: Path) -> int:
    """Run training until it is about to checkpoint step `stop_at`, SIGKILL it; the step on disk."""
    marker, log = tmp_path / "stopped", tmp_path / "killed.log"
    with open(log, "wb") as output:  # a file, not a pipe: a full pipe would stall the child
        process = subprocess.Popen([sys.executable, "-c", HANG_BEFORE_CHECKPOINT, str(stop_at), str(marker), *args],
                                   stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # waiting on the child's event, not timing it
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert marker.exists(), f"the run never reached step {stop_at}: {log.read_text(errors='replace')[-2000:]}"
    return torch.load(Path(args[args.index("--out") + 1]) / "checkpoint.pt", weights_only=True)["step"]


# The paper recipe adds EMA, RMSProp-TF and RandAugment to what must be restored exactly; its bf16
# only where the CPU has it natively (elsewhere fp32: emulated bf16 would make the test slow).
@pytest.mark.parametrize("recipe, epochs", [("quick", 4), ("paper", 3)])
def test_resume_after_sigkill_is_bit_identical(toy, tmp_path, recipe, epochs):
    precision = "bf16" if recipe == "paper" and _native_bf16() else "fp32"
    args = ["train", "--data", toy["data"], "--model", toy["spec"], "--batch-size", "32", "--epochs", str(epochs),
            "--seed", "5", "--checkpoint-every", "1", "--recipe", recipe, "--precision", precision,
            # a fixed thread count: the governor would drop a thread when another process is busy,
            # and a different count changes the reduction order, so bit-identity needs it pinned
            "--threads", "2"]
    reference = tmp_path / "reference"
    subprocess.run(_cli(*args, "--out", str(reference)), check=True, capture_output=True, timeout=300)

    interrupted = tmp_path / "interrupted"
    # killed in the middle of the second epoch (6 steps each), its last step not checkpointed
    step = _kill_at_step([*args, "--out", str(interrupted)], stop_at=10, tmp_path=tmp_path)
    assert step == 9
    assert not (interrupted / "summary.json").exists()
    subprocess.run(_cli(*args, "--out", str(interrupted), "--resume"), check=True, capture_output=True, timeout=300)

    ours, theirs = read_weights(interrupted / "model.safetensors"), read_weights(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    metrics = lambda run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    strip = lambda records: [{k: v for k, v in r.items() if k != "img_per_s"} for r in records]
    assert strip(metrics(interrupted)) == strip(metrics(reference))
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["recipe"]["name"] == recipe and summary["recipe"]["precision"] == precision
    if recipe == "paper":
        assert summary["recipe"]["ema_decay"] > 0 and summary["recipe"]["optimizer"] == "rmsprop_tf"
        assert summary["recipe"]["augment"] == "randaugment"


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


@contextlib.contextmanager
def _module_outputs(kind: str):
    """Records (training, grad enabled, output dtype) of every `kind` module call that returns,
    whichever model the trainer builds (a global forward hook)."""
    calls = []

    def hook(module, args, output):
        if type(module).__name__ == kind:
            calls.append((module.training, torch.is_grad_enabled(), output.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def _module_calls(kind: str):
    """Records (training, grad enabled) of every `kind` module call that starts (a global pre-hook):
    a checkpoint's re-run in backward stops as soon as it has recomputed what backward needs, so its
    last module call may never return."""
    calls = []

    def hook(module, args):
        if type(module).__name__ == kind:
            calls.append((module.training, torch.is_grad_enabled()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _same_weights(a: dict, b: dict, atol: float) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=atol) for k in a)


def _one_step(toy, out, **changes) -> dict:
    train(config(toy, out, max_steps=1, epochs=1, lr=0.01, **changes))
    return read_weights(out / "model.safetensors")


def test_bf16_training_computes_in_bf16(toy, tmp_path):
    with _module_outputs("Conv2d") as bf16:
        summary = train(config(toy, tmp_path / "bf16", max_steps=1, precision="bf16"))
    with _module_outputs("Conv2d") as fp32:
        train(config(toy, tmp_path / "fp32", max_steps=1, precision="fp32"))
    assert summary["recipe"]["precision"] == "bf16"
    training = lambda calls: {dtype for is_training, grad, dtype in calls if is_training and grad}
    assert training(bf16) == {torch.bfloat16} and training(fp32) == {torch.float32}


def test_gradient_accumulation_equals_one_step_on_the_whole_batch(toy, tmp_path, monkeypatch):
    """k micro-batches of n/k, gradients summed, one optimizer step = one step on all n images.
    That holds only where each sample's loss does not depend on the others in its batch or on the
    random numbers drawn for it: train-mode batch norm normalises by the micro-batch's statistics,
    and augmentation / dropout draw per call. So the backbone is frozen in eval mode (a linear
    probe: BN uses its running statistics, dropout and drop-path are off), augmentation is off,
    and the step trains the classifier from the same initial weights. SGD, not the recipe's AdamW:
    Adam's first step is the same for any scale of the gradient, so a wrongly scaled sum would pass."""
    from effscale.train import trainer as trainer_module
    from effscale.weights import save_weights

    real_recipe = trainer_module.get_recipe
    monkeypatch.setattr(trainer_module, "get_recipe",
                        lambda *a, **k: real_recipe(*a, **k).replace(augment="none", optimizer="sgd"))
    torch.manual_seed(0)
    start = tmp_path / "start.safetensors"
    save_weights(effscale.create_model(NetworkSpec.from_text(TINY_SPEC), num_classes=4, in_chans=1), start)
    probe = dict(init=str(start), linear_probe=True, model=None)
    whole = _one_step(toy, tmp_path / "whole", batch_size=32, **probe)
    accumulated = _one_step(toy, tmp_path / "accumulated", batch_size=32, accumulation=4, **probe)
    other = _one_step(toy, tmp_path / "other", batch_size=32, accumulation=4, seed=4, **probe)  # other images
    initial = read_weights(start)
    assert not torch.equal(whole["classifier.weight"], initial["classifier.weight"])  # the step did something
    assert _same_weights(accumulated, whole, atol=1e-5)
    assert not _same_weights(other, whole, atol=1e-4)  # the comparison tells another batch's step apart


def test_gradient_checkpointing_recomputes_and_gives_the_same_step(toy, tmp_path):
    with _module_calls("MBConv") as plain_calls:
        plain = _one_step(toy, tmp_path / "plain")
    with _module_calls("MBConv") as checkpointed_calls:
        checkpointed = _one_step(toy, tmp_path / "checkpointed", grad_checkpointing=True)
    block_forwards = lambda calls: sum(1 for is_training, grad in calls if is_training and grad)
    # every block runs again in backward; the random numbers (drop-path, dropout) are replayed and the
    # BN running statistics updated once, so the step (weights and BN buffers) is the same
    assert block_forwards(plain_calls) > 0 and block_forwards(checkpointed_calls) == 2 * block_forwards(plain_calls)
    assert _same_weights(checkpointed, plain, atol=1e-6)


def test_distillation_moves_the_student_toward_the_teacher(toy, tmp_path):
    """A teacher that always says "class 0" (whatever the image): distilled, the student follows it;
    trained on the labels alone (the same seed, data and steps), it does not."""
    from effscale.data import BatchTransform, load_data
    from effscale.weights import model_from_file, save_weights

    teacher = effscale.create_model(NetworkSpec.from_text(TINY_SPEC), num_classes=4, in_chans=1)
    with torch.no_grad():
        teacher.classifier.weight.zero_()
        teacher.classifier.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))
    save_weights(teacher, tmp_path / "teacher.safetensors")
    temperature = 1.0
    target = torch.softmax(teacher.classifier.bias.detach() / temperature, 0)

    def kl_to_teacher(run: Path) -> float:
        student = model_from_file(run / "model.safetensors").eval()
        test = load_data(toy["data"]).test
        spec = student.spec
        with torch.no_grad():
            logits = student(BatchTransform(spec.resolution, spec.mean, spec.std, train=False, in_chans=1)(test.images))
        log_student = torch.log_softmax(logits / temperature, 1)
        return float((target * (target.log() - log_student)).sum(1).mean())  # KL(teacher || student)

    common = dict(teacher=str(tmp_path / "teacher.safetensors"), distill_temperature=temperature, epochs=2, lr=0.05)
    train(config(toy, tmp_path / "distilled", distill_alpha=1.0, **common))
    train(config(toy, tmp_path / "labels", distill_alpha=0.0, **common))
    distilled, labels_only = kl_to_teacher(tmp_path / "distilled"), kl_to_teacher(tmp_path / "labels")
    assert distilled < 0.25 * labels_only, (distilled, labels_only)  # seen: 0.007 against 0.61
