"""Fit the model to the device: profile this machine, predict latency, run models as profiled.

`run_profile()` measures, `load_profile()` reads a saved profile back (validated, warning on
mismatches), `DeviceProfile.predict_latency(spec)` predicts, `prepare()` / `measure_latency()`
build and time a model exactly as the profile does.
"""
from .latency import DEFAULT_METHOD, METHODS, network_units
from .profile import DeviceProfile, ProfileMismatchWarning, load_profile, machine_description, run_profile
from .runtime import LatencyMeasurement, measure_latency, prepare

__all__ = [
    "DEFAULT_METHOD", "DeviceProfile", "LatencyMeasurement", "METHODS", "ProfileMismatchWarning", "load_profile",
    "machine_description", "measure_latency", "network_units", "prepare", "run_profile",
]
