"""The training loop: recipe, checkpoints, exact resume, DDP, transfer and distillation.

Determinism: the data order of an epoch is a function of (seed, epoch) and the global RNG
(augmentation, dropout, drop-path) is reseeded from (seed, step, rank) before every optimizer
step. A run resumed from a checkpoint therefore continues with exactly the random numbers
the uninterrupted run would have used, and on CPU ends bit-identical to it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..cost import cost
from ..data import BatchTransform, batches_per_epoch, iterate_batches, load_data
from ..errors import EffscaleError, is_out_of_memory
from ..zoo import resolve_image_spec
from ..nn.network import EfficientNet
from ..progress import ProgressBar
from ..scaling import compound
from ..spec import NetworkSpec, check_trainable_macs
from .checkpoint import check_output_dir, estimate_run_bytes, load_checkpoint, save_checkpoint
from .ema import ModelEMA
from .init_weights import load_init, read_init
from .evaluate import evaluate
from .optim import lr_factor, make_optimizer
from .recipe import Recipe, get_recipe, quick_spec, resolve_precision
from . import threads as train_threads
from .threads import ThreadGovernor

CHECKPOINT_FORMAT = "effscale-train-1"


class TrainingDiverged(EffscaleError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    data: str
    out: str
    recipe: str = "quick"
    model: str | None = None  # a model name or spec file; None = the recipe's default model
    phi: float | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    ema_decay: float | None = None  # None: the recipe's (quick: none; paper: 0.9999); 0 turns EMA off
    seed: int = 0
    precision: str | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    init: str | None = None
    teacher: str | None = None
    linear_probe: bool = False
    accumulation: int = 1
    grad_checkpointing: bool = False
    distill_alpha: float = 0.5  # weight of the KL term; (1 - alpha) goes to cross-entropy
    distill_temperature: float = 4.0
    threads: int | None = None  # None: follow the cores other processes leave free (train/threads.py)
    qat: bool = False  # fine-tune --init with INT8 simulated, then ship INT8 (qat.py)
    task: str = "classification"  # or detection / segmentation (train/dense_task.py)
    box_loss: str = "huber"  # detection: huber on the anchor offsets, or giou on the boxes
    mask_loss: str = "ce"  # segmentation: per-pixel cross-entropy, or ce+dice
    loss_weights: tuple = (1.0, 1.0)  # multitask: (masks, image classes)
    scale_jitter: tuple | None = None  # dense tasks: random zoom per image, scale in (lo, hi)
    progress: bool = True
    command: str = ""

    def validate(self) -> None:
        for name in ("epochs", "max_steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise EffscaleError(f"{name}={value!r} must be an integer >= 1")
        if not isinstance(self.accumulation, int) or self.accumulation < 1:
            raise EffscaleError(f"accumulation={self.accumulation!r} must be an integer >= 1")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise EffscaleError(f"lr={self.lr!r} must be a finite number > 0")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise EffscaleError(f"ema decay {self.ema_decay!r} must be a number in [0, 1) (0: no EMA)")
        if not (isinstance(self.distill_alpha, (int, float)) and 0 <= self.distill_alpha <= 1):
            raise EffscaleError(f"distill_alpha={self.distill_alpha!r} must be a number in [0, 1]")
        if not (isinstance(self.distill_temperature, (int, float)) and math.isfinite(self.distill_temperature)
                and self.distill_temperature > 0):
            raise EffscaleError(f"distill_temperature={self.distill_temperature!r} must be a finite number > 0")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise EffscaleError(f"threads={self.threads!r} must be an integer >= 1, or None (auto)")
        if self.resume and self.init:
            raise EffscaleError("--resume continues a run from its own checkpoint; drop --init")
        if self.qat and not self.init and not self.resume:
            raise EffscaleError("--qat fine-tunes a trained model with INT8 rounding simulated: give the run or "
                                "weights to fine-tune with --init")
        if self.task == "classification" and self.scale_jitter is not None:
            raise EffscaleError("--scale-jitter is for detection / segmentation (boxes and masks follow the zoom); "
                                "classification has its own augmentation (the recipe's random-resized crop)")
        if self.task != "classification":
            from .dense_task import validate_dense_config

            validate_dense_config(self)
        if self.qat and self.precision in ("bf16", "fp16"):
            raise EffscaleError(f"--qat simulates INT8 rounding in fp32; --precision {self.precision} cannot be "
                                "combined with it (drop it, or use fp32)")


# -- distributed ---------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU, nccl on GPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size == 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(rank=dist.get_rank(), world_size=world_size, device=device)


def _all_true(flag: bool, dist_info: Dist) -> bool:
    if dist_info.world_size == 1:
        return flag
    import torch.distributed as dist

    tensor = torch.tensor([0 if flag else 1], device=dist_info.device)
    dist.all_reduce(tensor)
    return tensor.item() == 0


# -- model set-up --------------------------------------------------------------------------------
def _resolve_student_spec(config: TrainConfig, init_spec: NetworkSpec | None) -> NetworkSpec:
    if config.model is not None:
        spec = resolve_image_spec(config.model)
    elif init_spec is not None:
        spec = init_spec
    elif config.recipe == "quick":
        spec = quick_spec()
    else:
        spec = resolve_image_spec("efficientnet_b0")
    if config.phi is not None:
        spec = compound(spec, config.phi)
    return spec


def _freeze_backbone(model: EfficientNet) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("classifier."))


def _backbone_eval(model: EfficientNet) -> None:
    """Linear probe: BN statistics of the frozen backbone must not move either."""
    for name, module in model.named_children():
        if name != "classifier":
            module.eval()


# -- loss ----------------------------------------------------------------------------------------
def distillation_loss(student_logits, teacher_logits, labels, *, alpha: float, temperature: float,
                      label_smoothing: float) -> torch.Tensor:
    """(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T) (Hinton et al.)."""
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    soft = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.log_softmax(teacher_logits / temperature, 1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    return (1 - alpha) * hard + alpha * soft


# -- the run -------------------------------------------------------------------------------------
def _fingerprint(config: TrainConfig, recipe: Recipe, spec: NetworkSpec, world_size: int) -> dict:
    """What must be the same for --resume to continue the same run."""
    spec_text = spec.to_text() if isinstance(spec, NetworkSpec) else json.dumps(_dense_dict(spec), sort_keys=True)
    return {"data": config.data, "seed": config.seed, "recipe": asdict(recipe), "spec": spec_text,
            "world_size": world_size, "accumulation": config.accumulation, "max_steps": config.max_steps,
            "init": config.init, "teacher": config.teacher, "linear_probe": config.linear_probe,
            **({"task": config.task, "box_loss": config.box_loss, "mask_loss": config.mask_loss,
                "loss_weights": list(config.loss_weights)}
               | ({"scale_jitter": list(config.scale_jitter)} if config.scale_jitter else {})
               if config.task != "classification" else {})}


def _dense_dict(spec) -> dict:
    from ..dense.spec import dense_spec_to_dict

    return dense_spec_to_dict(spec)


class _Metrics:
    """metrics.jsonl writer that can be truncated back to a checkpoint on resume."""

    def __init__(self, path: Path, enabled: bool, truncate_to: int | None):
        self.path, self.enabled = path, enabled
        if enabled:
            if truncate_to is None:
                path.write_text("")
            else:
                with open(path, "a+b") as handle:
                    handle.truncate(truncate_to)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def offset(self) -> int:
        return self.path.stat().st_size if self.enabled and self.path.exists() else 0


def train(config: TrainConfig) -> dict:
    """Run training as `config` says; returns the summary written to out/summary.json.

    Running out of memory is an EffscaleError that suggests a smaller batch; on Ctrl-C
    (KeyboardInterrupt) the last checkpoint in `out` stays as it was, and `resume=True` continues."""
    threads_before = torch.get_num_threads()
    try:
        return _train(config)
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise EffscaleError(f"training ran out of memory ({first}); the last checkpoint in {config.out} is kept. "
                            "Start again with a smaller --batch-size, or keep the batch with --accumulation 2 "
                            "or --grad-checkpointing") from None
    finally:
        torch.set_num_threads(threads_before)  # the governor or `threads` changed them for this run only


class ClassificationTask:
    """What the loop needs to know of its task: the spec and data, the model, the batch transform,
    the loss of a micro-batch, the metric, and what a run reports and saves. Training code outside
    the task classes is task-free; detection and segmentation (dense_task.py) have the same members."""

    name = "classification"

    def spec_and_data(self, run: "_Run"):
        """The spec (a name, --init's, --phi) checked for size, and the data; from scratch, the
        preprocessing is the data's own statistics (it travels with the weights)."""
        config = run.config
        init_spec, run.init_source = read_init(config.init) if config.init else (None, None)
        spec = _resolve_student_spec(config, init_spec)
        check_trainable_macs(cost(spec, num_classes=0).macs, f"{spec.name} has", "per image",
                             "choose a smaller model or --phi")
        splits = self.load(config, spec)
        if run.init_source is None:
            mean, std = splits.train.preprocessing_stats()
            spec = spec.replace(mean=mean, std=std)
        return spec, splits

    def network(self, spec):
        """The image spec the recipe's regularisation is read from."""
        return spec

    def with_recipe(self, spec, recipe: Recipe):
        return spec.replace(dropout=recipe.dropout, drop_path_rate=recipe.drop_path_rate,
                            bn_momentum=recipe.bn_momentum or spec.bn_momentum)

    def build(self, run: "_Run") -> nn.Module:
        """The model (seeded), --init weights, probe freezing, QAT, the teacher."""
        config = run.config
        num_classes, in_chans = run.splits.train.num_classes, run.splits.train.in_chans
        model = EfficientNet(run.spec, num_classes=num_classes, in_chans=in_chans)
        if run.dist.main:
            check_output_dir(run.out, estimate_run_bytes(model))
        if run.init_source is not None:
            load_init(model, run.init_source, config.init)
        if config.linear_probe:
            _freeze_backbone(model)
        if config.qat:  # before the EMA copy and the optimizer: both see the simulated model
            _prepare_qat(run, model)
        if config.grad_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise EffscaleError("this build of effscale has no activation checkpointing")
            model.set_grad_checkpointing(True)
        run.teacher = _load_teacher(config.teacher, num_classes, in_chans) if config.teacher else None
        return model

    def transform(self, run: "_Run"):
        spec = run.spec
        return BatchTransform(spec.resolution, spec.mean, spec.std, train=True, augment=run.recipe.augment,
                              in_chans=run.splits.train.in_chans, scale=run.recipe.crop_scale)

    def micro_loss(self, run: "_Run", batch) -> torch.Tensor:
        images, labels = batch
        inputs = run.transform(images).to(run.dist.device, memory_format=run.memory_format)
        labels = labels.to(run.dist.device)
        logits = run.ddp_model(inputs).float()
        teacher_logits = None
        if run.teacher is not None:
            with torch.no_grad():
                teacher_logits = run.teacher(_resize_for(run.teacher, inputs)).float()
        return self.loss(logits, labels, teacher_logits, run.config, run.recipe)

    def metric_record(self, result: dict) -> dict:
        return {"test_top1": result["top1"], "test_top5": result["top5"]}

    def summary(self, run: "_Run", result: dict) -> dict:
        counted = cost(run.spec, num_classes=run.splits.train.num_classes, in_chans=run.splits.train.in_chans)
        return {"test_top1": result["top1"], "test_top5": result["top5"], "test_samples": result["samples"],
                "params": counted.params, "macs": counted.macs}

    def save(self, run: "_Run", model: nn.Module, result: dict) -> None:
        from ..weights import save_weights

        save_weights(model, run.out / "model.safetensors",
                     extra_metadata={"classes": list(run.splits.train.classes), "data": run.config.data,
                                     "test_top1": result["top1"]})

    def load(self, config: TrainConfig, spec: NetworkSpec):
        # Image folders are decoded once at the size the eval transform crops from; IDX data stays native.
        storage = round(spec.resolution / spec.crop_pct) if config.data.startswith("folder:") else None
        return load_data(config.data, seed=config.seed, image_size=storage)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
             config: TrainConfig, recipe: Recipe) -> torch.Tensor:
        if teacher_logits is not None:
            return distillation_loss(logits, teacher_logits, labels, alpha=config.distill_alpha,
                                     temperature=config.distill_temperature, label_smoothing=recipe.label_smoothing)
        return F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)

    def evaluate(self, model: nn.Module, split, recipe: Recipe, channels_last: bool = True) -> dict:
        """The metric on the held-out split: top1 / top5 (percent) and samples."""
        return evaluate(model, split, precision=recipe.precision, channels_last=channels_last)

    def describe(self, result: dict) -> str:
        return f"test top-1 {result['top1']:.2f} %, top-5 {result['top5']:.2f} %"


@dataclass
class _Run:
    """Everything one training run holds, set up by `_setup`, advanced by `_epoch`."""

    config: TrainConfig
    task: ClassificationTask  # or a dense task (dense_task.py) with the same members
    dist: Dist
    out: Path
    started: float
    init_source: object = None  # --init's weights, read once
    spec: NetworkSpec = None
    splits: object = None
    recipe: Recipe = None
    precision_reason: str = ""
    per_rank: int = 0
    model: nn.Module = None
    ddp_model: nn.Module = None
    teacher: nn.Module | None = None
    ema: ModelEMA | None = None
    optimizer: torch.optim.Optimizer = None
    scaler: object = None
    memory_format: torch.memory_format = torch.contiguous_format
    transform: BatchTransform = None
    steps_per_epoch: int = 0
    total_steps: int = 0
    fingerprint: dict = field(default_factory=dict)
    step: int = 0
    wall_before: float = 0.0
    metrics: _Metrics = None
    last_eval: dict | None = None

    @property
    def amp_dtype(self):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.recipe.precision)


def _train(config: TrainConfig) -> dict:
    config.validate()
    run = _Run(config=config, task=_task(config), dist=init_distributed(), out=Path(config.out),
               started=time.time())
    _setup_spec_and_data(run)
    _setup_model(run)
    _setup_schedule(run)
    metrics_offset = _resume(run) if config.resume else None
    _setup_loop(run, metrics_offset)
    governor = _thread_governor(config, run.dist)
    with ProgressBar(config.progress and run.dist.main and sys.stderr.isatty(), label="[bold]train", info=True,
                     eta=True) as progress:
        bar = progress.task("train", total=run.total_steps, completed=run.step)
        while run.step < run.total_steps:
            _epoch(run, progress, bar, governor)
    return _finish(run)


def _task(config: TrainConfig):
    if config.task == "classification":
        return ClassificationTask()
    from .dense_task import dense_task

    return dense_task(config)


# -- set-up ----------------------------------------------------------------------------------------
def _setup_spec_and_data(run: _Run) -> None:
    """The spec and data (the task's), the recipe and precision, the batch split."""
    config, dist_info = run.config, run.dist
    spec, run.splits = run.task.spec_and_data(run)
    recipe = get_recipe(config.recipe, run.task.network(spec), config.batch_size)
    recipe = recipe.replace(epochs=config.epochs, lr=config.lr, precision=config.precision,
                            ema_decay=config.ema_decay)
    if config.qat:  # a fine-tune of a trained model, in fp32 (the rounding simulation is fp32)
        recipe = recipe.replace(precision="fp32", lr=None if config.lr else recipe.lr * QAT_LR_FACTOR)
    precision, run.precision_reason = resolve_precision(recipe.precision, dist_info.device.type)
    if recipe.precision == "auto":
        recipe = recipe.replace(precision=precision)
        if dist_info.main:
            print(f"precision: {precision} ({run.precision_reason})", file=sys.stderr, flush=True)
    if recipe.precision == "fp16" and dist_info.device.type == "cpu":
        raise EffscaleError("precision fp16 needs a GPU; on CPU use bf16 or fp32")
    run.per_rank = recipe.batch_size // (dist_info.world_size * config.accumulation)
    if run.per_rank * dist_info.world_size * config.accumulation != recipe.batch_size:
        raise EffscaleError(f"batch size {recipe.batch_size} must be divisible by world size "
                            f"{dist_info.world_size} x accumulation {config.accumulation}")
    run.spec = run.task.with_recipe(spec, recipe)
    run.recipe = recipe


def _setup_model(run: _Run) -> None:
    """The task's model (seeded: the initial weights are a function of the seed too), EMA, optimizer."""
    config, recipe = run.config, run.recipe
    _seed_everything(config.seed)
    model = run.task.build(run)
    model.to(run.dist.device)
    run.memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model.to(memory_format=run.memory_format)
    run.ema = ModelEMA(model, recipe.ema_decay) if recipe.ema_decay else None
    run.optimizer = make_optimizer(model, recipe)
    run.model = run.ddp_model = model


def _setup_schedule(run: _Run) -> None:
    config, recipe, dist_info = run.config, run.recipe, run.dist
    run.steps_per_epoch = batches_per_epoch(run.splits.train, run.per_rank, drop_last=True,
                                            world_size=dist_info.world_size) // config.accumulation
    if run.steps_per_epoch < 1:
        raise EffscaleError(f"batch size {recipe.batch_size} is larger than the training split "
                            f"({len(run.splits.train)} images)")
    run.total_steps = run.steps_per_epoch * recipe.epochs
    if config.max_steps is not None:
        run.total_steps = min(run.total_steps, config.max_steps)
    run.fingerprint = _fingerprint(config, recipe, run.spec, dist_info.world_size)


def _resume(run: _Run) -> int:
    """Load out/checkpoint.pt into the run (same options only); returns the metrics file offset."""
    state = load_checkpoint(run.out)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise EffscaleError(f"--resume: {run.out / 'checkpoint.pt'} is not an effscale training checkpoint")
    differ = [key for key in run.fingerprint if state["fingerprint"].get(key) != run.fingerprint[key]]
    if differ:
        raise EffscaleError(f"--resume: the checkpoint in {run.out} is from a run with different "
                            f"{', '.join(differ)}; resume with the same options or use another --out")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    _match_state_layout(run.optimizer)
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.step, run.wall_before = state["step"], state["wall_s"]
    return state["metrics_offset"]


def _setup_loop(run: _Run, metrics_offset: int | None) -> None:
    """DDP wrapping, the metrics file (truncated back to a resumed checkpoint), the train transform
    and the loss scaler."""
    if run.dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        run.ddp_model = DistributedDataParallel(
            run.model, device_ids=[run.dist.device] if run.dist.device.type == "cuda" else None)
    run.metrics = _Metrics(run.out / "metrics.jsonl", run.dist.main, metrics_offset)
    run.transform = run.task.transform(run)
    run.scaler = torch.amp.GradScaler("cuda") if run.recipe.precision == "fp16" else None


def _thread_governor(config: TrainConfig, dist_info: Dist) -> ThreadGovernor | None:
    """`threads` fixes the count; by default a CPU run follows the cores other processes leave."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
        return None
    if dist_info.device.type == "cpu":
        return ThreadGovernor(max_threads=torch.get_num_threads(), interval_s=train_threads.DEFAULT_INTERVAL_S)
    return None


# -- the loop --------------------------------------------------------------------------------------
def _checkpoint(run: _Run) -> None:
    # A loss can stay finite while weights or BN statistics overflow; never save those.
    if not all(torch.isfinite(v).all() for v in run.model.state_dict().values() if v.is_floating_point()):
        raise TrainingDiverged(
            f"the weights became non-finite at step {run.step}; training stopped. The last good checkpoint "
            f"is {run.out / 'checkpoint.pt'}: lower --lr, or check the data")
    if not run.dist.main:
        return
    save_checkpoint({"format": CHECKPOINT_FORMAT, "step": run.step,
                     "wall_s": run.wall_before + time.time() - run.started,
                     "metrics_offset": run.metrics.offset(), "fingerprint": run.fingerprint,
                     "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                     "ema": run.ema.state_dict() if run.ema is not None else None}, run.out)


def _epoch(run: _Run, progress, bar, governor: ThreadGovernor | None) -> None:
    """The rest of the current epoch (from a resumed step too), then its evaluation and checkpoint."""
    config, dist_info = run.config, run.dist
    epoch, step_in_epoch = divmod(run.step, run.steps_per_epoch)
    batches = iterate_batches(run.splits.train, run.per_rank, seed=config.seed, epoch=epoch, shuffle=True,
                              drop_last=True, rank=dist_info.rank, world_size=dist_info.world_size,
                              start_batch=step_in_epoch * config.accumulation)
    run.model.train()
    if config.linear_probe:
        _backbone_eval(run.model)
    tick = time.time()
    while run.step < run.total_steps and run.step // run.steps_per_epoch == epoch:
        loss_sum, lr = _step(run, batches, epoch)
        now = time.time()
        throughput = run.recipe.batch_size / max(now - tick, 1e-9)
        tick = now
        run.metrics.write({"step": run.step, "epoch": epoch, "loss": loss_sum, "lr": lr, "img_per_s": throughput})
        bar.advance(info=f"loss {loss_sum:.3f} {throughput:.0f} img/s")
        if governor is not None and (threads := governor.poll()) is not None:
            run.metrics.write({"step": run.step, "threads": threads, "others_cores": round(governor.others_cores, 2)})
            if dist_info.main:
                progress.print(
                    f"effscale: other processes are using {governor.others_cores:.1f} cores: training on "
                    f"{threads} thread{'s' if threads > 1 else ''} (--threads N fixes the count)")
        if config.checkpoint_every and run.step % config.checkpoint_every == 0:
            _checkpoint(run)
    run.last_eval = run.task.evaluate(run.ema.module if run.ema is not None else run.model, run.splits.test,
                                      run.recipe, channels_last=run.recipe.channels_last)
    run.metrics.write({"epoch": epoch, "step": run.step, **run.task.metric_record(run.last_eval)})
    if dist_info.main:
        progress.print(f"epoch {epoch + 1}/{math.ceil(run.total_steps / run.steps_per_epoch)}: "
                               f"step {run.step}, {run.task.describe(run.last_eval)}")
    _checkpoint(run)


def _step(run: _Run, batches, epoch: int) -> tuple[float, float]:
    """One optimizer step over `accumulation` micro-batches; returns (loss, learning rate)."""
    config, dist_info, recipe = run.config, run.dist, run.recipe
    torch.manual_seed((config.seed * 1_000_003 + run.step) * 64 + dist_info.rank)
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for micro in range(config.accumulation):
        loss = _micro_step(run, next(batches), sync=micro == config.accumulation - 1 or dist_info.world_size == 1)
        if not _all_true(bool(torch.isfinite(loss)), dist_info):
            raise TrainingDiverged(
                f"the loss became {loss.item()} at step {run.step} (epoch {epoch}); training stopped. "
                f"The last good checkpoint is {run.out / 'checkpoint.pt'}: lower --lr, or check the data")
        (run.scaler.scale(loss) if run.scaler else loss).backward()
        loss_sum += loss.item()
    lr = recipe.lr * lr_factor(run.step, steps_per_epoch=run.steps_per_epoch, total_steps=run.total_steps,
                               recipe=recipe)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    if run.ema is not None:
        run.ema.update(run.model)
    run.step += 1
    return loss_sum, lr


def _micro_step(run: _Run, batch, sync: bool) -> torch.Tensor:
    """Forward and loss of one micro-batch (gradients synchronised across ranks only when `sync`)."""
    context = run.ddp_model.no_sync() if not sync else contextlib.nullcontext()
    amp_dtype = run.amp_dtype
    with context, torch.autocast(run.dist.device.type, dtype=amp_dtype or torch.float32,
                                 enabled=amp_dtype is not None):
        return run.task.micro_loss(run, batch) / run.config.accumulation


# -- the end ---------------------------------------------------------------------------------------
def _finish(run: _Run) -> dict:
    """Evaluate what is there if nothing was trained, write model.safetensors and summary.json."""
    config, spec, dist_info = run.config, run.spec, run.dist
    final = run.ema.module if run.ema is not None else run.model
    if run.last_eval is None:  # resumed a finished run: nothing trained, evaluate what is there
        run.last_eval = run.task.evaluate(final, run.splits.test, run.recipe)
    last_eval = run.last_eval
    qat = None
    if config.qat:  # the float weights QAT fine-tuned, without the simulation, are what ships
        from .qat import strip_qat

        qat = {"simulated_int8_top1": last_eval["top1"]}
        strip_qat(final)
        strip_qat(run.model)
        last_eval = run.task.evaluate(final, run.splits.test, run.recipe)
    checksums = _rank_checksums(run.model, dist_info)
    summary = {
        **run.task.summary(run, last_eval),
        "wall_s": round(run.wall_before + time.time() - run.started, 2), "world_size": dist_info.world_size,
        "steps": run.step, "epochs": run.recipe.epochs, "recipe": json.loads(json.dumps(asdict(run.recipe))),
        "model": spec.name, "task": run.task.name, "resolution": spec.resolution, "data": config.data,
        "seed": config.seed,
        "weights": str(run.out / "model.safetensors"), "weights_identical_across_ranks": len(set(checksums)) == 1,
        "command": config.command or " ".join(sys.argv), "precision": run.recipe.precision,
        "precision_reason": run.precision_reason,
    }
    if qat is not None:
        summary["qat"] = qat
    if dist_info.main:
        run.task.save(run, final.to("cpu", memory_format=torch.contiguous_format), last_eval)
        if qat is not None:
            qat.update(_ship_qat(run))
        (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if dist_info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    return summary


QAT_LR_FACTOR = 0.1  # --qat without --lr: a tenth of the recipe's rate (a fine-tune, not a new run)


def _prepare_qat(run: _Run, model: nn.Module) -> None:
    """INT8 simulation on `model` (qat.py), ranges from the training images quantize would use."""
    from .qat import prepare_qat

    from ..data import calibration_images
    from ..export.quantize import CALIBRATION_SAMPLES  # the images `effscale quantize` calibrates on

    prepare_qat(model, calibration_images(run.splits.train, run.spec, CALIBRATION_SAMPLES))


def _ship_qat(run: _Run) -> dict:
    """The fine-tuned weights quantized as simulated (`quantize`, calibrated on the run's data), into
    run_dir/int8; without the export extra, the command to do it later."""
    from ..export.compare import available_format

    format = available_format()
    command = f"effscale quantize {run.out} --format {format or 'openvino'} --out {run.out / 'int8'}"
    if format is None:
        return {"int8": None, "int8_command": command, "note": "the export extra is not installed"}
    from ..export.quantize import quantize

    from ..export.manifest import is_artifact, read_manifest

    int8 = run.out / "int8"  # a resumed, finished run has it already
    manifest = read_manifest(int8) if is_artifact(int8) else \
        quantize(run.out / "model.safetensors", int8, format=format, calib=run.config.data)
    return {"int8": manifest["quantization"]["accuracy"], "int8_dir": str(run.out / "int8"), "format": format,
            "int8_command": command}


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give restored optimizer state its parameter's memory layout (channels_last params had
    channels_last state); elementwise kernels take different vector paths for different strides,
    and the rounding then differs from the uninterrupted run."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _load_teacher(path: str, num_classes: int, in_chans: int) -> nn.Module:
    spec, teacher = read_init(path)
    if spec is None:
        raise EffscaleError(f"--teacher {path!r} must be an effscale weights file or run directory "
                            "(it must know its own model)")
    if teacher.num_classes != num_classes or teacher.in_chans != in_chans:
        raise EffscaleError(f"--teacher {path!r} predicts {teacher.num_classes} classes from {teacher.in_chans} "
                            f"channels; the data has {num_classes} classes and {in_chans} channels")
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def _resize_for(teacher: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    size = teacher.spec.resolution
    if inputs.shape[-1] == size:
        return inputs
    return F.interpolate(inputs, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _rank_checksums(model: nn.Module, dist_info: Dist) -> list[float]:
    """A checksum of every rank's weights, to confirm DDP kept the replicas identical."""
    local = torch.tensor([float(sum(p.detach().double().sum() for p in model.parameters()))])
    if dist_info.world_size == 1:
        return [local.item()]
    import torch.distributed as dist

    gathered = [torch.zeros(1, dtype=local.dtype) for _ in range(dist_info.world_size)]
    dist.all_gather(gathered, local)
    return [t.item() for t in gathered]
