"""`export`: a trained (or named) model to a self-describing, parity-checked artifact directory;
`load_exported`: the artifact back as a callable model for predict / eval, on any runtime.

ONNX goes through `torch.onnx.export(dynamo=True)` (onnxscript) with a dynamic batch and the
weights inside the file (beside it past ONNX_INLINE_LIMIT). OpenVINO IR goes through `openvino.convert_model` on the model's
`torch.export` program: the same graph the ONNX exporter starts from, without a detour through
ONNX operators (one translation fewer to get wrong) and without `torch.jit.trace`, which
`convert_model` uses for a plain module. Every export is checked against the PyTorch model on a
fixed batch before anything is written to `out`: the artifact is built in a temporary directory
beside it and renamed into place only when its parity holds.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EffscaleError
from ..spec import NetworkSpec
from .manifest import FORMATS, is_artifact, read_manifest, write_manifest
from .parity import FP32_TOLERANCE, compare, example_batch, require_parity
from .runtimes import DEFAULT_RUNTIME, check_runtime, open_runner, require_module

MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
INPUT_NAME = "image"
ONNX_INLINE_LIMIT = 1_500_000_000  # bytes of weights kept inside model.onnx (protobuf's limit is 2 GB)


def export(source, out: str | os.PathLike, *, format: str = "onnx", model=None,
           tolerance: float = FP32_TOLERANCE) -> dict:
    """Export `source` to the artifact directory `out`; returns its manifest.

    `source`: an effscale .safetensors file, a training run directory (its model.safetensors), a
    built effscale model, a foreign checkpoint (timm / torchvision / lukemelas; `model` names its
    architecture), or a model reference alone (name, spec, spec file), exported with its random
    initial weights (the manifest says so). `format`: "onnx" or "openvino". `out` must not exist
    or be an empty directory. A parity failure raises ParityError and writes nothing.
    """
    if format not in FORMATS:
        raise EffscaleError(f"format {format!r} is unknown; allowed: {', '.join(FORMATS)}")
    out = _check_out(out)
    if format == "onnx":
        for name in ("onnx", "onnxscript", "onnxruntime"):
            require_module(name, "ONNX export")
    else:
        require_module("openvino", "OpenVINO export")
    network, described, classes = _load_source(source, model)
    network = network.eval()
    x = example_batch(network.in_chans, network.spec.resolution)
    with torch.inference_mode():
        reference = _as_list(network(torch.from_numpy(x)))
    float64 = _float64_reference(network, x)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        extra = _write_model(format, network, torch.from_numpy(x), partial / MODEL_FILES[format],
                             _output_names(network))
        _save_weights(network, partial / "model.safetensors", classes)
        manifest = _manifest(format, network, described, classes, extra)
        run, ran = open_runner(partial, {**manifest, "model_file": MODEL_FILES[format]}, DEFAULT_RUNTIME[format])
        parity = compare(reference, run(x), classifier=_is_classifier(network), tolerance=tolerance, float64=float64)
        manifest["parity"] = {**parity, "runtime": ran}
        require_parity(parity, f"the {format} export of {network.spec.name}")
        write_manifest(partial, manifest)
        _permissions_as_umask(partial)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return read_manifest(out)


class ExportedModel:
    """An artifact as a model: `model(batch)` (a float NCHW tensor, preprocessed as `spec` says)
    returns logits (or the feature maps of a features_only model) as torch tensors. It carries
    what predict and eval read of a model: spec, num_classes, in_chans, features_only, classes."""

    def __init__(self, directory: Path, manifest: dict, runtime: str):
        self.directory, self.manifest = Path(directory), manifest
        self.task = manifest.get("task", "classification")
        self.spec = _manifest_spec(manifest)
        self.num_classes, self.in_chans = int(manifest["num_classes"]), int(manifest["in_chans"])
        self.features_only = bool(manifest["features_only"])
        self.classes = manifest.get("classes")
        self._run, self.runtime = open_runner(self.directory, manifest, runtime)
        self.training = False

    def __call__(self, batch: torch.Tensor):
        outputs = self._run(batch.detach().to("cpu", torch.float32).contiguous().numpy())
        tensors = [torch.from_numpy(np.asarray(output)) for output in outputs]
        if self.task == "segmentation":  # as the PyTorch segmenter: the mask logits
            return tensors[0]
        if self.task != "classification":  # a detector's (scores, boxes); a multi-task model's (masks, image logits)
            return tuple(tensors)
        return tensors if self.features_only else tensors[0]

    def eval(self) -> "ExportedModel":
        return self

    def train(self, mode: bool = True) -> "ExportedModel":
        if mode:
            raise EffscaleError("an exported model cannot be trained; train the PyTorch model and export it again")
        return self

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.directory)!r}, {self.manifest['runtime_format']} on {self.runtime['runtime']})"


def load_exported(directory: str | os.PathLike, runtime: str | None = None) -> ExportedModel:
    """The artifact in `directory` on `runtime` (default: its own: onnxruntime for ONNX, openvino
    for OpenVINO IR; "torch" runs the weights kept beside it)."""
    manifest = read_manifest(directory)
    runtime = check_runtime(runtime or DEFAULT_RUNTIME[manifest["runtime_format"]], manifest["runtime_format"])
    return ExportedModel(Path(directory), manifest, runtime)


# -- pieces ------------------------------------------------------------------------------------------
def _check_out(out) -> Path:
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise EffscaleError(f"out={out!r} must be a directory path")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EffscaleError(f"{str(out)!r} already exists and is not an empty directory; choose a new --out "
                            "(an export never overwrites)")
    probe = out.parent  # the nearest existing folder above it must be a writable directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise EffscaleError(f"cannot write {str(out)!r}: {str(probe)!r} is not a writable directory")
    return out


def _load_source(source, model) -> tuple[nn.Module, str, list | None]:
    """(the model, how to describe its origin, its class names if known)."""
    from ..weights import TORCH_SUFFIXES, is_effscale_file, model_from_checkpoint, model_from_file, read_metadata

    if isinstance(source, nn.Module):
        if _is_dense(source):
            return _deployable(source), f"a built model ({source.spec.name})", getattr(source, "classes", None)
        if not isinstance(getattr(source, "spec", None), NetworkSpec):
            raise EffscaleError(f"expected an effscale model, got {type(source).__name__}")
        return source, f"a built model ({source.spec.name})", None
    if isinstance(source, NetworkSpec):  # a spec object: like a spec file, random initial weights
        return _random_model(source, model)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"export() takes a weights file, run directory, model or model name; "
                        f"got {type(source).__name__}")
    path = Path(source).expanduser()
    if path.is_dir():
        if is_artifact(path):
            raise EffscaleError(f"{str(source)!r} is already an exported artifact; export its run or weights file")
        path = path / "model.safetensors"
        if not path.is_file():
            raise EffscaleError(f"{str(source)!r} is a directory without model.safetensors (not a finished run)")
    from ..dense.io import is_dense_file, load_dense_model

    if path.is_file() and is_dense_file(path):
        if model is not None:
            raise EffscaleError(f"{str(source)!r} is an effscale detector / segmenter file: it knows its model; "
                                "leave --model out")
        dense = load_dense_model(path)
        return _deployable(dense), str(path), dense.classes
    if path.is_file() and is_effscale_file(path):
        if model is not None:
            raise EffscaleError(f"{str(source)!r} is an effscale weights file: it knows its model; leave --model out")
        classes = read_metadata(path)["extra"].get("classes")
        return model_from_file(path), str(path), list(classes) if isinstance(classes, list) else None
    is_checkpoint = path.is_file() and (model is not None or path.suffix in (*TORCH_SUFFIXES, ".safetensors"))
    if is_checkpoint:  # any other file is a spec text file, exported with random weights below
        if model is None:
            raise EffscaleError(f"{str(source)!r} is not an effscale weights file, so it does not say which model it "
                                "is for: name it (model= in Python, --model on the command line)")
        from ..model import create_model, is_dense_reference

        if is_dense_reference(model):  # an effdet tf_efficientdet checkpoint
            return _deployable(create_model(model, weights=path)), f"{path} ({model})", None
        return model_from_checkpoint(path, model), f"{path} ({model})", None
    if model is not None:
        raise EffscaleError(f"weights {str(source)!r} do not exist")
    from ..model import is_dense_reference

    if is_dense_reference(source):
        raise EffscaleError(f"{str(source)!r} names a detector / segmenter without weights or classes: export its "
                            "training run or weights file (or an effdet checkpoint with --model)")
    return _random_model(source, model)


def _is_dense(network) -> bool:
    from ..dense.spec import DetectorSpec, SegmenterSpec

    return isinstance(getattr(network, "spec", None), (DetectorSpec, SegmenterSpec))


def _deployable(model: nn.Module) -> nn.Module:
    from ..dense.deploy import deployable

    return deployable(model)


def _save_weights(network, path: Path, classes) -> None:
    """The weights beside the artifact (the torch runtime and re-checks read them)."""
    if _is_dense(network):
        from ..dense.io import save_dense_weights

        save_dense_weights(network.model, path, extra={"classes": classes} if classes else None)
        return
    from ..weights import save_weights

    save_weights(network, path, extra_metadata={"classes": classes} if classes else None)


def _manifest_spec(manifest: dict):
    if manifest.get("task", "classification") == "classification":
        return NetworkSpec.from_text(manifest["spec"])
    import json

    from ..dense.spec import dense_spec_from_dict

    return dense_spec_from_dict(json.loads(manifest["spec"]))


def _random_model(source, model) -> tuple[nn.Module, str, None]:
    from ..model import create_model

    if model is not None:
        raise EffscaleError("model= names the architecture of a checkpoint; a spec needs none")
    name = source.name if isinstance(source, NetworkSpec) else source
    warnings.warn(f"{name!r} is a model, not weights: exporting its random initial weights", UserWarning,
                  stacklevel=4)
    built = create_model(source)
    return built, f"{built.spec.name} (random initial weights, no checkpoint)", None


def _permissions_as_umask(directory: Path) -> None:
    """mkdtemp makes a 0700 directory (and safetensors 0600 files): give the artifact the modes any
    file the user creates would have, so that it can be copied and served like one."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _float64_reference(network: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """The same model and batch in fp64: how far PyTorch's own fp32 result is from exact."""
    import copy

    double = copy.deepcopy(network).double()
    with torch.inference_mode():
        outputs = _as_list(double(torch.from_numpy(x).double()))
    del double
    return outputs


def _output_names(network) -> list[str]:
    if _is_dense(network):
        from ..dense.deploy import output_names

        return output_names(network.spec)
    if network.features_only:
        return [f"features_{info['reduction']}" for info in network.feature_info]
    return ["logits" if _is_classifier(network) else "features"]


def _is_classifier(network) -> bool:
    return not _is_dense(network) and not network.features_only and network.num_classes > 0


def _as_list(output) -> list[np.ndarray]:
    return [t.detach().numpy() for t in (output if isinstance(output, (list, tuple)) else [output])]


def _write_model(format: str, network: nn.Module, x: torch.Tensor, path: Path, outputs: list[str]) -> dict:
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecation chatter, not the user's concern
        if format == "onnx":
            import onnx

            # One self-contained file, except past protobuf's 2 GB limit (EfficientNet-L2): then the
            # weights go to model.onnx.data beside it, which onnxruntime finds on its own.
            external = sum(p.numel() * p.element_size() for p in network.parameters()) > ONNX_INLINE_LIMIT
            torch.onnx.export(network, (x,), str(path), dynamo=True, external_data=external,
                              input_names=[INPUT_NAME], output_names=outputs, dynamic_shapes=({0: batch},),
                              verbose=False)
            opset = next(entry.version for entry in onnx.load(str(path), load_external_data=False).opset_import
                         if entry.domain in ("", "ai.onnx"))
            return {"opset": int(opset)}
        import openvino as ov

        program = torch.export.export(network, (x,), dynamic_shapes=({0: batch},))
        converted = ov.convert_model(program)
        converted.inputs[0].get_tensor().set_names({INPUT_NAME})
        for port, name in zip(converted.outputs, outputs):
            port.get_tensor().set_names({name})
        ov.save_model(converted, str(path), compress_to_fp16=False)
        return {}


def _manifest(format: str, network, described: str, classes, extra: dict) -> dict:
    import effscale

    spec = network.spec
    if _is_dense(network):
        return _dense_manifest(format, network, described, classes, extra)
    outputs = [{"name": name, "dtype": "float32"} for name in _output_names(network)]
    return {
        "runtime_format": format, "model_file": MODEL_FILES[format], "spec": spec.to_text(),
        "num_classes": int(network.num_classes), "in_chans": int(network.in_chans),
        "features_only": bool(network.features_only), "classes": classes,
        "preprocessing": {"resolution": spec.resolution, "crop_pct": spec.crop_pct, "mean": list(spec.mean),
                          "std": list(spec.std), "layout": "NCHW", "scale": "pixels / 255, then (x - mean) / std",
                          "resize": "shorter side to floor(resolution / crop_pct), bicubic, then center crop"},
        "inputs": [{"name": INPUT_NAME, "shape": [None, int(network.in_chans), spec.resolution, spec.resolution],
                    "dtype": "float32"}],
        "outputs": outputs, "precision": "fp32", **extra, "source": described,
        "effscale": effscale.__version__, "torch": torch.__version__,
    }


def _dense_manifest(format: str, network, described: str, classes, extra: dict) -> dict:
    """A detector's / segmenter's manifest: its dense spec as JSON, the task, letterbox preprocessing."""
    import json

    import effscale
    from ..dense.deploy import dense_task_of, output_names
    from ..dense.spec import dense_spec_to_dict

    spec, size = network.spec, network.spec.resolution
    described_outputs = {
        "scores": "B x anchors x classes, sigmoid probabilities", "boxes": "B x anchors x 4, x1 y1 x2 y2 in input "
        "pixels", "masks": "B x (1 + classes) x H x W logits, class 0 background", "image_logits": "B x classes"}
    return {
        "runtime_format": format, "model_file": MODEL_FILES[format], "task": dense_task_of(spec),
        "spec": json.dumps(dense_spec_to_dict(spec)), "num_classes": int(network.num_classes),
        "in_chans": int(network.in_chans), "features_only": False, "classes": classes,
        "preprocessing": {"resolution": size, "mean": list(spec.backbone.mean), "std": list(spec.backbone.std),
                          "layout": "NCHW", "scale": "pixels / 255, then (x - mean) / std",
                          "resize": "letterbox: longer side to resolution (aspect kept, bilinear), padded with "
                                    "black pixels at the right and bottom before scaling; boxes / masks are in "
                                    "those input pixels"},
        "inputs": [{"name": INPUT_NAME, "shape": [None, int(network.in_chans), size, size], "dtype": "float32"}],
        "outputs": [{"name": name, "dtype": "float32", "meaning": described_outputs[name]}
                    for name in output_names(spec)],
        "postprocess": "effscale.dense.boxes.select_detections(scores, boxes): top-k, threshold, per-class NMS"
        if dense_task_of(spec) == "detection" else None,
        "precision": "fp32", **extra, "source": described, "effscale": effscale.__version__, "torch": torch.__version__,
    }


__all__ = ["ExportedModel", "export", "load_exported"]
