"""Fit the model to the device: profile this machine, predict latency, run models as profiled.

`run_profile()` measures, `load_profile()` reads a saved profile back (validated, warning on
mismatches), `DeviceProfile.predict_latency(spec)` predicts, `prepare()` / `measure_latency()`
build and time a model exactly as the profile does.
"""
from .latency import DEFAULT_METHOD, METHODS, network_units
from .runtime_profile import run_profile
from .profile import DeviceProfile, ProfileMismatchWarning, load_profile, machine_description
from .runtime import LatencyMeasurement, measure_latency, prepare
from .budgets import energy_per_inference, measure_peak_memory, predict_peak_memory, training_carbon
from .thermal import PRESETS, ThermalModel, thermal_model
from .plan import PlanResult, plan
from .utility import Utility

__all__ = [
    "DEFAULT_METHOD", "DeviceProfile", "LatencyMeasurement", "METHODS", "PRESETS", "PlanResult",
    "ProfileMismatchWarning", "ThermalModel", "Utility", "energy_per_inference", "load_profile",
    "machine_description", "measure_latency", "measure_peak_memory", "network_units", "plan",
    "predict_peak_memory", "prepare", "run_profile", "thermal_model", "training_carbon",
]
