"""`clr`: the range test and cyclical-LR training from a shell, on the same code the service runs.

Every field of the job specs is a flag (`--max-lr auto`, `--optimizer-momentum 0.95`,
`--range-test-num-iter 200`), generated from the pydantic models so the CLI and the API never drift.
With no flags, `clr train` runs the embedded default: the `digits-demo` preset, offline, on the CPU.
Spec flags given without --dataset or --preset change that default rather than replace it:
`clr train --epochs 5` trains digits-demo for 5 epochs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from clrcore import catalog
from clrcore.presets import PRESETS
from clrcore.specs import RangeTestSpec, TrainSpec

DEFAULT_PRESET = "digits-demo"
NESTED = "__"  # dest separator for nested spec fields (optimizer__momentum)
EPILOGS = {
    "train": f"Without --dataset or --preset, training starts from the {DEFAULT_PRESET} preset and the\n"
             "spec flags change it: `clr train --epochs 5` trains digits-demo for 5 epochs.\n"
             "With --max-lr auto the range test runs first; unless you set --step-size, --step-unit or\n"
             "--epochs (a preset's values count as set), its recipe picks them so the run ends on a\n"
             "cycle minimum.",
    "range-test": "Prints each suggestion, the recommended bounds and the whole recipe (policy, base and\n"
                  "max LR, step size in iterations and epochs, epochs), the rules' spread in decades and\n"
                  "the low-confidence flag.",
}


def _model_class(annotation: Any) -> type[BaseModel] | None:
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def add_spec_flags(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "") -> None:
    """One flag per spec field (nested models flattened with dashes); values are validated by pydantic."""
    for name, field in model.model_fields.items():
        if name == "kind":
            continue
        nested = _model_class(field.annotation)
        if nested is not None:
            add_spec_flags(parser, nested, f"{prefix}{name}{NESTED}")
            continue
        flag = "--" + f"{prefix}{name}".replace(NESTED, "-").replace("_", "-")
        default = field.default if field.default is not None else "none"
        boolean = field.annotation is bool
        parser.add_argument(flag, dest=f"{prefix}{name}", default=argparse.SUPPRESS,
                            nargs="?" if boolean else None, const="true" if boolean else None,
                            metavar="BOOL" if boolean else "VALUE",
                            help=f"{field.description or ''} (default: {default})".strip().replace("%", "%%"))


def spec_from_args(args: argparse.Namespace, model: type[BaseModel]) -> Any:
    """Nest the flat flag values and validate them with the spec model."""
    data: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest.startswith("_") or dest in ("command", "out", "data_dir", "download", "quiet", "verbose",
                                            "weights_file"):
            continue
        *parents, leaf = dest.split(NESTED)
        target = data
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = None if value == "none" else value
    implicit = model is TrainSpec and "dataset" not in data and "preset" not in data
    if implicit:
        data = {"preset": DEFAULT_PRESET, **data}  # tweaks of the embedded default, not of bare TrainSpec
    if implicit and "epochs" in data and not {"step_size", "step_unit", "recipe_fields"} & data.keys():
        # other epochs than the default's: its step would end the run mid-cycle, so the step is
        # left to the fit to the epochs (runs._apply_recipe), as if the preset had not set it
        data["recipe_fields"] = ["step_size"]
    return model.model_validate(data)


def local_dataset_path(args: argparse.Namespace) -> None:
    """A local command may read any file: an absolute --dataset-path becomes --data-dir (its folder)
    plus its name, so the API's rule (relative to the data directory) does not reach the shell."""
    path = getattr(args, "dataset_path", None)
    if path and path != "none" and Path(path).expanduser().is_absolute():
        full = Path(path).expanduser()
        args.data_dir, args.dataset_path = str(full.parent), full.name


def _flag_name(loc: tuple) -> str:
    return "--" + "-".join(str(p) for p in loc if not str(p).isdigit()).replace("_", "-")


class _Bars:
    """tqdm bars fed by the run's progress callback: one bar per phase."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.phase = enabled, None
        self.bar: Any = None  # a tqdm bar once a phase starts

    def __call__(self, progress: Any) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if progress.phase == "eval":
            return
        if progress.phase != self.phase:
            self.close()
            self.phase = progress.phase
            self.bar = tqdm(total=progress.steps, desc=progress.phase, unit="step", leave=True)
        self.bar.n = progress.step
        shown = {k: f"{v:.4g}" for k, v in progress.metrics.items() if isinstance(v, int | float)}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run(args: argparse.Namespace, model: type[BaseModel]) -> int:
    local_dataset_path(args)
    try:
        spec = spec_from_args(args, model)
    except ValidationError as exc:
        for err in exc.errors():
            print(f"clr: {_flag_name(err['loc'])}: {err['msg']}", file=sys.stderr)
        return 2
    from clrcore.datasets import DatasetError
    from clrcore.hooks import Hooks, StopRequested, TrainingDiverged
    from clrcore.runs import run_job

    kind = "train" if model is TrainSpec else "range-test"
    out = Path(args.out or Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    bars = _Bars(not args.quiet and sys.stderr.isatty())
    try:
        summary = run_job(spec, out, data_dir=Path(args.data_dir), download=args.download,
                          hooks=Hooks(on_progress=bars), weights_file=args.weights_file)
    except KeyboardInterrupt:
        print(f"\nclr: stopped; run `clr {kind}` again with --out {out} to resume", file=sys.stderr)
        return 130
    except (DatasetError, TrainingDiverged, StopRequested, ValueError, OSError) as exc:
        print(f"clr: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        bars.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    _print_summary(summary, out)
    return 0


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    if summary["kind"] == "range_test":
        rec = summary.get("recommendation") or {}
        print(f"stopped: {summary['stop_reason']}")
        for name, lr in summary["suggestions"].items():
            print(f"  {name:<16} {lr:.3g}" if lr else f"  {name:<16} -")
        if rec:
            print(f"recommended: base_lr {rec['base_lr']:.3g}, max_lr {rec['max_lr']:.3g} ({rec['rule']})")
        if summary.get("recipe"):
            print(_recipe_line(summary["recipe"]))
        spread = summary.get("spread_decades")
        print(f"spread: {'-' if spread is None else f'{spread:.2f}'} decades; "
              f"low confidence: {'yes' if summary['low_confidence'] else 'no'}")
        for warning in summary["warnings"]:
            print(f"warning: {warning}")
    else:
        report = out / "report.txt"
        if report.exists():
            print(report.read_text())
        print(f"accuracy {summary['accuracy']:.4f}; lr {summary['base_lr']:.3g}..{summary['max_lr']:.3g} "
              f"({summary['lr_choice']['source']}); {summary['seconds']:.1f} s")
        if summary["lr_choice"]["source"] == "safe_fallback":
            print(f"no rule could pick from the range test; trained with the {summary['lr_choice']['rule']}")
        if summary.get("from_recipe"):
            print("from the range test's recipe: "
                  + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in summary["from_recipe"].items()))
        for warning in summary.get("warnings", []):
            print(f"warning: {warning}")
    print(f"run folder: {out}")


def _recipe_line(plan: dict[str, Any]) -> str:
    """The recipe in one line: policy, bounds, step size (iterations and epochs) and epochs."""
    parts = [f"recipe: policy {plan['policy']}, base_lr {plan['base_lr']:.3g}, max_lr {plan['max_lr']:.3g}"]
    if "step_size" in plan:
        parts.append(f"step_size {plan['step_size']} iterations ({plan['step_epochs']:g} epochs)")
        cycles = plan["cycles"]
        parts.append(f"epochs {plan['epochs']} ({cycles} cycle{'s' if cycles != 1 else ''})")
    else:
        parts.append(f"epochs {plan['epochs']}")
    return ", ".join(parts)


def _list(what: str) -> int:
    rows = {"presets": {k: v for k, v in PRESETS.items()},
            "datasets": {k: v.to_dict() for k, v in catalog.DATASETS.items()},
            "models": {k: v.to_dict() for k, v in catalog.MODELS.items()}}[what]
    print(json.dumps(rows, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, model, text in (("train", TrainSpec, "train with a cyclical LR schedule"),
                              ("range-test", RangeTestSpec, "run the LR range test")):
        p = sub.add_parser(name, help=text, description=text, epilog=EPILOGS[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--out", default=None, help="run folder (default runs/<command>-<time>)")
        p.add_argument("--data-dir", default=os.environ.get("CLR_DATA_DIR", "runs/data"),
                       help="where datasets live or are downloaded to")
        p.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--verbose", action="store_true", help="log per-epoch lines")
        p.add_argument("--weights-file", type=Path, default=None, metavar="PATH",
                       help="start from these safetensors weights for --model (checked; a head or stem of "
                       "another shape keeps the model's own); with --finetune-* the head is replaced")
        add_spec_flags(p, model)
        p.set_defaults(_model=model)
    for name in ("presets", "datasets", "models"):
        sub.add_parser(name, help=f"list the {name}")
    sub.add_parser("remote", add_help=False, help="submit and follow jobs on a clr service (clrclient): "
                   "`clr remote --help`")
    return parser


def _remote(argv: list[str]) -> int:
    """`clr remote` is the API client's command (clrclient, which builds on clrcore): loaded only when
    asked for, so `clr train` never needs httpx and clrcore never loads the client."""
    from clrclient.cli_remote import main as remote_main

    return remote_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["remote"]:
        return _remote(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command in ("presets", "datasets", "models"):
        return _list(args.command)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return _run(args, args._model)


if __name__ == "__main__":
    sys.exit(main())
