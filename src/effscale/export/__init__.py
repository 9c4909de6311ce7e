"""Shipping a model: export to ONNX or OpenVINO IR as a self-describing, parity-checked artifact
directory, and load it back on onnxruntime, openvino or torch (`effscale export`,
`effscale predict --weights DIR`, `effscale eval DIR`). Needs the `export` extra."""
from .artifact import ExportedModel, export, load_exported
from .manifest import FORMATS, MANIFEST_NAME, is_artifact, read_manifest
from .parity import ParityError
from .runtimes import RUNTIMES

__all__ = ["FORMATS", "MANIFEST_NAME", "ExportedModel", "ParityError", "RUNTIMES", "export", "is_artifact",
           "load_exported", "read_manifest"]
