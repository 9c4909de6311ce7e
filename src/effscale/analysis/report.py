"""`effscale analyze spectrum`: the analysis of one or more sources side by side, written as
spectrum.json (one entry per source), report.md and spectrum.png (the lab extra draws it)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import EffscaleError
from .sources import load_images
from .spectrum import BASE_RESOLUTION, KNEE_GAIN, NATURAL_SLOPE, analyse, check_base_resolution

REPORT_RESOLUTIONS = (32, 64, 128, 224, 320, 512)


def run_spectrum(sources: list[str], *, samples: int = 500, seed: int = 0, out: str | os.PathLike | None = None,
                 command: str = "", base_resolution: int = BASE_RESOLUTION) -> dict:
    """The spectrum analysis of each source (`sources.load_images` forms); with `out`, the report
    files there (the directory is created; existing report files are replaced, nothing else)."""
    if not sources:
        raise EffscaleError("give at least one --data source")
    if out is not None:
        out = Path(out).expanduser()
        if out.exists() and not out.is_dir():
            raise EffscaleError(f"--out {str(out)!r} exists and is not a directory")
        from ..plotting import pyplot

        pyplot()  # the plot's matplotlib (lab extra), checked before any work
    check_base_resolution(base_resolution)  # before any reading
    images = {source: load_images(source, samples=samples, seed=seed) for source in sources}  # all read first
    results = [analyse(found, source=source, base_resolution=base_resolution) for source, found in images.items()]
    report = {"command": command, "samples": samples, "seed": seed, "natural_slope": NATURAL_SLOPE,
              "knee_gain": KNEE_GAIN, "sources": results}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "spectrum.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "report.md").write_text(markdown(report))
        _plot(results, out / "spectrum.png")
    return report


def markdown(report: dict) -> str:
    lines = ["# Spectrum of the data: which input resolution it calls for", ""]
    if report["command"]:
        lines += [f"Command: `{report['command']}` (samples {report['samples']}, seed {report['seed']})", ""]
    header = ["source", "images", "native side", "slope"] + [f"kept at {r} px" for r in REPORT_RESOLUTIONS] \
        + ["95 % by", "99 % by", "knee"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["sources"]:
        side = r["native_side"]
        cells = [r["source"], str(r["images"]), f"{side['min']}-{side['max']}" if side["min"] != side["max"]
                 else str(side["min"]), f"{r['slope']:.2f}"]
        cells += [f"{r['kept'][res]:.1%}" if res in r["kept"] else "-" for res in REPORT_RESOLUTIONS]
        cells += [f"{r['min_resolution']['95'] or '> 1024'} px", f"{r['min_resolution']['99'] or '> 1024'} px",
                  f"{r['knee'] or '> 512'} px"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Kept: the share of the images' energy at frequencies a model at that input still sees "
              "(up to resolution / 2 cycles per image). Slope: log-log slope of the power per frequency "
              f"(natural photographs: about {report['natural_slope']:.2f}). Knee: past it, no doubling of the "
              f"resolution adds {report['knee_gain']:.0%} of the energy.", ""]
    lines += [f"- **{r['source']}**: {r['verdict']}." for r in report["sources"]]
    return "\n".join(lines) + "\n"


def _plot(results: list[dict], path: Path) -> None:
    from ..plotting import pyplot

    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        power = r["power"]
        rings = list(range(1, len(power)))
        left.loglog(rings, power[1:], label=f"{r['source']} (slope {r['slope']:.2f})")
        resolutions = sorted(r["kept"])
        right.plot(resolutions, [100 * r["kept"][k] for k in resolutions], label=r["source"])
    left.set_xlabel("frequency (cycles per image)")
    left.set_ylabel("normalised power per ring")
    left.set_title("power spectrum")
    left.legend(fontsize=8)
    right.set_xscale("log", base=2)
    right.set_xlabel("input resolution (px)")
    right.set_ylabel("% of the energy a model sees")
    right.set_ylim(0, 101)
    right.set_title("energy kept by resolution")
    right.axhline(95, color="grey", lw=0.6, ls="--")
    right.axhline(99, color="grey", lw=0.6, ls=":")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


__all__ = ["markdown", "run_spectrum"]
