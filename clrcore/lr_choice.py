"""A finished range test as one value: its LR bounds, the recommendation and the recipe, computed once.

`runs.py` builds a `RangeTestChoice` from the sweep, writes it into range_test.json (as the file's
`summary`, next to the raw per-step log) and reads it back when a redelivered job resumes; the LR
bounds and the recipe that training uses are this object's, never recomputed from a dict. When no rule
could pick, a training run's choice carries the documented safe recommendation instead (`source`
"safe_fallback"), so a resumed delivery trains with the same fallback without deciding again.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from clrcore.files import write_text
from clrcore.json_safe import json_safe
from clrcore.suggest import Recommendation, recipe

if TYPE_CHECKING:
    from collections.abc import Callable

    from clrcore.lr_range import RangeTestResult

ChoiceSource = Literal["range_test", "safe_fallback"]


@dataclass(frozen=True)
class RangeTestChoice:
    """What a sweep decided: the recommendation (None when no rule could pick) and the recipe built on it.

    `source` is "range_test" when a rule picked, "safe_fallback" when none could and the caller's safe
    recommendation stands in (`recommendation` is then that one, marked low confidence).

    `recipe` is `suggest.recipe` for the sweep's policy, with the job's steps per epoch and epoch count
    as the hint: the epochs stay and the step is fitted to them, as training fits it.
    """

    stop_reason: str
    stopped_at: dict[str, float] | None  # {"step", "lr"} where the sweep stopped early, if it did
    steps: int  # optimizer steps taken (AMP-skipped steps excluded)
    suggestions: dict[str, float | None]
    recommendation: Recommendation | None
    recipe: dict[str, Any] | None
    spread_decades: float | None
    low_confidence: bool
    warnings: list[str]
    restored: bool
    # a fine-tuned model's bounds per layer group (`finetune.group_bounds`); None for other models
    group_bounds: list[dict[str, Any]] | None = None
    source: ChoiceSource = "range_test"
    # several seeds in one job: each seed's stop, steps and picks (curves stay in range_test.json's
    # `seeds`), and the max/min spread of their picks; empty and None for a one-seed sweep
    seeds: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seed_spread: float | None = None

    @property
    def base_lr(self) -> float | None:
        return None if self.recommendation is None else self.recommendation.base_lr

    @property
    def max_lr(self) -> float | None:
        return None if self.recommendation is None else self.recommendation.max_lr

    @classmethod
    def from_result(cls, result: RangeTestResult, *, iters_per_epoch: int, epochs_hint: int | None,
                    fallback: Callable[[str], Recommendation] | None = None) -> RangeTestChoice:
        """The sweep's choice; without a pick, `fallback(reason)` (if given) supplies the recommendation."""
        rec = result.recommendation
        source: ChoiceSource = "range_test"
        if rec is None and fallback is not None:
            reason = next((w for w in result.warnings if "no suggestion" in w), "no suggestion")
            rec, source = fallback(reason), "safe_fallback"
        return cls(
            stop_reason=result.stop_reason,
            stopped_at=None if result.stopped_at is None else
            {"step": result.stopped_at[0], "lr": result.stopped_at[1]},
            steps=sum(1 for r in result.log if not r["skipped"]),
            suggestions=result.suggestions,
            recommendation=rec,
            recipe=None if rec is None else recipe(rec, iters_per_epoch=iters_per_epoch, epochs_hint=epochs_hint),
            spread_decades=result.spread_decades,
            low_confidence=result.low_confidence,
            warnings=list(result.warnings),
            restored=result.restored,
            source=source,
            seeds=[{k: v for k, v in seed.items() if k not in ("lrs", "losses")} for seed in result.seeds],
            seed_spread=result.seed_spread,
        )

    def summary(self) -> dict[str, Any]:
        """The JSON form: range_test.json's `summary`, and what a range-test job returns."""
        return json_safe({
            "stop_reason": self.stop_reason,
            "stopped_at": self.stopped_at,
            "suggestions": self.suggestions,
            "recommendation": None if self.recommendation is None else self.recommendation.to_dict(),
            "recipe": self.recipe,
            "spread_decades": self.spread_decades,
            "low_confidence": self.low_confidence,
            "warnings": self.warnings,
            "steps": self.steps,
            "restored": self.restored,
            **({} if self.group_bounds is None else {"group_bounds": self.group_bounds}),
            "source": self.source,
            **({"seeds": self.seeds, "seed_spread": self.seed_spread} if self.seeds else {}),
        })

    @classmethod
    def from_summary(cls, data: dict[str, Any]) -> RangeTestChoice:
        rec = data.get("recommendation")
        return cls(
            stop_reason=data["stop_reason"],
            stopped_at=data.get("stopped_at"),
            steps=int(data.get("steps", 0)),
            suggestions=dict(data.get("suggestions", {})),
            recommendation=None if rec is None else Recommendation(**rec),
            recipe=data.get("recipe"),
            spread_decades=data.get("spread_decades"),
            low_confidence=bool(data.get("low_confidence", True)),
            warnings=list(data.get("warnings", [])),
            restored=bool(data.get("restored", True)),
            group_bounds=data.get("group_bounds"),
            source="safe_fallback" if data.get("source") == "safe_fallback" else "range_test",
            seeds=list(data.get("seeds", [])),
            seed_spread=data.get("seed_spread"),
        )

    def lr_info(self) -> dict[str, Any]:
        """How a training run's bounds were chosen, for its summary's `lr_choice`."""
        rec = self.recommendation
        return {"source": self.source, "rule": None if rec is None else rec.rule,
                "low_confidence": self.low_confidence if rec is None else rec.low_confidence,
                "suggestions": self.suggestions, "warnings": self.warnings,
                **({"seeds": self.seeds, "seed_spread": self.seed_spread} if self.seeds else {}),
                "recommendation": None if rec is None else json_safe(rec.to_dict())}


def write_range_test(path: Path, result: RangeTestResult, choice: RangeTestChoice) -> dict[str, Any]:
    """range_test.json: the sweep's raw log and settings once, and the choice as `summary`."""
    sweep = result.to_dict()
    data = {key: sweep[key] for key in ("log", "val_log", "settings", "checksum")}
    if result.seeds:  # every seed's curve, so a multi-seed job can be re-read
        data["seed_curves"] = [{k: seed[k] for k in ("seed", "lrs", "losses")} for seed in sweep["seeds"]]
    summary = choice.summary()
    write_text(path, json.dumps({**data, "summary": summary}, indent=1, default=str))
    return summary


def read_range_test(path: Path) -> RangeTestChoice | None:
    """The choice saved in range_test.json, or None when there is none yet."""
    if not path.exists():
        return None
    return RangeTestChoice.from_summary(json.loads(path.read_text())["summary"])
