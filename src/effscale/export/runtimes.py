"""Running an exported artifact: ONNX Runtime, OpenVINO, or the torch model kept beside them.

Each runner takes a float32 NCHW numpy batch (already preprocessed) and returns the outputs as a
list of numpy arrays (logits, or one feature map per level for a features_only model).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EffscaleError

RUNTIMES = ("onnxruntime", "openvino", "torch")
# The runtime an artifact runs with unless told otherwise.
DEFAULT_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}
# What each runtime can load besides torch (which loads model.safetensors from any artifact).
LOADS = {"onnxruntime": ("onnx",), "openvino": ("onnx", "openvino")}
EXTRA_HINT = 'pip install -c constraints.txt -e ".[export]"'


def require_module(name: str, purpose: str):
    """Import an optional dependency of the `export` extra, or a one-line error naming the install."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise EffscaleError(f"{purpose} needs {name}, which is not installed ({error}); install the export extra: "
                            f"{EXTRA_HINT}") from None


def check_runtime(runtime: str, runtime_format: str) -> str:
    if runtime not in RUNTIMES:
        raise EffscaleError(f"runtime {runtime!r} is unknown; allowed: {', '.join(RUNTIMES)}")
    if runtime != "torch" and runtime_format not in LOADS[runtime]:
        raise EffscaleError(f"runtime {runtime!r} cannot load a {runtime_format} artifact; use "
                            f"{DEFAULT_RUNTIME[runtime_format]} or torch")
    return runtime


def open_runner(directory: Path, manifest: dict, runtime: str, precision: str | None = None):
    """(run(batch) -> list of arrays, what ran: {"runtime", "version", "precision"}). `precision`
    (OpenVINO only: "fp32" or "bf16") is the float precision asked of the runtime; default: the
    artifact's recorded "inference_precision" (fp32 unless quantize chose bf16 for its float ops)."""
    directory = Path(directory)
    check_runtime(runtime, manifest["runtime_format"])
    if runtime == "torch":  # effscale's own reader, with its own errors
        return _torch(directory / "model.safetensors")
    path = directory / manifest["model_file"]
    try:
        if runtime == "onnxruntime":
            return onnxruntime_runner(path, [o["name"] for o in manifest["outputs"]])
        return openvino_runner(path, precision or manifest.get("inference_precision", "fp32"))
    except EffscaleError:
        raise
    except Exception as error:  # the runtimes' own exception types for a damaged or foreign file
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise EffscaleError(f"{runtime} cannot load {str(path)!r} ({first}); export it again") from None


def onnxruntime_runner(path: Path, output_names: list[str] | None = None, threads: int | None = None,
                       profile_prefix: str | None = None):
    """An ONNX file on ONNX Runtime's CPU provider: (run(batch) -> outputs, what ran); all outputs
    when `output_names` is None. `threads`: intra-op threads (default: ONNX Runtime's, every core).
    `profile_prefix`: write ONNX Runtime's per-node trace there (`run.session.end_profiling()`)."""
    ort = require_module("onnxruntime", "running an ONNX artifact")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    if threads:
        options.intra_op_num_threads = threads
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return list(session.run(output_names, {input_name: np.ascontiguousarray(batch, dtype=np.float32)}))

    run.session = session
    return run, {"runtime": "onnxruntime", "version": ort.__version__, "precision": "fp32"}


OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}


def openvino_runner(path: Path, precision: str = "fp32", streams: int | None = None, threads: int | None = None,
                    profiling: bool = False):
    """An OpenVINO IR (or ONNX) file on OpenVINO's CPU plugin with float ops in `precision`; a batch
    of at least `streams` images (default: the usable cores) is split over that many streams
    (openvino_runtime.OpenVINOModel, which also takes `threads` and `profiling`)."""
    if precision not in OPENVINO_HINTS:
        raise EffscaleError(f"precision {precision!r} is not one OpenVINO runs float ops in; allowed: "
                            f"{', '.join(OPENVINO_HINTS)}")
    ov = require_module("openvino", "running an OpenVINO artifact")
    from .openvino_runtime import OpenVINOModel, usable_cpus

    # OpenVINO runs CPUs with native bf16 in bf16 unless told otherwise: the precision is always given,
    # and the one that actually ran is read back, not assumed (without native bf16 a bf16 hint runs f32).
    model = OpenVINOModel(ov, path, OPENVINO_HINTS[precision], streams or usable_cpus(), threads, profiling)
    ran = _precision_name(model.precision())
    return model, {"runtime": "openvino", "version": ov.__version__, "precision": ran}


def _precision_name(value) -> str:
    """OpenVINO's element type (`<Type: 'float32'>`, 'f32', 'bf16', ...) as fp32 / bf16 / fp16 / its own name."""
    text = str(getattr(value, "get_type_name", lambda: value)()).lower()
    for names, ours in ((("f32", "float32"), "fp32"), (("bf16", "bfloat16"), "bf16"), (("f16", "float16"), "fp16")):
        if any(text == name or f"'{name}'" in text for name in names):
            return ours
    return text


def _torch(path: Path):
    import torch

    from ..dense.io import is_dense_file, load_dense_model
    from ..weights import model_from_file

    if is_dense_file(path):  # a detector / segmenter: its deployed outputs (dense/deploy.py)
        from ..dense.deploy import deployable

        model = deployable(load_dense_model(path))
    else:
        model = model_from_file(path).eval()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return [t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]

    return run, {"runtime": "torch", "version": torch.__version__, "precision": "fp32"}


__all__ = ["DEFAULT_RUNTIME", "RUNTIMES", "check_runtime", "onnxruntime_runner", "open_runner", "openvino_runner", "require_module"]
