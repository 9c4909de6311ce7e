"""Sustained latency under thermal throttling: a first-order (one-node RC) thermal model.

    C * dT/dt = P(f) - (T - T_ambient) / R

The device runs inference back to back at clock fraction f (1 = full speed), drawing
P(f) = power_w * f**power_exponent. While T < T_max the clock stays at 1. When T reaches T_max
an ideal governor lowers the clock just enough to hold T there: P(f*) = (T_max - T_ambient) / R,
so f* = ((T_max - T_ambient) / (R * power_w)) ** (1 / power_exponent), but never below
`min_clock` (below it the temperature keeps rising towards T_ambient + R * P(min_clock)).
Latency scales as 1 / f: the model treats inference as clock-bound, which over-states the
slow-down of memory-bound layers (a conservative error).

Everything is closed form (exponential approach to T_ambient + R * P with time constant
tau = R * C), so results are exact for the model and cost nothing to compute:
- never throttles when T_ambient + R * power_w <= T_max; the temperature tends to that value;
- otherwise throttles after tau * ln((T_start - T_inf) / (T_max - T_inf)), T_inf = T_ambient + R * power_w.

The presets are illustrative, not measurements of any product: `phone` (5 W into a small,
poorly cooled body whose limit is skin temperature: throttles after ~100 s to 2/3 speed) and
`laptop` (28 W, fan-cooled, junction limit 90 C: throttles after ~4 minutes to ~93 % speed).
Override any field from a JSON file or key=value pairs (`thermal_model("phone", power_w=3)`,
or on the command line `--sustained phone,power_w=3,duration_s=1800`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import EffscaleError, closest


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ThermalModel:
    """One-node thermal model of a device running inference continuously (module docstring)."""

    name: str = "custom"
    power_w: float = 5.0  # power drawn at full clock while inferring
    resistance_k_per_w: float = 6.0  # R: kelvin of temperature rise per watt at steady state
    capacitance_j_per_k: float = 15.0  # C: joules to warm the device by one kelvin
    ambient_c: float = 25.0
    max_c: float = 45.0  # T_max: the governor's throttling threshold
    start_c: float | None = None  # temperature when inference starts (default: ambient)
    min_clock: float = 0.3  # lowest clock fraction the governor uses
    power_exponent: float = 1.0  # P(f) = power_w * f**k; 1 = fixed voltage, up to 3 with voltage scaling
    duration_s: float = 600.0  # how long inference runs

    def __post_init__(self) -> None:
        for key in ("power_w", "resistance_k_per_w", "capacitance_j_per_k", "power_exponent", "duration_s"):
            value = getattr(self, key)
            if not _is_number(value) or value <= 0:
                raise EffscaleError(f"thermal {key}={value!r} must be a finite number > 0")
        for key in ("ambient_c", "max_c"):
            if not _is_number(getattr(self, key)):
                raise EffscaleError(f"thermal {key}={getattr(self, key)!r} must be a finite number (degrees C)")
        if self.max_c <= self.ambient_c:
            raise EffscaleError(f"thermal max_c={self.max_c!r} must be above ambient_c={self.ambient_c!r}")
        start = self.start_c
        if start is not None and (not _is_number(start) or not self.ambient_c <= start <= self.max_c):
            raise EffscaleError(f"thermal start_c={self.start_c!r} must be between ambient_c={self.ambient_c!r} "
                                f"and max_c={self.max_c!r}")
        if not _is_number(self.min_clock) or not 0 < self.min_clock <= 1:
            raise EffscaleError(f"thermal min_clock={self.min_clock!r} must be in (0, 1]")

    @property
    def tau_s(self) -> float:
        return self.resistance_k_per_w * self.capacitance_j_per_k

    def equilibrium_c(self, clock: float = 1.0) -> float:
        """Temperature the device tends to at a fixed clock fraction."""
        return self.ambient_c + self.resistance_k_per_w * self.power_w * clock ** self.power_exponent

    def temperature_at(self, seconds: float, clock: float = 1.0, start_c: float | None = None) -> float:
        """Temperature after `seconds` at a fixed clock, from `start_c` (default: the model's start)."""
        start = self._start_c if start_c is None else start_c
        target = self.equilibrium_c(clock)
        return target + (start - target) * math.exp(-seconds / self.tau_s)

    @property
    def _start_c(self) -> float:
        return self.ambient_c if self.start_c is None else self.start_c

    def throttled_clock(self) -> float:
        """f*: the clock fraction that holds T at T_max (1 when full clock never gets there)."""
        if self.equilibrium_c() <= self.max_c:
            return 1.0
        holding_power = (self.max_c - self.ambient_c) / self.resistance_k_per_w
        return max(self.min_clock, (holding_power / self.power_w) ** (1 / self.power_exponent))

    def time_to_throttle_s(self) -> float | None:
        """Seconds of full-clock inference until T reaches T_max; None if it never does."""
        target = self.equilibrium_c()
        if target <= self.max_c:
            return None
        return self.tau_s * math.log((self._start_c - target) / (self.max_c - target))

    def sustained(self, latency_ms: float, duration_s: float | None = None) -> dict:
        """Continuous inference at `latency_ms` (full clock) for `duration_s` (default: the model's).

        Returns latency at the end (`final_ms`, what a budget must hold), the mean over the run,
        the steady-state latency (t -> infinity), time to throttle and temperatures.
        """
        if not _is_number(latency_ms) or latency_ms <= 0:
            raise EffscaleError(f"latency_ms={latency_ms!r} must be a finite number > 0")
        duration = self.duration_s if duration_s is None else duration_s
        if not _is_number(duration) or duration <= 0:
            raise EffscaleError(f"duration_s={duration!r} must be a finite number > 0")
        clock, throttle_at = self.throttled_clock(), self.time_to_throttle_s()
        if throttle_at is None or duration <= throttle_at:
            final_clock, final_c = 1.0, self.temperature_at(duration)
        else:
            final_clock = clock
            # Held at T_max, or (clock floored at min_clock) still warming from T_max.
            final_c = self.temperature_at(duration - throttle_at, clock, start_c=self.max_c)
        full_speed_s = duration if throttle_at is None else min(duration, throttle_at)
        work = full_speed_s + clock * (duration - full_speed_s)  # seconds of full-clock-equivalent work
        steady_c = self.equilibrium_c(clock) if throttle_at is None or clock == self.min_clock else self.max_c
        return {
            "preset": self.name, "latency_ms": latency_ms, "duration_s": duration,
            "final_ms": latency_ms / final_clock, "mean_ms": latency_ms * duration / work,
            "steady_state_ms": latency_ms / clock, "steady_clock": clock,
            "throttles": throttle_at is not None, "time_to_throttle_s": throttle_at,
            "final_temperature_c": final_c, "steady_temperature_c": steady_c,
            "model": dataclasses.asdict(self),
        }


PRESETS = {
    "phone": ThermalModel(name="phone", power_w=5.0, resistance_k_per_w=6.0, capacitance_j_per_k=15.0,
                          ambient_c=25.0, max_c=45.0, min_clock=0.3),
    "laptop": ThermalModel(name="laptop", power_w=28.0, resistance_k_per_w=2.5, capacitance_j_per_k=40.0,
                           ambient_c=25.0, max_c=90.0, min_clock=0.3),
}
_FIELDS = {f.name: f for f in dataclasses.fields(ThermalModel)}


def _coerce(key: str, value):
    if key not in _FIELDS:
        allowed = [k for k in _FIELDS if k != "name"]
        raise EffscaleError(f"thermal field {key!r} is unknown{closest(key, allowed)} (allowed: {', '.join(allowed)})")
    if key == "name" or not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        raise EffscaleError(f"thermal {key}={value!r} is not a number") from None


def thermal_model(preset: str | Path | ThermalModel = "phone", **overrides) -> ThermalModel:
    """A preset name (PRESETS), a JSON file of ThermalModel fields, or a model; then overrides."""
    if isinstance(preset, ThermalModel):
        base = preset
    elif str(preset) in PRESETS:
        base = PRESETS[str(preset)]
    else:
        path = Path(preset)
        if not path.suffix and not path.exists():
            raise EffscaleError(f"thermal preset {str(preset)!r} is unknown{closest(str(preset), PRESETS)}; "
                                f"allowed: {', '.join(PRESETS)} or a JSON file")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise EffscaleError(f"cannot read thermal model {path}: {getattr(error, 'strerror', None) or error}") \
                from None
        if not isinstance(data, dict):
            raise EffscaleError(f"thermal model {path} must hold a JSON object of fields")
        base = ThermalModel(**{"name": path.stem, **{k: _coerce(k, v) for k, v in data.items()}})
    return dataclasses.replace(base, **{k: _coerce(k, v) for k, v in overrides.items()})


def parse_sustained(text: str) -> ThermalModel:
    """'PRESET_OR_FILE[,key=value...]' (the command line's --sustained) to a ThermalModel."""
    head, *pairs = [part.strip() for part in str(text).split(",")]
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EffscaleError(f"--sustained override {pair!r} must be key=value (e.g. power_w=3)")
        overrides[key.strip()] = value.strip()
    return thermal_model(head or "phone", **overrides)
