"""Dense prediction (issue 12): detector and segmenter specs scaled by one phi (EfficientDet's
joint rule and table, Dollar's fast scaling), their parameters and MACs from the spec, the modules
(BiFPN or plain FPN + shared heads; an FPN-style segmentation decoder, optionally multi-task), anchors and losses, batched NMS, COCO
and mask-folder data with malformed-annotation reports, the bundled generated task, COCO mAP
(faster-coco-eval) and mIoU. Training, eval and predict go through train/dense_task.py and
dense_predict.py, the study through search/dense_study.py; effdet's tf_efficientdet checkpoints load
through effdet_weights.py."""
from .boxes import anchor_boxes, detection_loss, postprocess
from .cost import dense_cost, dense_layer_cost, detector_macs, detector_params, level_channels, segmenter_cost
from .data import DataReport, DenseDataset, load_dense
from .io import load_dense_model, save_dense_weights
from .nms import batched_nms
from .spec import (DENSE_NAME_FORMS, DetectorSpec, EFFICIENTDET_TABLE, SegmenterSpec, efficientdet,
                   efficientdet_formula, fast_scaling, resolve_dense_spec, segmenter)
from .synth import make_dense_task

__all__ = ["DENSE_NAME_FORMS", "DataReport", "DenseDataset", "DetectorSpec", "EFFICIENTDET_TABLE",
           "SegmenterSpec", "anchor_boxes", "batched_nms", "dense_cost", "dense_layer_cost", "detection_loss", "detector_macs",
           "detector_params", "efficientdet", "efficientdet_formula", "fast_scaling", "level_channels", "load_dense",
           "load_dense_model", "make_dense_task", "postprocess", "resolve_dense_spec", "save_dense_weights",
           "segmenter", "segmenter_cost"]
