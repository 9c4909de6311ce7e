"""The 1-D time-series MBConv family: compound scaling where resolution is the sequence length."""
from .cost import SeriesCost, series_cost
from .data import (CLASS_NAMES, TASK_NAME, SeriesData, load_series_task_data, make_series_data, resample,
                   series_inputs)
from .nn import SeriesNet
from .spec import (DEFAULT_NUM_CLASSES, MIN_LENGTH, SERIES_B0, SeriesSpec, SeriesStage, get_series_spec,
                   list_series_models, scale_series)
from .family import SERIES

__all__ = [
    "CLASS_NAMES", "DEFAULT_NUM_CLASSES", "MIN_LENGTH", "SERIES", "SERIES_B0", "SeriesCost", "SeriesData", "SeriesNet",
    "SeriesSpec", "SeriesStage", "TASK_NAME", "get_series_spec", "list_series_models", "load_series_task_data",
    "make_series_data", "resample", "scale_series", "series_cost", "series_inputs",
]
