"""`clr remote`: submit jobs to a clr service and follow them from any shell.

    export CLR_API_URL=http://clr.internal:8000 CLR_API_KEY=secret
    clr remote submit --preset digits-demo --wait     # a live bar from the event stream, then the report
    clr remote list --state running
    clr remote plots JOB --out plots/

`submit` and `range-test` take the flags of `clr train` and `clr range-test` (generated from the same
specs). With --wait (and `clr remote wait`), the exit code says how the job ended: 0 succeeded,
1 failed, 3 cancelled; 2 means the request was refused (a flag named), 4 the API could not be used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

from clrclient.client import Client
from clrclient.errors import ApiError, ClientError, InvalidRequest, NotFound, Problem
from clrclient.events import StreamOutage
from clrclient.models import Job, JobEvent
from clrclient.progress import JobBars
from clrcore.cli import add_spec_flags, spec_from_args
from clrcore.specs import RangeTestSpec, TrainSpec

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_CANCELLED, EXIT_API = 0, 1, 2, 3, 4
EXIT_BY_STATE = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}
SUBMITS: dict[str, tuple[str, type[BaseModel], str]] = {
    "submit": ("train", TrainSpec, "submit a training job (the flags of `clr train`)"),
    "range-test": ("range-test", RangeTestSpec, "submit an LR range test (the flags of `clr range-test`)")}


def _say(text: str) -> None:
    print(f"clr remote: {text}", file=sys.stderr)


def _flag(problem: Problem) -> str:
    """A refused body field as the flag that sets it (`range_test.num_iter` -> --range-test-num-iter)."""
    if problem.field is None:
        return ""
    if problem.location in (None, "body"):
        return "--" + problem.field.replace(".", "-").replace("_", "-") + ": "
    return f"{problem.field}: "


# ------------------------------------------------------------------------------------------ commands


def _submit(api: Client, args: argparse.Namespace) -> int:
    kind, model, _ = SUBMITS[args._command]
    try:
        spec = spec_from_args(args, model)
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or None
            _say(f"{_flag(Problem(field, err['msg']))}{err['msg']}")
        return EXIT_REFUSED
    submit = api.submit_train if kind == "train" else api.submit_range_test
    job = submit(spec, idempotency_key=args._key)
    print(job.id, flush=True)  # first, so a script can read the id while --wait follows the job
    if not args._wait:
        return EXIT_OK
    return _follow(api, job.id, quiet=args.quiet, out=args.out)


def _follow(api: Client, job_id: str, *, quiet: bool, out: Path | None = None) -> int:
    """Follow the job's events (a bar per phase on a terminal), then print how it ended."""
    bars = JobBars() if not quiet and sys.stderr.isatty() else None

    def on_event(event: JobEvent) -> None:
        if event.name == "state" and not quiet:
            _say(f"job {job_id}: {event.data.get('state')}")
        if bars is not None:
            bars(event)

    try:
        job = api.wait(job_id, on_event=on_event)
    except KeyboardInterrupt:
        _say(f"stopped following; the job goes on (`clr remote wait {job_id}`, `clr remote cancel {job_id}`)")
        return 130
    finally:
        if bars is not None:
            bars.close()
    _print_outcome(api, job)
    if out is not None:
        files = api.download_run(job.id, out)
        print(f"run folder: {out} ({len(files)} files)")
    return EXIT_BY_STATE.get(job.state, EXIT_FAILED)


def _print_outcome(api: Client, job: Job) -> None:
    if not job.succeeded:
        _say(f"job {job.id} {job.state}" + (f": {job.error}" if job.error else ""))
        return
    result = job.result or {}
    if job.kind == "train":
        with contextlib.suppress(NotFound):  # a report is written last; a job without one still succeeded
            print(api.report_text(job.id))
        if "accuracy" in result:
            choice = (result.get("lr_choice") or {}).get("source", "?")
            print(f"accuracy {result['accuracy']:.4f}; lr {result.get('base_lr', 0):.3g}.."
                  f"{result.get('max_lr', 0):.3g} ({choice}); {result.get('seconds', 0):.1f} s")
    else:
        for name, lr in (result.get("suggestions") or {}).items():
            print(f"  {name:<16} {lr:.3g}" if lr else f"  {name:<16} -")
        if rec := result.get("recommendation"):
            print(f"recommended: base_lr {rec['base_lr']:.3g}, max_lr {rec['max_lr']:.3g} ({rec.get('rule')})")
    print(f"job {job.id} succeeded; plots: {', '.join(job.plot_names) or '-'}")


def _wait(api: Client, args: argparse.Namespace) -> int:
    return _follow(api, args.job_id, quiet=args.quiet, out=args.out)


def _get(api: Client, args: argparse.Namespace) -> int:
    print(api.get(args.job_id).model_dump_json(indent=1))
    return EXIT_OK


def _list(api: Client, args: argparse.Namespace) -> int:
    for job in api.list(kind=args.kind, state=args.state, limit=args.limit or None):
        if args.json:
            print(job.model_dump_json())
            continue
        accuracy = (job.result or {}).get("accuracy")
        tail = f"accuracy {accuracy:.4f}" if isinstance(accuracy, float) else (job.error or "")
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else "-"
        print(f"{job.id}  {job.kind:<10} {job.state:<10} {created}  {tail}".rstrip())
    return EXIT_OK


def _cancel(api: Client, args: argparse.Namespace) -> int:
    print(f"{args.job_id}: {api.cancel(args.job_id).state}")
    return EXIT_OK


def _delete(api: Client, args: argparse.Namespace) -> int:
    api.delete(args.job_id)
    print(f"{args.job_id}: deleted")
    return EXIT_OK


def _report(api: Client, args: argparse.Namespace) -> int:
    print(json.dumps(api.report(args.job_id), indent=1) if args.json else api.report_text(args.job_id))
    return EXIT_OK


def _plots(api: Client, args: argparse.Namespace) -> int:
    for path in api.download_plots(args.job_id, args.out).values():
        print(path)
    return EXIT_OK


def _artifact(api: Client, args: argparse.Namespace) -> int:
    print(api.download_artifact(args.job_id, args.name, args.out or Path(f"{args.job_id}-{args.name}")))
    return EXIT_OK


def _upload(api: Client, args: argparse.Namespace) -> int:
    dataset = api.upload_dataset(args.path, name=args.name, progress=not args.quiet and sys.stderr.isatty())
    print(dataset.id)
    if not args.quiet:
        _say(f"{dataset.name or args.path}: {dataset.num_classes} classes, input {dataset.input_shape}, "
             f"counts {json.dumps({s: sum(c.values()) for s, c in dataset.counts.items()})}")
    return EXIT_OK


def _upload_weights(api: Client, args: argparse.Namespace) -> int:
    weights = api.upload_weights(args.path, args.architecture, name=args.name,
                                 progress=not args.quiet and sys.stderr.isatty())
    print(weights.id)
    if not args.quiet:
        _say(f"{weights.name}: {weights.tensors} tensors for {weights.architecture}"
             + (f"; a job keeps its own {', '.join(weights.replaced)}" if weights.replaced else ""))
    return EXIT_OK


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "submit": _submit, "range-test": _submit, "wait": _wait, "get": _get, "list": _list, "cancel": _cancel,
    "delete": _delete, "report": _report, "plots": _plots, "artifact": _artifact, "upload": _upload,
    "upload-weights": _upload_weights,
}


# ------------------------------------------------------------------------------------------ parser


def _api_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", dest="_api_url", default=None, metavar="URL", help="overrides $CLR_API_URL")
    return common


def _job_command(sub: Any, name: str, text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=text, description=text, parents=[_api_flags()])
    p.add_argument("job_id", metavar="JOB")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clr remote", description=__doc__.splitlines()[0],
                                     epilog="The API: $CLR_API_URL (default http://127.0.0.1:8000); the key: "
                                            "$CLR_API_KEY.")
    sub = parser.add_subparsers(dest="_command", required=True)
    for name, (_, model, text) in SUBMITS.items():
        p = sub.add_parser(name, help=text, description=text, parents=[_api_flags()])
        p.add_argument("--wait", dest="_wait", action="store_true",
                       help="follow the job to its end; the exit code says how it ended")
        p.add_argument("--quiet", action="store_true", help="no progress bars or state lines")
        p.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help="with --wait: download the job's files (plots, report, artifacts) into this run folder")
        p.add_argument("--idempotency-key", dest="_key", default=None, metavar="KEY",
                       help="resending with the same key returns the first job (default: a fresh key)")
        add_spec_flags(p, model)
    p = _job_command(sub, "wait", "follow a job to its end (exit code as for --wait)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="then download the job's files here")
    _job_command(sub, "get", "a job as JSON")
    p = sub.add_parser("list", help="your jobs, newest first", parents=[_api_flags()])
    p.add_argument("--kind", choices=["train", "range_test"])
    p.add_argument("--state", choices=["queued", "running", "cancelling", "succeeded", "failed", "cancelled"])
    p.add_argument("--limit", type=int, default=20, help="at most this many (0: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _job_command(sub, "cancel", "stop a job (a running one within a few batches)")
    _job_command(sub, "delete", "remove a finished job and its files for good")
    p = _job_command(sub, "report", "the classification report (scikit-learn's table)")
    p.add_argument("--json", action="store_true")
    p = _job_command(sub, "plots", "download every plot of a job")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p = _job_command(sub, "artifact", "download one artifact")
    p.add_argument("name", help="history.json, range_test.json, range_test_log.csv, spec.json, model.pt, checkpoint")
    p.add_argument("--out", type=Path, default=None, help="default JOB-NAME in the current folder")
    p = sub.add_parser("upload", help="upload an image-folder archive (.zip, .tar, .tar.gz)",
                       parents=[_api_flags()])
    p.add_argument("path", type=Path)
    p.add_argument("--name", default=None, help="a label for you")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("upload-weights", help="upload pretrained weights (.safetensors) for an architecture; "
                       "prints the id a spec names as finetune.weights", parents=[_api_flags()])
    p.add_argument("path", type=Path)
    p.add_argument("--architecture", required=True, help="a model of GET /v1/models, e.g. resnet18")
    p.add_argument("--name", default=None, help="a label for you")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _say_retry(details: RetryDetails) -> None:
    """stamina's retries as one line each (instead of its log records on stderr)."""
    _say(f"retry {details.retry_num} in {details.wait_for:.1f} s: {details.caused_by}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_on_retry_hooks([_say_retry])
    try:
        with Client(args._api_url) as api:
            return COMMANDS[args._command](api, args)
    except InvalidRequest as exc:
        for problem in exc.problems:
            _say(f"{_flag(problem)}{problem.reason}")
        return EXIT_REFUSED
    except ApiError as exc:
        _say(str(exc))
        return EXIT_API
    except (httpx.HTTPError, StreamOutage, ClientError, OSError, ValueError) as exc:
        _say(f"{type(exc).__name__}: {exc}")
        return EXIT_API
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
