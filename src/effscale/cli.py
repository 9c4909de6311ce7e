"""`effscale` command line: one thin function per command, each a call into the public API.

Bad input is one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import EffscaleError, check_writable_file, is_out_of_memory
from .export.manifest import FORMATS
from .export.runtimes import RUNTIMES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"effscale: error: {message} (see `{self.prog} --help`)\n")


def _human(n: float, unit: str = "") -> str:
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= threshold:
            return f"{n / threshold:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def _print_json(data) -> None:
    print(json.dumps(data, indent=2))


def _table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*[str(value) for value in row])
    console = Console()
    if not console.is_terminal:  # piped: don't squeeze to 80 columns and truncate layer names
        console = Console(width=200)
    console.print(table)


def cmd_models(args) -> None:
    from .summary import model_table

    rows = model_table()
    if args.json:
        return _print_json(rows)
    _table("effscale models (analytic cost, batch 1, native resolution)",
           ["model", "resolution", "params", "MACs", "activations"],
           [[r["name"], r["resolution"], _human(r["params"]), _human(r["macs"]), _human(r["activations"])]
            for r in rows])


def _dense_info(args) -> None:
    """`info` for a detector / segmenter name: the spec and its cost by part (dense_cost)."""
    from .dense.cost import dense_cost, dense_layer_cost
    from .dense.spec import dense_spec_to_dict, resolve_dense_spec

    used = [flag for flag, value in (("--phi", args.phi), ("--alpha", args.alpha), ("--beta", args.beta),
                                     ("--gamma", args.gamma), ("--width", args.width), ("--depth", args.depth),
                                     ("--resolution", args.resolution), ("--image-size", args.image_size))
            if value is not None] + (["--roofline"] if args.roofline else [])
    if used:
        raise EffscaleError(f"{used[0]} is for classifier specs; a detector / segmenter is scaled in its name "
                            f"(e.g. efficientdet@1.5)" + (" and has no roofline view yet" if args.roofline else ""))
    spec = resolve_dense_spec(args.model, num_classes=args.num_classes)
    counted = dense_cost(spec)
    rows = dense_layer_cost(spec) if args.layers else None
    if args.json:
        extra = {"layers": rows.to_dict(layers=True)["layers"]} if rows else {}
        return _print_json({"spec": dense_spec_to_dict(spec), **counted, **extra})
    fields = dense_spec_to_dict(spec)
    fields.pop("backbone")
    print(f"{spec.name}: " + ", ".join(f"{k}={v}" for k, v in fields.items() if k not in ("kind", "name")))
    print(f"backbone: {spec.backbone.name} at {spec.resolution} px")
    print(f"params {_human(counted['params'])} ({counted['params']:,}) | MACs {_human(counted['macs'])} "
          f"(batch 1, {args.num_classes} classes)")
    _table("by part", ["part", "params", "MACs"],
           [[part, _human(value), _human(counted["macs_by_part"].get(part, 0))]
            for part, value in counted["params_by_part"].items() if part != "total"])
    if rows:
        _table(f"{spec.name} layers (a shared head's weights counted at its first level)",
               ["layer", "kind", "in", "out", "k", "s", "out hw", "params", "MACs", "activations", "FLOP/byte"],
               [[r.name, r.kind, r.in_channels, r.out_channels, r.kernel, r.stride, "x".join(map(str, r.out_hw)),
                 _human(r.params), _human(r.macs), _human(r.activations), f"{r.intensity:.1f}"] for r in rows.layers])
        print(f"peak activation memory {_human(rows.peak_activation_bytes, 'B')} (fp32, batch 1)")


def cmd_info(args) -> None:
    from .model import is_dense_reference

    if is_dense_reference(args.model):
        return _dense_info(args)
    from .scaling import Coefficients, ScalingRule
    from .summary import describe, scaled_spec
    from .zoo import resolve_image_spec

    rule = None
    if any(v is not None for v in (args.alpha, args.beta, args.gamma)):
        rule = ScalingRule(**{k: v for k, v in (("alpha", args.alpha), ("beta", args.beta), ("gamma", args.gamma))
                              if v is not None})
    coefficients = None
    if any(v is not None for v in (args.width, args.depth, args.resolution)):
        coefficients = Coefficients(**{k: v for k, v in (("width", args.width), ("depth", args.depth),
                                                         ("resolution", args.resolution)) if v is not None})
    spec = scaled_spec(resolve_image_spec(args.model), phi=args.phi, rule=rule, coefficients=coefficients,
                       image_size=args.image_size)
    if args.roofline:
        return _roofline(spec, args)
    info = describe(spec, layers=args.layers)
    if args.json:
        return _print_json(info)
    print(info["spec"])
    print()
    print(f"resolution {info['resolution']} px | params {_human(info['params'])} ({info['params']:,}) | "
          f"MACs {_human(info['macs'])} | activations {_human(info['activations'])} | "
          f"peak activation memory {_human(info['peak_activation_bytes'], 'B')} (fp32, batch 1)")
    if args.layers:
        _table(f"{spec.name} layers", ["layer", "kind", "in", "out", "k", "s", "out hw", "params", "MACs",
                                       "activations", "FLOP/byte"],
               [[r["name"], r["kind"], r["in_channels"], r["out_channels"], r["kernel"], r["stride"],
                 "x".join(map(str, r["out_hw"])), _human(r["params"]), _human(r["macs"]),
                 _human(r["activations"]), f"{r['intensity']:.1f}"] for r in info["layers"]])


def _roofline(spec, args) -> None:
    from .hardware.roofline import device_peaks, roofline

    profile = None
    if args.device:
        from .hardware.profile import load_profile

        profile = load_profile(args.device)
    precision = profile.precision if profile else args.precision
    flops, bandwidth, source = device_peaks(profile, precision)
    view = roofline(spec, peak_flops=flops, bandwidth=bandwidth, batch=args.batch, dtype=precision)
    view["peaks_from"] = source
    if args.json:
        return _print_json(view)
    print(f"{spec.name} batch {args.batch} {precision}: peaks {flops / 1e9:.0f} GFLOP/s, {bandwidth / 1e9:.1f} GB/s "
          f"({source}); ridge {view['ridge_flop_per_byte']:.1f} FLOP/byte")
    _table("roofline per layer", ["layer", "kind", "FLOP/byte", "bound", "bound ms", "share"],
           [[r["name"], r["kind"], f"{r['intensity']:.1f}", r["bound"], f"{r['ms']:.3f}", f"{r['share']:.1%}"]
            for r in view["layers"]])
    print(f"roofline bound {view['bound_ms']:.2f} ms, {view['memory_bound_share']:.0%} of it in memory-bound layers")
    if view["fusion"]:
        pairs = {f["pair"] for f in view["fusion"]}
        print(f"fusing {len(view['fusion'])} {' / '.join(sorted(pairs))} pairs would not move "
              f"{_human(view['fusion_bytes_saved'], 'B')} of {_human(view['bytes'], 'B')} "
              f"({view['fusion_bytes_saved'] / view['bytes']:.0%}): {view['fusion_ms_saved']:.2f} ms of the bound")


def _is_dense_weights(path) -> bool:
    """A detector / segmenter weights file or run, or an artifact exported from one."""
    from .dense.io import is_dense_file
    from .export.manifest import is_artifact, read_manifest

    if is_artifact(path):
        return read_manifest(path).get("task", "classification") != "classification"
    return is_dense_file(path)


def cmd_predict(args) -> None:
    if _is_dense_weights(args.weights):
        return _predict_dense(args)
    if args.out:
        raise EffscaleError("--out is for detector / segmenter weights (drawings); a classifier prints its top-k")
    from .predict import predict_images

    results = predict_images(args.images, weights=args.weights, model=args.model, top_k=args.top_k,
                             runtime=args.runtime)
    if args.json:
        return _print_json(results)
    for result in results:
        print(result["image"])
        for rank, entry in enumerate(result["top_k"], 1):
            print(f"  {rank}. {entry['label']:<30} {entry['prob']:7.2%}  (class {entry['index']})")


def _predict_dense(args) -> None:
    from .dense_predict import predict_dense

    rows = predict_dense(args.images, args.weights, args.out or "predictions", score_threshold=args.score_threshold,
                         runtime=args.runtime)
    if args.json:
        return _print_json(rows)
    for row in rows:
        print(f"{row['image']} -> {row['drawing']}")
        for found in row.get("detections", []):
            print(f"  {found['label']:<20} {found['score']:.2f}  box {found['box_xyxy']}")
        if "image_class" in row:
            print(f"  image class: {row['image_class']}")
        if "pixels" in row:
            total = sum(row["pixels"].values())
            print("  " + ", ".join(f"{name} {count / total:.1%}" for name, count in row["pixels"].items()))


def cmd_make_dense_task(args) -> None:
    from .dense.synth import make_dense_task

    summary = make_dense_task(args.out, train_images=args.train_images, test_images=args.test_images,
                              size=args.size, seed=args.seed)
    if args.json:
        return _print_json(summary)
    for split in ("train", "test"):
        row = summary[split]
        print(f"{split}: {row['images']} images, {row['objects']} objects ({row['small']} small, {row['medium']} "
              f"medium, {row['large']} large by COCO area)")
    print(f"written to {args.out}: detection --data coco:{args.out}, segmentation --data masks:{args.out}")


def _weights_arg(text: str) -> tuple[float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not two comma-separated numbers, e.g. 1,0.5")
    return values


def _threads_arg(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a thread count; allowed: an integer >= 1, or auto")
    return value


def cmd_train(args) -> None:
    from .train import TrainConfig, train

    options = {key: getattr(args, key) for key in (
        "data", "out", "recipe", "model", "phi", "epochs", "max_steps", "batch_size", "lr", "seed", "precision",
        "checkpoint_every", "resume", "init", "teacher", "linear_probe", "accumulation", "grad_checkpointing",
        "distill_alpha", "distill_temperature", "threads", "qat", "task", "box_loss", "mask_loss", "loss_weights",
        "ema_decay", "scale_jitter")}
    summary = train(TrainConfig(**options, command=_command_line(args)))
    if args.json:
        return _print_json(summary)
    if summary["task"] != "classification":
        metric = (f"test mAP {summary['test_map']:.2f}, mAP@.5 {summary['test_map_50']:.2f}"
                  if summary["task"] == "detection" else
                  f"test mIoU {summary['test_miou']:.2f} %, pixel accuracy {summary['test_pixel_accuracy']:.2f} %"
                  + (f", image top-1 {summary['test_top1']:.2f} %" if summary["task"] == "multitask" else ""))
        print(f"{metric} | params {_human(summary['params'])} | MACs {_human(summary['macs'])} | {summary['steps']} "
              f"steps in {summary['wall_s']:.0f} s | weights: {summary['weights']}")
        return None
    print(f"test top-1 {summary['test_top1']:.2f} %, top-5 {summary['test_top5']:.2f} % | "
          f"params {_human(summary['params'])} | MACs {_human(summary['macs'])} | {summary['steps']} steps in "
          f"{summary['wall_s']:.0f} s | weights: {summary['weights']}")
    qat = summary.get("qat")
    if qat and qat.get("int8"):
        print(f"QAT: INT8 top-1 {qat['int8']['int8_top1']:.2f} % vs its fp32 {qat['int8']['fp32_top1']:.2f} % on "
              f"{qat['int8']['samples']} held-out images (drop {qat['int8']['drop']:.2f}): {qat['int8_dir']}")
    elif qat:
        print(f"QAT: not quantized ({qat['note']}); later: {qat['int8_command']}")


def cmd_eval(args) -> None:
    if _is_dense_weights(args.weights):
        from .dense_predict import evaluate_dense_weights

        result = evaluate_dense_weights(args.weights, args.data, runtime=args.runtime)
        if args.json:
            return _print_json(result)
        if result["task"] == "detection":
            sizes = ", ".join(f"{size} {result['map_' + size]:.2f}" for size in ("small", "medium", "large")
                              if result["map_" + size] is not None)
            print(f"{result['weights']} ({result['runtime']}) on {result['data']}: mAP@[.5:.95] {result['map']:.2f}, mAP@.5 "
                  f"{result['map_50']:.2f}, mAP@.75 {result['map_75']:.2f}; by size: {sizes} ({result['samples']} "
                  "images, COCO metrics by faster-coco-eval)")
        else:
            top1 = f", image top-1 {result['top1']:.2f} %" if "top1" in result else ""
            print(f"{result['weights']} ({result['runtime']}) on {result['data']}: mIoU {result['miou']:.2f} %, pixel accuracy "
                  f"{result['pixel_accuracy']:.2f} %{top1} ({result['samples']} images)")
            _table("IoU per class", ["class", "IoU %"],
                   [[name, "-" if v is None else f"{v:.1f}"] for name, v in result["iou"].items()])
        return None
    from .train import evaluate_weights

    result = evaluate_weights(args.weights, args.data, batch_size=args.batch_size, runtime=args.runtime)
    if args.json:
        return _print_json(result)
    print(f"{result['weights']} on {result['data']}: top-1 {result['top1']:.2f} %, top-5 {result['top5']:.2f} % "
          f"({result['samples']} images)")
    classes = result["classes"]
    _table("per-class accuracy and confusion (rows: true, columns: predicted)",
           ["class", "accuracy %"] + [str(i) for i in range(len(classes))],
           [[f"{i} {name}", f"{result['per_class'][name]:.1f}"] + row
            for i, (name, row) in enumerate(zip(classes, result["confusion"]))])


def cmd_export(args) -> None:
    from .export import export

    manifest = export(args.source, args.out, format=args.format, model=args.model)
    if args.json:
        return _print_json(manifest)
    parity = manifest["parity"]
    agreement = "" if parity["top1_agreement"] is None else f", top-1 agreement {parity['top1_agreement']:.0%}"
    print(f"{args.out}: {manifest['runtime_format']} ({manifest['model_file']}"
          + (f", opset {manifest['opset']}" if "opset" in manifest else "") + f") of {manifest['source']}")
    print(f"parity with PyTorch on {parity['runtime']['runtime']} {parity['runtime']['version']} "
          f"({parity['runtime']['precision']}): max abs error {parity['max_abs']:.2e}, max relative "
          f"{parity['max_rel']:.2e}{agreement}")


def cmd_quantize(args) -> None:
    from .export.quantize import quantize

    if args.plot:  # checked before the long work
        if not args.analyze:
            raise EffscaleError("--plot draws the per-tensor SQNR of --analyze: add --analyze")
        check_writable_file(args.plot, "--plot")
    manifest = quantize(args.source, args.out, format=args.format, weights_only=args.weights_only, calib=args.calib,
                        samples=args.samples, analyze=args.analyze, max_drop=args.max_drop, model=args.model)
    if args.json:
        return _print_json(manifest)
    q = manifest["quantization"]
    accuracy = q["accuracy"]
    notes = [q["calibration"]] if "calibration" in q else []
    if q.get("reduce_range"):
        notes.append("7-bit weights: no VNNI on this CPU")
    if "overflow_fix" in q:
        notes.append(f"overflow fix {q['overflow_fix']}")
    if "inference_precision" in q:
        notes.append(f"float ops in {q['inference_precision']}")
    print(f"{args.out}: {manifest['precision'].upper()} {manifest['runtime_format']} with {q['library']} "
          f"({q['weights']} weights, {q['activations']} activations; {'; '.join(notes)})")
    print(f"held-out top-1 on {accuracy['samples']} images: fp32 {accuracy['fp32_top1']:.2f} %, INT8 "
          f"{accuracy['int8_top1']:.2f} % (drop {accuracy['drop']:.2f} points); top-1 agreement "
          f"{accuracy['top1_agreement']:.1%}, logits SQNR {accuracy['logits_sqnr_db']:.1f} dB")
    if q["float_nodes"]:
        print(f"kept in float for max-drop {q['max_drop']:g}: {', '.join(q['float_nodes'])}")
    if q.get("sqnr_db") and args.plot:
        from pathlib import Path

        from .export.quantize import plot_sqnr_by_depth

        path = plot_sqnr_by_depth(q["sqnr_db"], Path(args.plot), f"INT8 SQNR by depth: {manifest['source']}")
        print(f"SQNR by depth: {path}")
    if q.get("sqnr_db"):
        _table("SQNR of each quantized tensor against float, worst first (dB)", ["tensor", "node", "SQNR dB"],
               [[row["tensor"], row["node"] or "", f"{row['sqnr_db']:.1f}"] for row in q["sqnr_db"]])


def _command_line(args, *extra: str) -> str:
    """The command as typed (the argv given to `main`), with `extra` arguments appended."""
    import shlex

    return "effscale " + " ".join(shlex.quote(a) for a in [*args.argv, *extra])


def _rule(args):
    from .scaling import ScalingRule

    given = {k: v for k, v in (("alpha", args.alpha), ("beta", args.beta), ("gamma", args.gamma)) if v is not None}
    return ScalingRule(**given)


def cmd_search(args) -> None:
    from .search import SearchConfig, search

    result = search(SearchConfig(
        model=args.model, data=args.data, out=args.out, phi=args.phi, target=args.target, budget=args.budget,
        sampler=args.sampler, trials=args.trials, alpha_grid=args.alpha_grid, beta_grid=args.beta_grid,
        storage=args.storage, study_name=args.study_name, seed=args.seed, progress=not args.json,
        spectrum=args.spectrum))
    if args.json:
        return _print_json(result)
    print(f"best: alpha={result['alpha']:g} beta={result['beta']:g} gamma={result['gamma']:.4g} "
          f"(minival top-1 {result['top1']:.2f} %; alpha*beta^2*gamma^2 = {result['target']:g})")
    if "gamma_min" in result:
        print(f"gamma bounded from below by the data's spectrum: {result['gamma_min_reason']}")
    _table(f"{len(result['trials'])} trials of {result['study_name']} ({result['storage']})",
           ["alpha", "beta", "gamma", "resolution", "MACs", "x base", "params", "top-1 %", "seconds"],
           [[f"{t['alpha']:g}", f"{t['beta']:g}", f"{t['gamma']:.4f}", t["resolution"], _human(t["macs"]),
             f"{t['macs_ratio']:.2f}", _human(t["params"]), f"{t['top1']:.2f}", t["seconds"]] for t in result["trials"]])
    for failure in result["failed"]:
        print(f"trial {failure['number']} ({failure['point']}) failed: {failure['error']}", file=sys.stderr)


def cmd_study(args) -> None:
    if args.task != "classification":
        return _dense_study(args)
    if args.model is None:
        raise EffscaleError("study needs --model (the base to scale), e.g. --model effscale_lab")
    from .search import StudyConfig, run_study

    strategies = tuple(s.strip() for s in (args.strategies or "compound,depth,width,resolution").split(",")
                       if s.strip())
    result = run_study(StudyConfig(
        model=args.model, data=args.data, out=args.out, targets=_numbers(args.targets or "2,4,8", "--targets"),
        seeds=args.seeds, phi=args.phi, budget=args.budget, rule=_rule(args), strategies=strategies,
        progress=not args.json, command=_command_line(args), keep_weights=not args.no_weights))
    if args.json:
        return _print_json(result)
    _table(f"{result['base']} on {result['data']}: mean over {result['seeds']} seed(s)",
           ["strategy", "target", "MACs", "x base", "matched", "params", "top-1 %", "min..max", "latency ms"],
           [[s["strategy"], f"{s['target']:g}x", _human(s["macs"]), f"{s['macs_ratio']:.3f}",
             "yes" if s["matched"] else "NO", _human(s["params"]), f"{s['top1_mean']:.2f}",
             f"{s['top1_min']:.2f}..{s['top1_max']:.2f}", f"{s['latency_ms']:.2f}"] for s in result["summary"]])
    print(f"report: {result['report']}")


def _dense_study(args) -> None:
    from .search.dense_study import METRICS, DenseStudyConfig, run_dense_study

    if args.phi is not None or any(getattr(args, k) is not None for k in ("alpha", "beta", "gamma")):
        raise EffscaleError(f"--task {args.task}: the study's base is --model (e.g. efficientdet@-3,max_level=5); "
                            "--phi / --alpha / --beta / --gamma are for the classification study")
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip()) if args.strategies else None
    result = run_dense_study(DenseStudyConfig(
        task=args.task, data=args.data, out=args.out, model=args.model,
        targets=tuple(_numbers(args.targets or "2", "--targets")), seeds=args.seeds, epochs=args.epochs,
        strategies=strategies, command=_command_line(args)))
    if args.json:
        return _print_json(result)
    metrics = METRICS[args.task]
    _table(f"{result['task']} study, base {result['base']} on {result['data']}: mean over {result['seeds']} seed(s)",
           ["strategy", "target", "MACs", "x base", "matched", "input"] + [m.replace("test_", "") for m in metrics],
           [[s["strategy"], f"{s['target']:g}x", _human(s["macs"]), f"{s['macs_ratio']:.3f}",
             "yes" if s["matched"] else "NO", str(s["resolution"])]
            + [f"{s[m + '_mean']:.2f} ({s[m + '_min']:.2f}..{s[m + '_max']:.2f})" for m in metrics]
            for s in result["summary"]])
    print(f"report: {result['report']}")


def _counts_arg(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of image counts; allowed: integers >= 1, "
                                         "comma-separated, e.g. 10,100,1000")
    return values


def _epsilons_arg(text: str) -> tuple[float, ...]:
    values = []
    for part in text.split(","):
        number, slash, denominator = part.strip().partition("/")
        try:
            value = float(number) / (float(denominator) if slash else 1.0)
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not an epsilon; allowed: numbers in [0, 1] or "
                                             "N/255, comma-separated") from None
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"epsilon {part.strip()!r} is outside [0, 1] (the [0, 1] pixel scale)")
        values.append(value)
    return tuple(values)


def cmd_analyze_robustness(args) -> None:
    from .analysis.robustness import EPSILONS
    from .search.robustness_study import analyze_robustness

    report = analyze_robustness(args.study, samples=args.samples, epsilons=args.epsilons or EPSILONS,
                                steps=args.steps, seed=args.seed, out=args.out, command=_command_line(args),
                                progress=not args.json)
    _show_study_analysis(report, args, "robustness.md")


def _show_study_analysis(report: dict, args, markdown_name: str) -> None:
    """A study analysis's report: JSON, or its markdown as written beside the study."""
    if args.json:
        return _print_json(report)
    print(Path(report["out"], markdown_name).read_text())


def cmd_analyze_representation(args) -> None:
    from .search.representation_study import analyze_representation

    report = analyze_representation(args.study, probe_sizes=args.probe_sizes, episodes=args.episodes,
                                    target=args.target, seed=args.seed, out=args.out, command=_command_line(args),
                                    progress=not args.json)
    _show_study_analysis(report, args, "representation.md")


def cmd_analyze_spectrum(args) -> None:
    from .analysis import run_spectrum
    from .analysis.report import REPORT_RESOLUTIONS

    report = run_spectrum(args.data, samples=args.samples, seed=args.seed, out=args.out,
                          command=_command_line(args), base_resolution=args.base_resolution)
    if args.json:
        return _print_json(report)
    _table("energy a model sees, by input resolution", ["source", "images", "slope"]
           + [f"{r} px" for r in REPORT_RESOLUTIONS] + ["95 % by", "99 % by", "knee"],
           [[r["source"], r["images"], f"{r['slope']:.2f}"] + [f"{r['kept'][k]:.1%}" for k in REPORT_RESOLUTIONS]
            + [f"{r['min_resolution']['95'] or '> 1024'} px", f"{r['min_resolution']['99'] or '> 1024'} px",
               f"{r['knee'] or '> 512'} px"] for r in report["sources"]])
    for r in report["sources"]:
        print(f"{r['source']}: {r['verdict']}")
    if args.out:
        print(f"report: {args.out}/report.md, spectrum.png, spectrum.json")


def cmd_demo(args) -> None:
    from .search import run_demo

    result = run_demo(args.out, quick=args.quick, latency_ms=args.latency_ms, device=args.device,
                      progress=not args.json, time_budget_s=args.time_budget, ship=not args.no_ship)
    if args.json:
        return _print_json(result)
    rule, chosen = result["rule"], result["chosen"]
    verdict = "under" if chosen["fits"] else "picked for"
    print(f"found alpha={rule['alpha']:g} beta={rule['beta']:g} gamma={rule['gamma']:.4g}; {verdict} "
          f"{result['latency_budget_ms']:g} ms: {chosen['name']} ({_human(chosen['macs'])} MACs, "
          f"{chosen['remeasured_ms']:.2f} ms, top-1 {chosen['top1']:.2f} %)"
          + ("" if chosen["fits"] else "; re-measured OVER the budget: latency moved on this machine "
                                      "since the study measured it (see the report)"))
    shipped = result.get("shipped") or {}
    if "accuracy" in shipped:
        accuracy = shipped["accuracy"]
        print(f"INT8 ({shipped['runtime']}): drop {accuracy['drop']:.2f} top-1 points, speed-up over fp32 "
              + ", ".join(f"{r['speedup']:.2f}x at batch {r['batch']}" for r in shipped["timings"])
              + f": {shipped['int8_dir']}")
    print(f"weights: {result['weights']}\nreport:  {result['report']}")


def _numbers(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EffscaleError(f"{option} {text!r} must be comma-separated numbers, e.g. 2,4,8") from None


def cmd_profile(args) -> None:
    from .hardware import load_profile, run_profile

    if args.show:
        profile, path = load_profile(args.show), args.show
    else:
        check_writable_file(args.out, "--out")
        profile = run_profile(threads=args.threads, precision=args.precision, quick=args.quick,
                              progress=not args.json, strict=args.strict, runtime=args.runtime, _tiny=args.tiny)
        path = profile.save(args.out)
    if args.json:
        return _print_json(profile.to_dict())
    layout = "channels_last" if profile.channels_last else "NCHW"
    if profile.runtime != "torch":
        layout = f"{profile.runtime} {profile.machine.get('runtime_version', '')}, float ops " \
                 f"{profile.machine.get('float_ops', '?')}"
    print(f"{path}: {profile.machine['cpu']}, {profile.threads} thread(s), {profile.precision}, "
          f"{layout} | peak {_human(profile.peak_flops, 'FLOP/s')} | "
          f"bandwidth {_human(profile.bandwidth, 'B/s')} | {len(profile.layers)} layer units")
    fits = profile.member_fits()
    methods = list(fits[0]["predicted_ms"])
    _table("whole networks: measured median and fitted predictions (ms)",
           ["network", "resolution", "MACs", "measured"] + methods,
           [[f["name"], f["resolution"], _human(f["macs"]), f"{f['measured_ms']:.2f}"]
            + [f"{f['predicted_ms'][m]:.2f}" for m in methods] for f in fits])


def cmd_plan(args) -> None:
    from .hardware import load_profile
    from .hardware.plan import plan
    from .zoo import resolve_image_spec

    profile = load_profile(args.device)
    result = plan(profile, latency_ms=args.latency_ms, memory_mb=args.memory_mb, energy_mj=args.energy_mj,
                  sustained=args.sustained, batch=args.batch, free_coefficients=args.free_coefficients,
                  accuracy=args.accuracy_from, base=resolve_image_spec(args.base), rule=_rule(args),
                  verify=not args.no_verify, anchor=not args.no_anchor,
                  method=args.method, spec_out=args.spec_out, export_dir=args.export,
                  progress=not args.json and sys.stderr.isatty()).to_dict()
    if args.json:
        return _print_json(result)
    verdict = {True: "fits (measured)", False: "does NOT fit when measured", None: "not verified"}[result["fits"]]
    print(f"{result['name']}: {result['resolution']} px, {_human(result['params'])} params, "
          f"{_human(result['macs'])} MACs, coefficients "
          + ", ".join(f"{k} {v:.3g}" for k, v in result["coefficients"].items()) + f" -- {verdict}")
    budget, measured = result["budgets"], result["measured_ms"]
    rows = [["latency (batch %d)" % budget["batch"], f"{budget['latency_ms']:g} ms" if budget["latency_ms"] else "-",
             f"{result['predicted_ms']:.3g} ms", f"{measured:.3g} ms" if measured is not None else "-"],
            ["peak memory", f"{budget['memory_mb']:g} MB" if budget["memory_mb"] else "-",
             f"{result['memory_mb']:.1f} MB", "-"],
            ["energy per call", f"{budget['energy_mj']:g} mJ" if budget["energy_mj"] else "-",
             f"{result['energy_mj']:.3g} mJ ({result['energy_method']})", "-"]]
    if result["sustained"]:
        heat = result["sustained"]  # from the measured latency when there is one
        text = f"{heat['final_ms']:.3g} ms" + (f", throttles after {heat['time_to_throttle_s']:.0f} s"
                                               if heat["throttles"] else ", no throttling")
        rows.append([f"sustained ({heat['preset']}, {heat['duration_s']:g} s)", f"{budget['latency_ms']:g} ms"]
                    + (["-", text] if measured is not None else [text, "-"]))
    if result["expected_top1"] is not None:
        rows.append(["expected top-1", "-", f"{result['expected_top1']:.2f} %", "-"])
    _table("budgets", ["budget", "limit", "this model (predicted)", "measured"], rows)
    if len(result["attempts"]) > 1:
        _table("verification attempts", ["model", "MACs", "predicted ms", "measured ms", "fits"],
               [[a["name"], _human(a["macs"]), f"{a['predicted_ms']:.3g}", f"{a['measured_ms']:.3g}",
                 "yes" if a["fits"] else "no"] for a in result["attempts"]])
    if result["anchor"]:
        anchor = result["anchor"]
        print("predictions re-anchored x{:.3f}: ".format(anchor["factor"])
              + ", ".join(f"{m['name']} {m['measured_ms']:.3g} ms now vs {m['profiled_ms']:.3g} ms profiled"
                          for m in anchor["members"]))
    if result["export"]:
        shipped = result["export"]
        parity = shipped["parity"]
        print(f"shipped to {shipped['dir']}: {shipped['runtime']} {shipped['precision']} (float ops "
              f"{shipped['inference_precision'] or 'fp32'}), fp32 export parity max rel {parity['max_rel']:.2g}, "
              f"measured "
              f"{shipped['measured_ms']:.3g} ms -- {'fits' if shipped['fits'] else 'OVER the budget'}")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"train it: {result['train_command']}")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="effscale", description="EfficientNet and compound model scaling.")
    parser.add_argument("--version", action="version", version=f"effscale {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    models = commands.add_parser("models", help="list the named models with their analytic cost")
    models.add_argument("--json", action="store_true", help="print JSON rows")
    models.set_defaults(func=cmd_models)

    info = commands.add_parser("info", help="show a (scaled) spec, its cost and optionally its layers")
    info.add_argument("model", help="a model name (see `effscale models`), a spec text file or an effscale "
                                    ".safetensors file")
    group = info.add_argument_group("compound scaling")
    group.add_argument("--phi", type=float, help="compound coefficient (any finite value; negative scales down)")
    group.add_argument("--alpha", type=float, help="depth base of the rule (default 1.2)")
    group.add_argument("--beta", type=float, help="width base of the rule (default 1.1)")
    group.add_argument("--gamma", type=float, help="resolution base of the rule (default 1.15)")
    group = info.add_argument_group("explicit multipliers (instead of --phi)")
    group.add_argument("--width", type=float, help="channel multiplier")
    group.add_argument("--depth", type=float, help="repeat multiplier")
    group.add_argument("--resolution", type=float, help="resolution multiplier (rounded to a multiple of 8 px)")
    info.add_argument("--image-size", type=int, help="set the input resolution in pixels after scaling")
    info.add_argument("--layers", action="store_true", help="per-layer table")
    group = info.add_argument_group("roofline")
    group.add_argument("--roofline", action="store_true",
                       help="each layer's arithmetic intensity against the device's ridge point, memory- or "
                            "compute-bound, and the bytes fused depthwise + pointwise pairs would save")
    group.add_argument("--device", help="a device profile (effscale profile) for the peaks; default: measure now")
    group.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                       help="bytes per element (and peaks measured now) without --device (default fp32)")
    group.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    info.add_argument("--num-classes", type=int, default=90,
                      help="detectors / segmenters: object classes (default 90, COCO's as the paper counts)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    predict = commands.add_parser("predict", help="classify images with a checkpoint")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--model", help="model name; needed for checkpoints that do not carry their spec "
                                         "(timm, torchvision, lukemelas layouts)")
    predict.add_argument("--weights", required=True, help="an effscale .safetensors file, an exported artifact "
                                                           "directory or a foreign checkpoint")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--runtime", choices=RUNTIMES,
                         help="for an exported artifact directory: the runtime to run it on (default: its own)")
    predict.add_argument("--out", help="detector / segmenter weights: folder for the drawings (default predictions)")
    predict.add_argument("--score-threshold", type=float, default=0.3,
                         help="detector: draw and list detections above this score (default 0.3)")
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.set_defaults(func=cmd_predict)

    dense = commands.add_parser("make-dense-task", help="write the bundled detection / segmentation task (COCO JSON "
                                                        "+ mask PNGs of Fashion-MNIST objects on textures)")
    dense.add_argument("out", help="directory to write (train/ and test/ with images, masks, instances.json)")
    dense.add_argument("--train-images", type=int, default=800)
    dense.add_argument("--test-images", type=int, default=200)
    dense.add_argument("--size", type=int, default=128, help="scene side in pixels (default 128)")
    dense.add_argument("--seed", type=int, default=0)
    dense.add_argument("--json", action="store_true")
    dense.set_defaults(func=cmd_make_dense_task)

    train = commands.add_parser("train", help="train a model on a dataset (CPU by default; torchrun for DDP)")
    train.add_argument("--data", required=True, help="fashion-mnist (bundled), idx:DIR or folder:DIR; dense tasks: "
                                                      "coco:DIR, coco:ANNOTATIONS.json,IMAGES_DIR or masks:DIR")
    train.add_argument("--task", default="classification",
                       choices=["classification", "detection", "segmentation", "multitask"],
                       help="detection / segmentation / multitask train a dense model (--model efficientdet@PHI, "
                            "efficientdet_d0..d7x, segmenter@PHI or multitask@PHI; default phi -3 at 128 px)")
    train.add_argument("--loss-weights", type=_weights_arg, default=(1.0, 1.0), metavar="MASKS,IMAGE",
                       help="multitask: weights of the mask loss and the image classification loss (default 1,1)")
    train.add_argument("--scale-jitter", type=_weights_arg, metavar="LO,HI",
                       help="detection / segmentation: zoom each training image by a random factor in [LO, HI] "
                            "(crop or pad; boxes and masks follow), e.g. 0.75,1.33")
    train.add_argument("--box-loss", default="huber", choices=["huber", "giou"], help="detection box loss")
    train.add_argument("--mask-loss", default="ce", choices=["ce", "ce+dice"], help="segmentation loss")
    train.add_argument("--out", required=True, help="run directory: checkpoint, metrics.jsonl, summary.json, weights")
    train.add_argument("--recipe", default="quick", help="quick (minutes on a CPU) or paper (the published recipe)")
    train.add_argument("--model", help="model name or spec file (default: the recipe's model)")
    train.add_argument("--phi", type=float, help="compound-scale the model by phi")
    train.add_argument("--epochs", type=int)
    train.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    train.add_argument("--batch-size", type=int, help="global batch per optimizer step")
    train.add_argument("--lr", type=float, help="base learning rate (default: the recipe's, scaled to the batch)")
    train.add_argument("--ema", type=float, dest="ema_decay", metavar="DECAY",
                       help="keep an exponential moving average of the weights with this decay and evaluate and "
                            "save it (e.g. 0.99 for runs of a few thousand steps; 0: off; default: the recipe's)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--precision", choices=["auto", "bf16", "fp32", "fp16"],
                       help="auto: bf16 where the CPU/GPU computes it natively, else fp32 (the paper recipe's "
                            "default; the quick recipe trains in fp32)")
    train.add_argument("--checkpoint-every", type=int, help="also checkpoint every N optimizer steps")
    train.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    train.add_argument("--init", help="start from these weights (effscale file, run dir, or foreign checkpoint)")
    train.add_argument("--teacher", help="distil from this effscale model (weights file or run dir)")
    train.add_argument("--linear-probe", action="store_true", help="train only the classifier")
    train.add_argument("--accumulation", type=int, default=1, help="gradient accumulation micro-batches")
    train.add_argument("--grad-checkpointing", action="store_true", help="recompute activations per stage")
    train.add_argument("--distill-alpha", type=float, default=0.5, help="weight of the distillation term")
    train.add_argument("--distill-temperature", type=float, default=4.0)
    train.add_argument("--threads", type=_threads_arg, default=None, metavar="N|auto",
                       help="CPU threads; auto (default): all cores, fewer while other processes keep some busy")
    train.add_argument("--qat", action="store_true",
                       help="quantization-aware fine-tune of --init (INT8 rounding simulated; default lr a tenth of "
                            "the recipe's), then quantize it into OUT/int8 with the accuracy measured")
    train.add_argument("--json", action="store_true", help="print the summary as JSON")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix")
    evaluate.add_argument("weights", help="a run directory, an effscale .safetensors file or an exported artifact")
    evaluate.add_argument("--data", required=True, help="fashion-mnist, idx:DIR or folder:DIR (its test split); "
                                                         "detectors / segmenters: coco:... or masks:...")
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--runtime", choices=RUNTIMES,
                          help="for an exported artifact directory: the runtime to run it on (default: its own)")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_eval)

    export = commands.add_parser("export", help="export to ONNX or OpenVINO IR with a manifest, parity-checked")
    export.add_argument("source", help="an effscale .safetensors file, a run directory, a foreign checkpoint "
                                       "(with --model), or a model name (random weights)")
    export.add_argument("--format", choices=FORMATS, default="onnx")
    export.add_argument("--out", required=True, help="the artifact directory to create (must not exist)")
    export.add_argument("--model", help="model name for a foreign checkpoint (timm, torchvision, lukemelas)")
    export.add_argument("--json", action="store_true", help="print the manifest as JSON")
    export.set_defaults(func=cmd_export)

    quantize = commands.add_parser("quantize", help="post-training INT8 (ONNX QDQ or OpenVINO NNCF), calibrated on your data, "
                                                    "with the accuracy it costs")
    quantize.add_argument("source", help="an effscale .safetensors file or a run directory (as for export)")
    quantize.add_argument("--out", required=True, help="the INT8 artifact directory to create (must not exist)")
    quantize.add_argument("--calib", help="calibration and held-out data: fashion-mnist, idx:DIR or folder:DIR "
                                          "(default: the data the weights were trained on)")
    quantize.add_argument("--format", choices=FORMATS, default="onnx",
                          help="onnx: ONNX Runtime's QDQ quantizer (runs on onnxruntime and openvino); openvino: "
                               "NNCF on the OpenVINO IR (the faster INT8 on OpenVINO)")
    quantize.add_argument("--weights-only", action="store_true",
                          help="with --format openvino: INT8 weights (depthwise included), float activations "
                               "(bf16 where the CPU has it natively)")
    quantize.add_argument("--samples", type=int, default=300, help="calibration images (default 300)")
    quantize.add_argument("--analyze", action="store_true", help="SQNR of every quantized tensor, worst first")
    quantize.add_argument("--plot", metavar="PNG", help="with --analyze: plot the SQNR by depth to this file "
                                                        "(needs the lab extra's matplotlib)")
    quantize.add_argument("--max-drop", type=float, help="keep the worst layers in float until the held-out top-1 "
                                                         "drop is at most this many points")
    quantize.add_argument("--model", help="model name for a foreign checkpoint")
    quantize.add_argument("--json", action="store_true", help="print the manifest as JSON")
    quantize.set_defaults(func=cmd_quantize)

    search = commands.add_parser("search", help="search alpha, beta, gamma on your base and data (Optuna)")
    search.add_argument("--model", required=True, help="base: effscale_lab, a model name, a spec file or a series "
                                                       "model (series_b0)")
    search.add_argument("--phi", type=float, help="compound-scale the base by phi first (EfficientNet rule)")
    search.add_argument("--data", required=True, help="fashion-mnist, idx:DIR, folder:DIR or synthetic-series")
    search.add_argument("--target", type=float, default=2.0, help="alpha*beta^2*gamma^2 (FLOPs per unit phi; "
                                                                 "default 2)")
    search.add_argument("--budget", default="quick", help="proxy training per candidate: tiny, short, quick, "
                                                          "standard")
    search.add_argument("--sampler", default="grid", help="grid (the paper's) or tpe (Optuna; needs --trials)")
    search.add_argument("--trials", type=int, help="complete trials wanted (tpe)")
    search.add_argument("--alpha-grid", help="START:STOP:STEP or a list (default by budget)")
    search.add_argument("--beta-grid", help="START:STOP:STEP or a list (default by budget)")
    search.add_argument("--storage", help="Optuna storage URL (default: sqlite in --out); share it to run "
                                          "several workers on one study")
    search.add_argument("--study-name", help="Optuna study name (default from base, target, budget)")
    search.add_argument("--spectrum", metavar="REPORT",
                        help="a spectrum report of --data (effscale analyze spectrum --out DIR): gamma is kept at "
                             "least at what the data's 95 %% energy resolution asks of the base")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--out", required=True, help="output directory (search.json; search.db by default)")
    search.add_argument("--json", action="store_true")
    search.set_defaults(func=cmd_search)

    study = commands.add_parser("study", help="compound vs depth/width/resolution-only scaling at matched MACs")
    study.add_argument("--task", default="classification",
                       choices=["classification", "detection", "segmentation", "multitask"],
                       help="dense tasks: strategies at matched MACs of the whole model (detection adds EfficientDet's "
                            "joint rule), multitask compares resolution- vs width-biased rules")
    study.add_argument("--model", help="base (as for search; required for classification; dense tasks default to "
                                       "the task's phi -3 model)")
    study.add_argument("--phi", type=float, help="compound-scale the base by phi first")
    study.add_argument("--data", required=True, help="fashion-mnist, idx:DIR, folder:DIR or synthetic-series")
    study.add_argument("--targets", help="FLOPs multiples of the base (default 2,4,8; dense tasks 2)")
    study.add_argument("--seeds", type=int, default=1, help="seeds per model (spread is reported)")
    study.add_argument("--epochs", type=int, default=12, help="dense tasks: epochs per model (default 12)")
    study.add_argument("--budget", default="quick", help="tiny, short, quick or standard")
    study.add_argument("--strategies", help="default compound,depth,width,resolution (dense: all of the task's)")
    study.add_argument("--alpha", type=float, help="compound rule (default EfficientNet's 1.2)")
    study.add_argument("--beta", type=float, help="default 1.1")
    study.add_argument("--gamma", type=float, help="default 1.15")
    study.add_argument("--out", required=True, help="results.json(l), report.md, PNG plots")
    study.add_argument("--no-weights", action="store_true",
                       help="do not keep the trained models (out/models/STRATEGY-TARGETx-sSEED.safetensors, "
                            "which `effscale analyze robustness` reads)")
    study.add_argument("--json", action="store_true")
    study.set_defaults(func=cmd_study)

    analyze = commands.add_parser("analyze", help="analyses beyond accuracy: robustness and representations of a "
                                                  "study's models, the spectrum of your data")
    analyses = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    spectrum = analyses.add_parser("spectrum", help="power spectrum of a data set and the input resolution it calls for")
    spectrum.add_argument("--data", action="append", required=True, metavar="SOURCE",
                          help="fashion-mnist, idx:DIR, folder:DIR, images:DIR, coco:DIR, masks:DIR, skimage:photos, "
                               "skimage:textures or textures (generated); repeat to compare sources")
    spectrum.add_argument("--samples", type=int, default=500, help="images per source, drawn with --seed (default 500)")
    spectrum.add_argument("--seed", type=int, default=0)
    spectrum.add_argument("--base-resolution", type=int, default=224,
                          help="input of the model you scale from, for the verdict (default 224, B0's)")
    spectrum.add_argument("--out", help="write spectrum.json, report.md and spectrum.png here")
    spectrum.add_argument("--json", action="store_true")
    spectrum.set_defaults(func=cmd_analyze_spectrum)

    robust = analyses.add_parser("robustness", help="FGSM / PGD attack success, margins and input gradients of "
                                                     "every model a study trained")
    robust.add_argument("study", metavar="STUDY_DIR", help="a study's --out (its kept weights in models/)")
    robust.add_argument("--samples", type=int, default=250, help="test images, drawn with --seed (default 250)")
    robust.add_argument("--epsilons", type=_epsilons_arg, default=None, metavar="E1,E2,...",
                        help="L-infinity radii on the [0, 1] pixel scale, as numbers or N/255 "
                             "(default 1/255,2/255,4/255)")
    robust.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    robust.add_argument("--seed", type=int, default=0)
    robust.add_argument("--out", help="report directory (default STUDY_DIR/robustness)")
    robust.add_argument("--json", action="store_true")
    robust.set_defaults(func=cmd_analyze_robustness)

    represent = analyses.add_parser("representation", help="linear probes, few-shot and class geometry of the "
                                                           "frozen features of every model a study trained")
    represent.add_argument("study", metavar="STUDY_DIR", help="a study's --out (its kept weights in models/)")
    represent.add_argument("--probe-sizes", type=_counts_arg, default=(10, 100, 1000),
                           metavar="N1,N2,...", help="training images per class for the linear probes "
                                                     "(default 10,100,1000)")
    represent.add_argument("--episodes", type=int, default=600, help="few-shot episodes (default 600)")
    represent.add_argument("--target", type=float, help="5-way 1-shot accuracy to reach, e.g. 0.4: the report names "
                                                        "the smallest model of each strategy that does")
    represent.add_argument("--seed", type=int, default=0)
    represent.add_argument("--out", help="report directory (default STUDY_DIR/representation)")
    represent.add_argument("--json", action="store_true")
    represent.set_defaults(func=cmd_analyze_representation)

    demo = commands.add_parser("demo", help="search, family, comparison, latency pick, weights, report (minutes)")
    demo.add_argument("--quick", action="store_true", help="smaller grid and budget (about 3 minutes on 2 cores)")
    demo.add_argument("--out", help="output directory (default effscale-demo or effscale-demo-quick)")
    demo.add_argument("--latency-ms", type=float, help="latency budget (default: 2x the base model's here)")
    demo.add_argument("--device", help="a profile from `effscale profile`: plan the latency step with it (predict, "
                                       "then measure) instead of timing the trained family only")
    demo.add_argument("--time-budget", type=float, metavar="SECONDS",
                      help="finish within this many seconds: the demo times this machine first and scales its "
                           "proxy budget and targets down to fit (default 600, --quick 120)")
    demo.add_argument("--no-ship", action="store_true",
                      help="skip the last step (the chosen model exported fp32 and INT8, accuracy drop and speed-up)")
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(func=cmd_demo)

    profile = commands.add_parser("profile", help="measure this machine for latency prediction (device.json)")
    profile.add_argument("--out", default="device.json", help="where to write the profile (default device.json)")
    profile.add_argument("--threads", type=int, help="torch threads to measure with (default: torch's default)")
    profile.add_argument("--runtime", choices=["torch", "openvino", "onnxruntime"], default="torch",
                         help="what to profile: eager torch (default), or the deploy runtime with models built as "
                              "they ship (exported, INT8-quantized; needs the export extra)")
    profile.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                         help="torch: fp32, bf16; openvino: fp32, bf16, int8; onnxruntime: fp32, int8")
    profile.add_argument("--quick", action="store_true",
                         help="fewer shapes and repeats (< 3 minutes, torch or a deploy runtime)")
    profile.add_argument("--show", metavar="PATH", help="validate and summarise a saved profile instead of measuring")
    profile.add_argument("--strict", action="store_true",
                         help="refuse (exit 2, nothing saved) when other processes disturb the measurement, "
                              "instead of warning and recording it in the profile")
    profile.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-sized, for the test suite
    profile.add_argument("--json", action="store_true", help="print the profile JSON (no progress bar)")
    profile.set_defaults(func=cmd_profile)

    plan = commands.add_parser("plan", help="the most accurate model that fits latency / memory / energy budgets "
                                            "on a profiled device")
    plan.add_argument("--device", required=True, help="a profile from `effscale profile` (device.json)")
    plan.add_argument("--latency-ms", type=float, help="latency budget per call (ms)")
    plan.add_argument("--memory-mb", type=float, help="peak inference memory budget (MB, 10^6 bytes)")
    plan.add_argument("--energy-mj", type=float, help="energy budget per call (mJ)")
    plan.add_argument("--sustained", metavar="PRESET[,key=value...]",
                      help="hold the latency budget after continuous inference under a thermal model: phone, "
                           "laptop or a JSON file, with overrides (e.g. phone,power_w=3,duration_s=1800)")
    plan.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    plan.add_argument("--free-coefficients", action="store_true",
                      help="search any depth/width/resolution instead of compound scaling's phi")
    plan.add_argument("--accuracy-from", metavar="RESULTS_JSON",
                      help="a study's results.json: plan by expected top-1 fitted to its rows")
    plan.add_argument("--base", default="efficientnet_b0", help="model name or spec file to scale (default B0)")
    plan.add_argument("--alpha", type=float, help="compound rule to scale the base with (default 1.2; e.g. "
                                                  "from `effscale search`)")
    plan.add_argument("--beta", type=float, help="default 1.1")
    plan.add_argument("--gamma", type=float, help="default 1.15")
    plan.add_argument("--method", choices=["lut", "affine", "roofline"],
                      help="latency predictor (default: lut, the per-layer table corrected by the whole networks "
                           "measured; affine and roofline are simpler fits)")
    plan.add_argument("--no-verify", action="store_true", help="do not measure the chosen model")
    plan.add_argument("--no-anchor", action="store_true",
                      help="predict at the profile's saved level instead of re-timing two of its networks first "
                           "(a second or two) to predict at this machine's level now")
    plan.add_argument("--spec-out", metavar="FILE", help="write the chosen spec text here (for the train command)")
    plan.add_argument("--export", metavar="DIR",
                      help="ship the chosen model to DIR for the profile's runtime and precision (export, quantize, "
                           "parity check, measure); needs a runtime profile (profile --runtime)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=cmd_plan)
    return parser


class _WarningLines:
    """Warnings on the command line: `effscale: warning: <message>` on stderr, once per message,
    without the source path and line number Python prints (from Python they stay warnings)."""

    def __enter__(self):
        import warnings

        self._saved = warnings.catch_warnings()
        self._saved.__enter__()
        self._seen: set[str] = set()
        warnings.showwarning = self._show
        return self

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
        if text not in self._seen:
            self._seen.add(text)
            print(f"effscale: warning: {text}", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        return self._saved.__exit__(*exc)


def _interrupted(args) -> str:
    """What Ctrl-C leaves behind and how to continue, for the command that was running."""
    if args.command == "train":
        from pathlib import Path

        from .train.checkpoint import CHECKPOINT_NAME

        checkpoint = Path(args.out) / CHECKPOINT_NAME
        if not checkpoint.is_file():
            return "interrupted before the first checkpoint; run the same command again to start over"
        resume = () if args.resume else ("--resume",)
        return f"interrupted; the last checkpoint {checkpoint} is kept. Continue with: {_command_line(args, *resume)}"
    if args.command in ("search", "study", "demo"):
        return f"interrupted; finished work is kept. Resume with the same command: {_command_line(args)}"
    return "interrupted"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    with _WarningLines():
        try:
            args.func(args)
        except EffscaleError as error:
            # API messages may list details on several lines; the command line prints one.
            message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            print(f"effscale: error: {message}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"effscale: {_interrupted(args)}", file=sys.stderr)
            return 130
        except (MemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            print(f"effscale: error: out of memory ({first}); use a smaller --batch-size (or a smaller model / "
                  "resolution)", file=sys.stderr)
            return 2
        except BrokenPipeError:  # `effscale models | head`
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
