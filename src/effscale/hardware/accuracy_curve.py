"""Expected accuracy from a study's rows: the isotonic curve the planner ranks candidates by when
it is given `accuracy=` (a study's results.json)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import EffscaleError



# -- expected accuracy from a study's rows -----------------------------------------------------------
@dataclass(frozen=True)
class AccuracyCurve:
    """Expected top-1 vs MACs: isotonic (non-decreasing) in log MACs, linear between the fitted
    points, flat outside them (no extrapolation beyond the models the study measured)."""

    log_macs: tuple[float, ...]
    top1: tuple[float, ...]
    rows_used: int
    strategy: str

    @classmethod
    def fit(cls, rows) -> "AccuracyCurve":
        rows = _accuracy_rows(rows)
        compound_rows = [r for r in rows if r.get("strategy") == "compound"]
        strategy = "compound" if len({r["macs"] for r in compound_rows}) >= 2 else "all"
        used = compound_rows if strategy == "compound" else rows
        groups: dict[int, list[float]] = {}
        for row in used:  # seeds of the same model average into one point
            groups.setdefault(int(row["macs"]), []).append(float(row["top1"]))
        if len(groups) < 2:
            raise EffscaleError(f"accuracy rows need at least 2 models with different MACs; got {len(groups)}")
        # Pool-adjacent-violators: merge neighbours until the means never decrease.
        blocks = []  # [sum, count, first macs, last macs]
        for macs in sorted(groups):
            blocks.append([sum(groups[macs]), len(groups[macs]), macs, macs])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                total, count, _, last = blocks.pop()
                blocks[-1][0] += total
                blocks[-1][1] += count
                blocks[-1][3] = last
        xs, ys = [], []
        for total, count, first, last in blocks:  # a pooled block is flat from its first to last model
            for macs in sorted({first, last}):
                xs.append(math.log(macs))
                ys.append(total / count)
        return cls(tuple(xs), tuple(ys), len(used), strategy)

    def __call__(self, macs: float) -> float:
        x = math.log(macs)
        if x <= self.log_macs[0]:
            return self.top1[0]
        if x >= self.log_macs[-1]:
            return self.top1[-1]
        for (x0, y0), (x1, y1) in zip(zip(self.log_macs, self.top1), zip(self.log_macs[1:], self.top1[1:])):
            if x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1

    def extrapolated(self, macs: float) -> bool:
        return self.outside(macs) > 0

    def outside(self, macs: float) -> float:
        """How far (in log MACs) `macs` lies outside the range of the rows; 0 inside it."""
        x = math.log(macs)
        return max(0.0, self.log_macs[0] - x, x - self.log_macs[-1])

    def to_dict(self) -> dict:
        return {"macs": [round(math.exp(x)) for x in self.log_macs], "top1": list(self.top1),
                "rows_used": self.rows_used, "strategy": self.strategy}


def _accuracy_rows(rows) -> list[dict]:
    """Rows from a list, a {"rows": [...]} / {"results": [...]} object, or a JSON file of either."""
    source = "accuracy rows"
    if isinstance(rows, (str, Path)):
        source = str(rows)
        try:
            rows = json.loads(Path(rows).read_text())
        except FileNotFoundError:
            raise EffscaleError(f"accuracy file {source} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise EffscaleError(f"cannot read accuracy rows from {source}: {error}") from None
    if isinstance(rows, dict):
        rows = rows.get("rows", rows.get("results"))
    if not isinstance(rows, list) or not rows:
        raise EffscaleError(f"{source}: expected a non-empty list of rows (strategy, target, macs, params, top1, "
                            "seed, latency_ms), or an object with one under 'rows' or 'results'")
    for index, row in enumerate(rows):
        ok = isinstance(row, dict) and all(
            isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)
            and math.isfinite(row[key]) for key in ("macs", "top1"))
        if not ok or row["macs"] <= 0:
            raise EffscaleError(f"{source}: row {index} needs numeric 'macs' (> 0) and 'top1'; got {row!r:.120}")
    return rows
