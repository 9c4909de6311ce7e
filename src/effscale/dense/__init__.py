"""Dense prediction (issue 12, started): detector specs, EfficientDet's compound scaling of the
whole detector, its parameter count from the spec, the module (BiFPN, shared heads) and
batched NMS. FPN,
MACs, anchors, losses, data, metrics, segmentation and training are still to come."""
from .cost import detector_macs, detector_params, level_channels
from .nms import batched_nms
from .spec import DetectorSpec, EFFICIENTDET_TABLE, efficientdet, efficientdet_formula, fast_scaling

__all__ = ["DetectorSpec", "EFFICIENTDET_TABLE", "batched_nms", "detector_macs", "detector_params", "efficientdet", "efficientdet_formula",
           "fast_scaling", "level_channels"]
