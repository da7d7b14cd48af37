"""Re-reading a stored range test: another rule, margin or skip settings, without re-running the sweep.

A run folder keeps every step of the sweep in range_test_log.csv (step, lr, loss, smoothed, skipped,
...). The raw losses are all the rules need, so any setting can be tried again on the stored curve.
Numpy and the standard library only: the API process can call this without torch.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from clrcore.suggest import (
    DIVERGE_FACTOR,
    NoSuggestion,
    Recommendation,
    picks_from_reading,
    read_curve,
    recipe,
    recommend,
    warnings_for,
)


def read_log(path: str | Path) -> tuple[list[float], list[float]]:
    """(lr, raw loss) of the optimizer steps really taken (AMP-skipped rows dropped), in sweep order."""
    lrs: list[float] = []
    losses: list[float] = []
    with Path(path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            if str(row.get("skipped", "")).strip().lower() in ("true", "1"):
                continue
            loss = row.get("loss", "")
            lrs.append(float(row["lr"]))
            losses.append(float(loss) if loss not in ("", "None") else math.nan)
    return lrs, losses


def resuggest(
    path: str | Path,
    *,
    skip_start: int = 0,
    skip_end: int = 0,
    diverge_factor: float = DIVERGE_FACTOR,
    cliff_margin: float | None = None,
    rule: str = "ours",
    policy: str = "triangular",
    iters_per_epoch: int | None = None,
    epochs_hint: int | None = None,
) -> dict[str, Any]:
    """Every rule's pick on a stored range_test_log.csv, and the bounds from `rule` (ours by default).

    `rule` may be any key of the suggestions (steepest, valley, slide, min_loss, min_loss_div10, blog,
    ours): its pick becomes max_lr. With `iters_per_epoch` the whole recipe is included. Returns a
    JSON-ready dict: suggestions, recommendation (None with `no_suggestion` naming why), warnings,
    the settings used.
    """
    lrs, losses = read_log(path)
    reading = read_curve(lrs, losses, skip_start=skip_start, skip_end=skip_end, diverge_factor=diverge_factor)
    suggestions = picks_from_reading(reading, cliff_margin)
    if rule not in suggestions or rule == "blog_base":
        raise ValueError(f"unknown rule {rule!r}; known: {', '.join(k for k in suggestions if k != 'blog_base')}")
    problem: NoSuggestion | None = reading.problem
    rec = None
    if suggestions[rule]:
        rec = recommend(suggestions, policy, rule=rule, cliff_margin=cliff_margin).to_dict()
    elif problem is None:
        problem = NoSuggestion("no_pick", f"rule {rule!r} finds nothing to read on this curve")
    out: dict[str, Any] = {
        "suggestions": suggestions,
        "recommendation": rec,
        "no_suggestion": None if problem is None or rec else {"reason": problem.reason, "detail": problem.detail},
        "warnings": warnings_for(lrs, losses, suggestions=suggestions, reading=reading),
        "turn_lr": reading.turn_lr,
        "settings": {"skip_start": skip_start, "skip_end": skip_end, "diverge_factor": diverge_factor,
                     "cliff_margin": cliff_margin, "rule": rule, "policy": policy},
    }
    if rec is not None and iters_per_epoch:
        out["recipe"] = recipe(Recommendation(**rec), iters_per_epoch=iters_per_epoch, epochs_hint=epochs_hint)
    return out
