"""`effscale` command line: one thin function per command, each a call into the public API.

Bad input is one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import EffscaleError


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


def cmd_info(args) -> None:
    from .scaling import Coefficients, ScalingRule
    from .summary import describe, load_spec, scaled_spec

    rule = None
    if any(v is not None for v in (args.alpha, args.beta, args.gamma)):
        rule = ScalingRule(**{k: v for k, v in (("alpha", args.alpha), ("beta", args.beta), ("gamma", args.gamma))
                              if v is not None})
    coefficients = None
    if any(v is not None for v in (args.width, args.depth, args.resolution)):
        coefficients = Coefficients(**{k: v for k, v in (("width", args.width), ("depth", args.depth),
                                                         ("resolution", args.resolution)) if v is not None})
    spec = scaled_spec(load_spec(args.model), phi=args.phi, rule=rule, coefficients=coefficients,
                       image_size=args.image_size)
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


def cmd_predict(args) -> None:
    from .predict import predict_images

    results = predict_images(args.images, weights=args.weights, model=args.model, top_k=args.top_k)
    if args.json:
        return _print_json(results)
    for result in results:
        print(result["image"])
        for rank, entry in enumerate(result["top_k"], 1):
            print(f"  {rank}. {entry['label']:<30} {entry['prob']:7.2%}  (class {entry['index']})")


def cmd_train(args) -> None:
    from .train import TrainConfig, train

    options = {key: getattr(args, key) for key in (
        "data", "out", "recipe", "model", "phi", "epochs", "max_steps", "batch_size", "lr", "seed", "precision",
        "checkpoint_every", "resume", "init", "teacher", "linear_probe", "accumulation", "grad_checkpointing",
        "distill_alpha", "distill_temperature")}
    summary = train(TrainConfig(**options, command="effscale " + " ".join(sys.argv[1:])))
    if args.json:
        return _print_json(summary)
    print(f"test top-1 {summary['test_top1']:.2f} %, top-5 {summary['test_top5']:.2f} % | "
          f"params {_human(summary['params'])} | MACs {_human(summary['macs'])} | {summary['steps']} steps in "
          f"{summary['wall_s']:.0f} s | weights: {summary['weights']}")


def cmd_eval(args) -> None:
    from .train import evaluate_weights

    result = evaluate_weights(args.weights, args.data, batch_size=args.batch_size)
    if args.json:
        return _print_json(result)
    print(f"{result['weights']} on {result['data']}: top-1 {result['top1']:.2f} %, top-5 {result['top5']:.2f} % "
          f"({result['samples']} images)")
    classes = result["classes"]
    _table("per-class accuracy and confusion (rows: true, columns: predicted)",
           ["class", "accuracy %"] + [str(i) for i in range(len(classes))],
           [[f"{i} {name}", f"{result['per_class'][name]:.1f}"] + row
            for i, (name, row) in enumerate(zip(classes, result["confusion"]))])


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
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    predict = commands.add_parser("predict", help="classify images with a checkpoint")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--model", help="model name; needed for checkpoints that do not carry their spec "
                                         "(timm, torchvision, lukemelas layouts)")
    predict.add_argument("--weights", required=True, help="an effscale .safetensors file or a foreign checkpoint")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.set_defaults(func=cmd_predict)

    train = commands.add_parser("train", help="train a model on a dataset (CPU by default; torchrun for DDP)")
    train.add_argument("--data", required=True, help="fashion-mnist (bundled), idx:DIR or folder:DIR")
    train.add_argument("--out", required=True, help="run directory: checkpoint, metrics.jsonl, summary.json, weights")
    train.add_argument("--recipe", default="quick", help="quick (minutes on a CPU) or paper (the published recipe)")
    train.add_argument("--model", help="model name or spec file (default: the recipe's model)")
    train.add_argument("--phi", type=float, help="compound-scale the model by phi")
    train.add_argument("--epochs", type=int)
    train.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    train.add_argument("--batch-size", type=int, help="global batch per optimizer step")
    train.add_argument("--lr", type=float, help="base learning rate (default: the recipe's, scaled to the batch)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--precision", choices=["bf16", "fp32", "fp16"])
    train.add_argument("--checkpoint-every", type=int, help="also checkpoint every N optimizer steps")
    train.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    train.add_argument("--init", help="start from these weights (effscale file, run dir, or foreign checkpoint)")
    train.add_argument("--teacher", help="distil from this effscale model (weights file or run dir)")
    train.add_argument("--linear-probe", action="store_true", help="train only the classifier")
    train.add_argument("--accumulation", type=int, default=1, help="gradient accumulation micro-batches")
    train.add_argument("--grad-checkpointing", action="store_true", help="recompute activations per stage")
    train.add_argument("--distill-alpha", type=float, default=0.5, help="weight of the distillation term")
    train.add_argument("--distill-temperature", type=float, default=4.0)
    train.add_argument("--json", action="store_true", help="print the summary as JSON")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix")
    evaluate.add_argument("weights", help="a run directory or an effscale .safetensors file")
    evaluate.add_argument("--data", required=True, help="fashion-mnist, idx:DIR or folder:DIR (its test split)")
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EffscaleError as error:
        # API messages may list details on several lines; the command line prints one.
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"effscale: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `effscale models | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
