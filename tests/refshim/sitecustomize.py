"""Test-only: lets torchvision (and timm, which imports it) import under a CPU-only torch.

The Linux torchvision wheels on PyPI are CUDA builds. Under the CPU-only torch that effscale
pins, their C extension fails to load and `import torchvision` stops at
"operator torchvision::nms does not exist": the Python half registers fake and autograd
kernels for operators that only the extension would have declared. Putting this folder on
PYTHONPATH makes Python run this file at start-up; it declares those operator schemas just
before torchvision is first imported, so the pure-Python models and transforms load. The
detection kernels themselves (nms, roi_align, ...) stay unavailable; effscale never calls them.

Only the reference comparisons need it (parity tests against timm / torchvision, and the
benchmarks): `make test` and `make bench` set PYTHONPATH=tests/refshim. It costs nothing when
torchvision is never imported (torch is not even imported here until then) and does nothing
under a CUDA build of torch, whose torchvision extension declares the operators itself.
"""
import importlib.abc
import sys

# The operators torchvision's Python code registers kernels for, with the extension's schemas.
_ROI = "Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width"
_GRAD_SIZES = "SymInt batch_size, SymInt channels, SymInt height, SymInt width"
_DEFORM = ("SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
           "SymInt groups, SymInt offset_groups, bool use_mask")
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    f"roi_align({_ROI}, int sampling_ratio, bool aligned) -> Tensor",
    f"roi_pool({_ROI}) -> (Tensor, Tensor)",
    f"ps_roi_align({_ROI}, int sampling_ratio) -> (Tensor, Tensor)",
    f"ps_roi_pool({_ROI}) -> (Tensor, Tensor)",
    "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, float rois_scale, "
    "int rois_zero_point, float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
    "bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    f"SymInt pooled_width, {_GRAD_SIZES}, int sampling_ratio, bool aligned) -> Tensor",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    f"SymInt pooled_width, {_GRAD_SIZES}) -> Tensor",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    f"SymInt pooled_height, SymInt pooled_width, int sampling_ratio, {_GRAD_SIZES}) -> Tensor",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    f"SymInt pooled_height, SymInt pooled_width, {_GRAD_SIZES}) -> Tensor",
    f"deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, {_DEFORM}) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    f"{_DEFORM}) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)


class _DeclareOperatorsFirst(importlib.abc.MetaPathFinder):
    """Runs once, on the first `import torchvision`; then steps aside for the normal import."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        if torch.version.cuda is None:
            library = torch.library.Library("torchvision", "DEF")
            for schema in _SCHEMAS:
                library.define(schema)
            _LIBRARIES.append(library)  # the declarations last only as long as this object
        return None


_LIBRARIES: list = []
sys.meta_path.insert(0, _DeclareOperatorsFirst())
