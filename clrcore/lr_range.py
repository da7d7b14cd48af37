"""The LR range test (Smith 2017): raise the LR step by step, record the loss, put everything back.

The sweep counts real optimizer steps only: gradient accumulation takes k micro-batches per step,
and a step that AMP skipped (inf gradients, the scale went down) is logged but does not move up the
ladder. With several param groups the ladder sets group 0's LR and the others keep their initial
ratio to it, so discriminative LRs stay discriminative. Afterwards model, optimizer, GradScaler and
every RNG are restored from an in-memory snapshot and checked by a checksum, so a range test before
training changes nothing but the clock.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clrcore.checkpoint import capture_rng_state, restore_rng_state
from clrcore.json_safe import json_safe
from clrcore.suggest import (
    SEED_SPREAD_WARN,
    Recommendation,
    aggregate_seeds,
    picks_from_reading,
    read_curve,
    recommend,
    seed_warnings,
    warnings_for,
)

log = logging.getLogger(__name__)

STOP_REASONS = ("end_lr", "diverged", "nan", "data_exhausted", "stopped")
MAX_CONSECUTIVE_SKIPS = 50  # GradScaler halves per skip: 2**16 falls below 2**-30 by then
FALL_WINDOW = 10  # steps whose mean raw loss `branch_fall` compares: the last ones against the first


def lr_ladder(start_lr: float, end_lr: float, num_iter: int, mode: str = "exp") -> np.ndarray:
    """The LRs of the sweep, both ends included: a constant ratio (exp) or difference (linear)."""
    if not 0 < start_lr < end_lr:
        raise ValueError("need 0 < start_lr < end_lr")
    if num_iter < 2:
        raise ValueError("num_iter must be at least 2")
    i = np.arange(num_iter) / (num_iter - 1)
    if mode == "exp":
        return start_lr * (end_lr / start_lr) ** i
    if mode == "linear":
        return start_lr + (end_lr - start_lr) * i
    raise ValueError(f"mode must be 'exp' or 'linear', not {mode!r}")


@dataclass
class RangeTestResult:
    """What the sweep saw and what it suggests; `log` holds one dict per optimizer step."""

    log: list[dict[str, Any]]
    val_log: list[dict[str, Any]]
    stop_reason: str
    stopped_at: tuple[int, float] | None
    suggestions: dict[str, float | None]
    recommendation: Recommendation | None
    spread_decades: float | None
    low_confidence: bool
    warnings: list[str]
    restored: bool
    checksum: str
    settings: dict[str, Any] = field(default_factory=dict)
    # several seeds in one job (`combine_seeds`): each seed's curve, stop and picks; the spread of ours
    seeds: list[dict[str, Any]] = field(default_factory=list)
    seed_spread: float | None = None
    # `range_test(branches=...)`: each branch's own result (the shared steps, then its own); not in to_dict,
    # where `combine_seeds` keeps each seed's curve
    branches: list[RangeTestResult] = field(default_factory=list)

    def read_points(self) -> tuple[list[float], list[float]]:
        """(lr, raw loss) the rules read: the steps really taken, or the validation points when the
        sweep was set to read those."""
        if self.settings.get("read") == "validation" and self.val_log:
            return [v["lr"] for v in self.val_log], [v["val_loss"] for v in self.val_log]
        taken = [r for r in self.log if not r["skipped"]]
        return [r["lr"] for r in taken], [r["loss"] for r in taken]

    def curve(self) -> tuple[list[float], list[float]]:
        """(lr, smoothed loss) over the steps that were really taken; the curve the plot draws."""
        taken = [r for r in self.log if not r["skipped"]]
        return [r["lr"] for r in taken], [r["smoothed"] for r in taken]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN and inf become None."""
        stopped_at = (
            None if self.stopped_at is None else {"step": self.stopped_at[0], "lr": self.stopped_at[1]}
        )
        return json_safe(
            {
                "log": self.log,
                "val_log": self.val_log,
                "stop_reason": self.stop_reason,
                "stopped_at": stopped_at,
                "suggestions": self.suggestions,
                "recommendation": None if self.recommendation is None else self.recommendation.to_dict(),
                "spread_decades": self.spread_decades,
                "low_confidence": self.low_confidence,
                "warnings": self.warnings,
                "restored": self.restored,
                "checksum": self.checksum,
                "settings": self.settings,
                **({"seeds": self.seeds, "seed_spread": self.seed_spread} if self.seeds else {}),
            }
        )

    def save_log(self, path: str | Path) -> Path:
        """Write the per-step log as CSV or JSON, chosen by the file extension."""
        path = Path(path)
        rows = [_flat_row(r) for r in self.log]
        if path.suffix == ".json":
            path.write_text(json.dumps(json_safe(rows), indent=1))
        elif path.suffix == ".csv":
            columns = list(dict.fromkeys(k for row in rows for k in row)) or ["step", "lr", "loss"]
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(json_safe(rows))
        else:
            raise ValueError(f"save_log writes .csv or .json, not {path.suffix!r}")
        return path


def _flat_row(record: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: per-group lists become lr_g0, momentum_g0, ... columns."""
    row = {k: v for k, v in record.items() if not isinstance(v, list)}
    for key in ("lrs", "momentum"):
        name = "lr" if key == "lrs" else key
        for g, value in enumerate(record.get(key, [])):
            row[f"{name}_g{g}"] = value
    return row


# ---------------------------------------------------------------------------- snapshot and restore


def _tensor_digest(h: Any, name: str, t: torch.Tensor) -> None:
    t = t.detach().contiguous().reshape(-1)
    h.update(f"{name}|{t.dtype}|{t.numel()}|".encode())
    h.update(t.view(torch.uint8).cpu().numpy().tobytes())


def _rng_digest(h: Any, states: dict[str, Any]) -> None:
    """Digest of `checkpoint.capture_rng_state()`: every global stream, bit for bit."""
    _tensor_digest(h, "rng.torch", states["torch"])
    for i, t in enumerate(states["cuda"] or []):
        _tensor_digest(h, f"rng.cuda{i}", t)
    np_state = states["numpy"]
    h.update(f"rng.numpy|{np_state['kind']}|{np_state['pos']}|{np_state['has_gauss']}|"
             f"{np_state['cached_gaussian']!r}|".encode())
    _tensor_digest(h, "rng.numpy.keys", np_state["keys"])
    h.update(f"rng.python|{states['python']!r}".encode())


def state_checksum(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any = None) -> str:
    """sha256 over everything a range test must leave as it found it.

    Covers every model state tensor (weights and buffers such as BatchNorm statistics), the
    optimizer's state tensors and hyperparameters, the GradScaler's state (scale and growth tracker)
    and the current global RNG states, so a restore that forgets any of them fails the comparison.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        _tensor_digest(h, f"model.{name}", t)
    opt = optimizer.state_dict()
    for pid in sorted(opt["state"]):
        for key in sorted(opt["state"][pid]):
            value = opt["state"][pid][key]
            if isinstance(value, torch.Tensor):
                _tensor_digest(h, f"opt.{pid}.{key}", value)
            else:
                h.update(f"opt.{pid}.{key}={value!r}".encode())
    h.update(json.dumps(opt["param_groups"], sort_keys=True, default=repr).encode())
    if scaler is not None:
        h.update(b"scaler|" + json.dumps(scaler.state_dict(), sort_keys=True, default=repr).encode())
    _rng_digest(h, capture_rng_state())
    return h.hexdigest()


@dataclass
class _Snapshot:
    """Everything the sweep changes, copied in memory (no files)."""

    model: dict[str, torch.Tensor]
    grads: list[torch.Tensor | None]
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: dict[str, Any]
    training: bool
    checksum: str

    @classmethod
    def take(cls, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any) -> _Snapshot:
        return cls(
            model={k: v.detach().clone() for k, v in model.state_dict().items()},
            grads=[None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
            optimizer=copy.deepcopy(optimizer.state_dict()),
            scaler=None if scaler is None else copy.deepcopy(scaler.state_dict()),
            rng=capture_rng_state(),
            training=model.training,
            checksum=state_checksum(model, optimizer, scaler),
        )

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any) -> str:
        """Put everything back and return the checksum; raise if it differs from the one taken."""
        model.load_state_dict(self.model)
        for p, g in zip(model.parameters(), self.grads, strict=True):
            p.grad = None if g is None else g.clone()
        # load_state_dict keeps the very tensors it is given where their device and dtype fit: a copy, so the
        # snapshot outlives the steps after it (a branch point is restored once per branch)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        if scaler is not None and self.scaler is not None:
            scaler.load_state_dict(self.scaler)
        restore_rng_state(self.rng)
        model.train(self.training)
        checksum = state_checksum(model, optimizer, scaler)
        if checksum != self.checksum:
            raise RuntimeError(f"range test restore failed: checksum {checksum[:12]} != {self.checksum[:12]}")
        return checksum


# ---------------------------------------------------------------------------- the sweep


def _group_ratios(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each param group's initial LR relative to group 0's, so discriminative LRs keep their ratios.

    With equal initial LRs (the usual case) every ratio is 1 and all groups follow the ladder; a
    group 0 without a positive LR gives no reference, so then every group follows it too.
    """
    first = float(optimizer.param_groups[0]["lr"])
    if not first > 0:
        return [1.0] * len(optimizer.param_groups)
    return [float(g["lr"]) / first for g in optimizer.param_groups]


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, ratios: list[float]) -> None:
    """Group 0 gets the ladder's LR, every other group the same LR times its ratio."""
    for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr * ratio)
        else:
            group["lr"] = lr * ratio


def _momenta(optimizer: torch.optim.Optimizer) -> list[float | None]:
    """SGD momentum or Adam's beta1 per group (None where the optimizer has neither)."""
    out: list[float | None] = []
    for group in optimizer.param_groups:
        if "momentum" in group:
            out.append(float(group["momentum"]))
        elif "betas" in group:
            out.append(float(group["betas"][0]))
        else:
            out.append(None)
    return out


class _Cycle:
    """Re-iterates the batches when they run out; None once a fresh pass yields nothing."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self._batches = batches
        self._it: Iterator[Any] = iter(batches)

    def next(self) -> Any | None:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self._batches)
            return next(self._it, None)


def _evaluate(
    model: nn.Module, loss_fn: Callable, batches: list[Any], autocast: Callable
) -> tuple[float, float | None]:
    """Loss and accuracy on exactly these batches, in eval mode without gradients."""
    model.eval()
    total_loss, correct, count, classify = 0.0, 0, 0, True
    try:
        with torch.no_grad(), autocast():
            for x, y in batches:
                out = model(x)
                n = len(y)
                total_loss += float(loss_fn(out, y)) * n
                count += n
                if out.ndim == 2 and not y.is_floating_point() and y.ndim == 1:
                    correct += int((out.argmax(dim=1) == y).sum())
                else:
                    classify = False
    finally:
        model.train()
    return total_loss / max(count, 1), (correct / count if classify and count else None)


def range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exp",
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
    val_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    val_every: int = 10,
    accumulation_steps: int = 1,
    scaler: Any = None,
    autocast_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    policy: str = "triangular",
    read: str = "train",
    sync_every: int = 1,
    rule: str = "ours",
    branches: Sequence[Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]] = (),
    branch_at: int = 0,
    branch_fall: float | None = None,
    cliff_margin: float | None = None,
) -> RangeTestResult:
    """Sweep the LR over `num_iter` optimizer steps, then restore every state and read the curve.

    The ladder sets group 0's LR; other param groups move in step at their initial LR ratio to
    group 0 (discriminative LRs keep their ratios), and each record's `lrs` holds the LR every
    group really had. `train_batches` yields (x, y) already on the device and is cycled when it
    runs out. Stops on
    divergence (smoothed loss > diverge_factor x best), NaN/inf loss, the end of the ladder, data
    that yields nothing, or `should_stop()` returning True. `on_step` receives each step's record.
    Raises RuntimeError if the restored state's checksum differs from the one taken before.

    `sync_every` > 1 reads the losses to the host that many steps at a time instead of after every step,
    so a GPU never waits on Python (without a GradScaler, whose skip test reads the scale every step).
    The records, the stop and the restored state are the same: steps past a stop are run but dropped.

    `branches`: more sweeps that share this one's first `branch_at` steps. With `branch_fall` only where
    those steps are flat: where the loss (the mean of the last FALL_WINDOW steps) falls that share below
    the first FALL_WINDOW steps' mean before the branch point, the first steps already tell where the net
    learns and branches would share what they tell, so there are none (the caller sweeps its other seeds
    whole). At the branch point the state is copied (model, optimizer, scaler, RNG and the smoothed
    curve so far); after this sweep each branch goes on from the copy with its own batches to the end of
    the ladder (each a function that makes them when its branch starts: a loader that copies the data to
    the device is made one at a time). k seeds then cost b + k x (num_iter - b) steps instead of k x
    num_iter: the first decades, where the loss barely moves, add nothing to where a sweep turns, only
    the later batch order does (docs/benchmarks.md, issue 12). Each branch's result (the shared records,
    then its own) is in `result.branches`; there are fewer when this sweep or a branch stopped by
    request, none when this sweep stopped or its loss fell before the branch point. `on_step` records of
    branch i carry "branch": i and "branch_at"; this sweep's records past the branch point carry "branched"
    (whether it did); `settings["branch_at"]` is None where it did not branch.

    `cliff_margin`: what ours divides the cliff by (`suggest.cliff_margin_for` the net and optimizer; None:
    `suggest.CLIFF_MARGIN`), kept in `settings` so the seeds' aggregate reads with it too.
    """
    if accumulation_steps < 1 or val_every < 1 or sync_every < 1:
        raise ValueError("accumulation_steps, val_every and sync_every must be at least 1")
    if branches and not 0 < branch_at < num_iter:
        raise ValueError("branch_at must lie inside the ladder: 0 < branch_at < num_iter")
    if branch_fall is not None and not 0 < branch_fall < 1:
        raise ValueError("branch_fall must lie in (0, 1)")
    if not 0 <= smooth < 1 or diverge_factor <= 1:
        raise ValueError("need 0 <= smooth < 1 and diverge_factor > 1")
    ladder = lr_ladder(start_lr, end_lr, num_iter, mode)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)

    def autocast() -> Any:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    snapshot = _Snapshot.take(model, optimizer, scaler)
    fork: list[_Fork] = []  # the branch point, once reached

    def at_branch_point(loop: _Loop, records: list[dict[str, Any]], val_log: list[dict[str, Any]]) -> None:
        fork.append(_Fork(_Snapshot.take(model, optimizer, scaler), copy.copy(loop), copy.deepcopy(records),
                          copy.deepcopy(val_log)))

    sweep = functools.partial(
        _sweep, model, optimizer, loss_fn, ladder=ladder, smooth=smooth, diverge_factor=diverge_factor,
        val_batches=val_batches, val_every=val_every, accumulation_steps=accumulation_steps, scaler=scaler,
        autocast=autocast, should_stop=should_stop, sync_every=1 if scaler is not None else sync_every,
    )  # fmt: skip
    runs: list[_Run] = []

    def first_on_step(record: dict[str, Any]) -> None:
        """The first sweep's records past the branch point say whether it branched (a caller's plan of steps)."""
        assert on_step is not None
        on_step({**record, "branched": bool(fork)} if branches and record["iteration"] > branch_at else record)

    try:
        model.train()
        run = _Run([], [])
        run.stop_reason, run.stopped_at = sweep(
            _Cycle(train_batches), records=run.records, val_log=run.val_log,
            on_step=None if on_step is None else first_on_step,
            branch_at=branch_at, branch_fall=branch_fall, on_branch=at_branch_point if branches else None,
        )
        runs.append(run)
        shared = fork[0] if fork else None
        for i, make_batches in enumerate(branches if shared else (), start=1):
            if shared is None or runs[-1].stop_reason == "stopped":
                break
            shared.state.restore(model, optimizer, scaler)
            run = _Run(copy.deepcopy(shared.records), copy.deepcopy(shared.val_log))
            run.stop_reason, run.stopped_at = sweep(
                _Cycle(make_batches()), records=run.records, val_log=run.val_log, loop=copy.copy(shared.loop),
                on_step=None if on_step is None else functools.partial(_tagged, on_step, i, shared.loop.taken),
            )
            runs.append(run)
    finally:
        checksum = snapshot.restore(model, optimizer, scaler)
    log.info("range test stopped (%s) after %d steps; state restored", runs[0].stop_reason if runs else "error",
             len(runs[0].records) if runs else 0)
    if len(runs) > 1:
        log.info("%d branches from step %d: %s", len(runs) - 1, fork[0].loop.taken, [r.stop_reason for r in runs[1:]])
    settings = {
        "start_lr": start_lr, "end_lr": end_lr, "num_iter": num_iter, "mode": mode, "smooth": smooth,
        "diverge_factor": diverge_factor, "val_every": val_every if val_batches else None,
        "accumulation_steps": accumulation_steps, "policy": policy, "read": read, "rule": rule,
        "cliff_margin": cliff_margin,
        **({"branch_at": fork[0].loop.taken if fork else None} if branches else {}),
    }  # fmt: skip
    first, *others = [_read_run(run, settings, checksum) for run in runs]
    first.branches = others
    return first


@dataclass
class _Loop:
    """The sweep loop's running state: the EMA, its best, the rungs taken, AMP skips in a row."""

    avg: float = 0.0
    best: float = math.inf
    taken: int = 0
    skips_in_row: int = 0


@dataclass
class _Fork:
    """Everything a branch starts from: the state at the branch point and the curve up to it."""

    state: _Snapshot
    loop: _Loop
    records: list[dict[str, Any]]
    val_log: list[dict[str, Any]]


@dataclass
class _Run:
    """One sweep's records and how it stopped."""

    records: list[dict[str, Any]]
    val_log: list[dict[str, Any]]
    stop_reason: str = "end_lr"
    stopped_at: tuple[int, float] | None = None


def _tagged(on_step: Callable[[dict[str, Any]], None], branch: int, branch_at: int, record: dict[str, Any]) -> None:
    on_step({**record, "branch": branch, "branch_at": branch_at})


def _fall(records: list[dict[str, Any]]) -> float:
    """How far the loss has fallen: 1 - (mean of the last FALL_WINDOW steps) / (mean of the first); 0 until
    the two windows are apart."""
    losses = [r["loss"] for r in records if not r["skipped"]]
    if len(losses) < 2 * FALL_WINDOW:
        return 0.0
    first = sum(losses[:FALL_WINDOW]) / FALL_WINDOW
    return 1 - (sum(losses[-FALL_WINDOW:]) / FALL_WINDOW) / first if first > 0 else 0.0


def _read_run(run: _Run, settings: dict[str, Any], checksum: str) -> RangeTestResult:
    """The rules' reading of one sweep's records: picks, recommendation and warnings."""
    diverge_factor, records = settings["diverge_factor"], run.records
    taken = [r for r in records if not r["skipped"]]
    lrs = ladder = [r["lr"] for r in taken]
    losses = [r["loss"] for r in taken]  # raw: the rules smooth the finished curve themselves
    if settings["read"] == "validation" and run.val_log:  # the cheap validation-loss mode: a less noisy curve
        lrs, losses = [v["lr"] for v in run.val_log], [v["val_loss"] for v in run.val_log]
    reading = read_curve(lrs, losses, diverge_factor=diverge_factor)
    suggestions = picks_from_reading(reading, settings.get("cliff_margin"))
    rec, why = _recommend(suggestions, settings["policy"], settings["rule"], settings.get("cliff_margin"))
    warnings = warnings_for(
        lrs, losses, stop_reason=run.stop_reason, diverge_factor=diverge_factor, suggestions=suggestions,
        reading=reading, ladder=ladder,
    )
    warnings += why
    skipped = len(records) - len(taken)
    if skipped:
        warnings.append(f"{skipped} steps skipped by AMP (inf gradients); the ladder waited for them")
    return RangeTestResult(
        log=records,
        val_log=run.val_log,
        stop_reason=run.stop_reason,
        stopped_at=run.stopped_at,
        suggestions=suggestions,
        recommendation=rec,
        spread_decades=None if rec is None else rec.spread_decades,
        low_confidence=True if rec is None else rec.low_confidence,
        warnings=warnings,
        restored=True,
        checksum=checksum,
        settings=dict(settings),
    )


def _recommend(suggestions: dict[str, float | None], policy: str, rule: str,
               cliff_margin: float | None = None) -> tuple[Recommendation | None, list[str]]:
    """`recommend`'s bounds, or None; when ours had a pick but the chosen rule found nothing, also why in
    one line (a job then falls back to the safe recipe, and says so). A curve no rule can read says why
    in its own warnings."""
    try:
        return recommend(suggestions, policy, rule=rule, cliff_margin=cliff_margin), []
    except ValueError as exc:
        if rule != "ours" and suggestions.get("ours"):
            return None, [f"{exc} (ours picked {suggestions['ours']:.3g})"]
        return None, []


def combine_seeds(results: list[RangeTestResult], seeds: list[int], policy: str = "triangular",
                  rule: str = "ours") -> RangeTestResult:
    """Several sweeps of one job (one per seed) as one result: the picks are the seeds' aggregate
    (`suggest.aggregate_seeds`), the log and state checks are the first seed's, and `seeds` holds
    each seed's curve, stop reason, picks and warnings. One result is returned as it is."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    curves = [r.read_points() for r in results]
    margin = first.settings.get("cliff_margin")
    agg = aggregate_seeds(curves, diverge_factor=first.settings.get("diverge_factor", 4.0), cliff_margin=margin)
    rec, why = _recommend(agg.suggestions, policy, rule, margin)
    # A warning every seed gave (all swept too sparsely) is said once; the others with their seed. "No
    # suggestion" is left to seed_warnings, which names each seed's reason once.
    everyone = set.intersection(*(set(r.warnings) for r in results))
    warnings = [text for text in first.warnings if text in everyone and not text.startswith("no suggestion")]
    for seed, result in zip(seeds, results, strict=True):
        for text in result.warnings:
            if text not in everyone and not text.startswith("no suggestion"):
                warnings.append(f"seed {seed}: {text}")
    warnings += seed_warnings(agg, seeds, rule) + why
    spread = agg.spread_of(rule)  # of the picks the job trains at
    wide = spread is not None and spread > SEED_SPREAD_WARN
    per_seed = [
        {"seed": seed, "stop_reason": r.stop_reason, "steps": len(lrs), "lrs": lrs, "losses": losses,
         "suggestions": picks, "problem": None if problem is None else problem.reason}
        for seed, r, (lrs, losses), picks, problem in zip(seeds, results, curves, agg.per_seed, agg.problems,
                                                          strict=True)
    ]
    return RangeTestResult(
        log=first.log, val_log=first.val_log, stop_reason=first.stop_reason, stopped_at=first.stopped_at,
        suggestions=agg.suggestions, recommendation=rec,
        spread_decades=None if rec is None else rec.spread_decades,
        low_confidence=True if rec is None else (rec.low_confidence or wide),
        warnings=warnings, restored=all(r.restored for r in results), checksum=first.checksum,
        settings={**first.settings, "seeds": len(results)}, seeds=per_seed, seed_spread=spread,
    )


def _sweep(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    batches: _Cycle,
    ladder: np.ndarray,
    records: list[dict[str, Any]],
    val_log: list[dict[str, Any]],
    *,
    smooth: float,
    diverge_factor: float,
    val_batches: list[Any] | None,
    val_every: int,
    accumulation_steps: int,
    scaler: Any,
    autocast: Callable,
    on_step: Callable | None,
    should_stop: Callable | None,
    sync_every: int = 1,
    loop: _Loop | None = None,
    branch_at: int | None = None,
    branch_fall: float | None = None,
    on_branch: Callable[[_Loop, list[dict[str, Any]], list[dict[str, Any]]], None] | None = None,
) -> tuple[str, tuple[int, float] | None]:
    """The loop itself; appends to `records` and `val_log`, returns (stop_reason, stopped_at).

    Each step's loss stays on the device in `pending` until the next read (every `sync_every` steps,
    at a validation step and at the end); `settle` then applies the stop rules step by step in order.
    `loop` goes on from a branch point's state (a fresh start without). Until the branch point every loss
    is read at once (so the outcome is the same at every `sync_every`); at rung `branch_at` `on_branch`
    gets the state and the curve so far, unless the loss fell `branch_fall` before (`_fall`).
    """
    loop = loop or _Loop()
    ratios = _group_ratios(optimizer)
    pending: list[tuple[dict[str, Any], torch.Tensor]] = []

    def settle() -> tuple[str, tuple[int, float] | None] | None:
        """Read the pending losses in one transfer and log their steps; a stop, or None to go on."""
        values = torch.stack([loss for _, loss in pending]).tolist() if pending else []
        settled, pending[:] = pending[:], []
        for (record, _), loss_value in zip(settled, values, strict=True):
            record["loss"] = loss_value
            if not math.isfinite(loss_value):
                record["smoothed"] = math.nan
                records.append(record)
                _notify(on_step, record, len(ladder))
                return "nan", (record["step"], record["lr"])
            loop.avg = smooth * loop.avg + (1 - smooth) * loss_value
            smoothed = loop.avg / (1 - smooth ** record["iteration"])
            record["smoothed"] = smoothed
            records.append(record)
            extra: dict[str, Any] = {}
            if val_batches and record["iteration"] % val_every == 0:  # the last pending step: see below
                val_loss, val_acc = _evaluate(model, loss_fn, val_batches, autocast)
                val_log.append({"step": record["step"], "lr": record["lr"], "val_loss": val_loss,
                                "val_acc": val_acc})
                extra = {"val_loss": val_loss, "val_acc": val_acc}
            _notify(on_step, {**record, **extra}, len(ladder))
            if smoothed > diverge_factor * loop.best:
                return "diverged", (record["step"], record["lr"])
            loop.best = min(loop.best, smoothed)
        return None

    while loop.taken < len(ladder):
        if on_branch is not None:
            stop = settle()
            if stop is not None:
                return stop
            if branch_fall is not None and _fall(records) >= branch_fall:
                on_branch = None  # the first steps are not flat: no branch point
            elif loop.taken == branch_at:
                on_branch(loop, records, val_log)
                on_branch = None  # once: an AMP-skipped step stays on its rung
        if should_stop is not None and should_stop():
            return settle() or ("stopped", None)
        _set_lr(optimizer, float(ladder[loop.taken]), ratios)
        optimizer.zero_grad(set_to_none=True)
        window_loss = None
        for _ in range(accumulation_steps):
            batch = batches.next()
            if batch is None:
                return settle() or ("data_exhausted", None)
            x, y = batch
            with autocast():
                loss = loss_fn(model(x), y) / accumulation_steps
            (scaler.scale(loss) if scaler is not None else loss).backward()
            part = loss.detach().float()
            window_loss = part if window_loss is None else window_loss + part
        assert window_loss is not None  # accumulation_steps >= 1
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        record: dict[str, Any] = {
            "step": len(records) + len(pending) + 1, "iteration": loop.taken + 1, "lr": lrs[0], "lrs": lrs,
            "momentum": _momenta(optimizer), "loss": None, "smoothed": None, "skipped": False,
        }  # fmt: skip
        if sync_every > 1:  # the loss is read later; a non-finite one stops the sweep there
            optimizer.step()
            loop.taken += 1
            pending.append((record, window_loss))
            # validation needs the weights of its own step: read everything up to it first
            last = loop.taken == len(ladder)
            if len(pending) >= sync_every or last or (val_batches and loop.taken % val_every == 0):
                stop = settle()
                if stop is not None:
                    return stop
            continue

        loss_value = float(window_loss)
        if not math.isfinite(loss_value):  # before the optimizer step: an AMP scale must not drop for it
            pending.append((record, window_loss))
            return settle() or ("nan", (record["step"], lrs[0]))
        skipped = _optimizer_step(optimizer, scaler)
        if skipped:
            record["loss"], record["skipped"] = loss_value, True
            records.append(record)
            _notify(on_step, record, len(ladder))
            loop.skips_in_row += 1
            if loop.skips_in_row >= MAX_CONSECUTIVE_SKIPS:
                return "nan", (record["step"], lrs[0])
            continue
        loop.skips_in_row = 0
        loop.taken += 1
        pending.append((record, window_loss))
        stop = settle()
        if stop is not None:
            return stop
    return "end_lr", None


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: Any) -> bool:
    """One optimizer step; True when AMP skipped it (the scale went down after inf gradients)."""
    if scaler is None:
        optimizer.step()
        return False
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() < before


def _notify(on_step: Callable | None, record: dict[str, Any], num_iter: int) -> None:
    if on_step is not None:
        on_step({**record, "num_iter": num_iter})
