"""Per-task bench work on two processes, stored as results.json and re-read without redoing it."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_tasks(work: Callable[..., dict[str, Any]], names: list[str], extra: tuple[Any, ...], out: Path,
              reanalyse: bool, report: Callable[[list[dict[str, Any]]], None]) -> None:
    """`work(name, *extra)` for every task on two spawned processes (one task's data each), the results
    written to out/results.json, then `report`; with `reanalyse` only `report` on the stored results."""
    stored = out / "results.json"
    if not reanalyse:
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            results = pool.starmap(work, [(name, *extra) for name in names])
        out.mkdir(parents=True, exist_ok=True)
        stored.write_text(json.dumps(results, indent=1))
    report(json.loads(stored.read_text()))
