"""PNG plots for run folders: the LR range test, training history, LR schedule, confusion matrix.

Every plot is drawn on a bare `matplotlib.figure.Figure` with an Agg canvas, never through pyplot,
so there is no global figure registry or backend to select and worker threads can draw at once.
Every PNG is `SIZE_PX` (800 x 500 pixels: 8 x 5 inches at 100 dpi) so a UI can lay them out
without reading them first. Inputs are plain lists / numpy arrays; NaN, inf and None are dropped
rather than plotted. Torch-free: only numpy and matplotlib.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from clrcore.files import atomic_write

log = logging.getLogger(__name__)

FIGSIZE_IN = (8.0, 5.0)
DPI = 100
SIZE_PX = (int(FIGSIZE_IN[0] * DPI), int(FIGSIZE_IN[1] * DPI))

# Above these class counts the confusion matrix drops its cell counts / tick labels (unreadable).
MAX_ANNOTATED_CLASSES = 20
MAX_LABELLED_CLASSES = 40

Values = Sequence[float | None] | np.ndarray


# ---------------------------------------------------------------- helpers


def _new_figure() -> Figure:
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG at the fixed size (no tight bbox: that would change the size)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as handle:  # the API may serve this file while the job runs
        fig.savefig(handle, format="png", dpi=DPI)
    fig.clear()  # no pyplot registry to close from; this frees the artists now
    log.debug("wrote plot %s", out)
    return out


def _floats(values: Values | None) -> np.ndarray:
    """A float array with None turned into NaN (history lists hold None for skipped validation)."""
    if values is None:
        return np.empty(0)
    return np.array([np.nan if v is None else v for v in values], dtype=float).reshape(-1)


def _finite(x: Values | None, y: Values | None, *, positive_x: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The pairs where both x and y are finite (and x > 0 for log axes), truncated to equal length."""
    xs, ys = _floats(x), _floats(y)
    n = min(xs.size, ys.size)
    xs, ys = xs[:n], ys[:n]
    keep = np.isfinite(xs) & np.isfinite(ys)
    if positive_x:
        keep &= xs > 0
    return xs[keep], ys[keep]


def _empty_note(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _is_lr(value: float | None) -> TypeGuard[float]:
    return value is not None and bool(np.isfinite(value)) and value > 0


# ---------------------------------------------------------------- range test


def _loss_limits(losses: np.ndarray) -> tuple[float, float]:
    """Y-limits that show the dip and the start but not the blow-up.

    The ceiling is the lower of the 95th percentile and 4x the best loss (where a range test is
    usually called diverged), raised to include the starting loss; the floor sits a little under
    the best loss.
    """
    best, start = float(losses.min()), float(losses[0])
    ceiling = min(float(np.percentile(losses, 95)), best + 3.0 * abs(best))
    top = max(ceiling, start)
    span = top - best or abs(best) * 0.1 or 1.0
    return best - 0.05 * span, top + 0.05 * span


def _mark_range_test(
    ax: Axes,
    lrs: np.ndarray,
    losses: np.ndarray,
    suggestions: Mapping[str, float | None],
    band: tuple[float, float] | None,
    diverged_at: float | None,
) -> None:
    if band is not None and all(_is_lr(v) for v in band):
        low, high = sorted(band)
        ax.axvspan(low, high, color="tab:green", alpha=0.12, label=f"recommended {low:.2g} – {high:.2g}")
    markers = iter(["o", "s", "^", "D", "v", "P", "X", "*"])
    for index, (name, lr) in enumerate(suggestions.items()):
        if not _is_lr(lr):
            continue
        color = f"C{(index + 2) % 10}"
        ax.axvline(lr, color=color, linewidth=0.8, linestyle=":")
        if lrs.size:
            loss = float(np.interp(np.log10(lr), np.log10(lrs), losses))
            ax.plot([lr], [loss], marker=next(markers, "o"), color=color, linestyle="none",
                    markersize=7, label=f"{name}: {lr:.2g}")
    if _is_lr(diverged_at):
        ax.axvline(diverged_at, color="tab:red", linestyle="--", linewidth=1.0,
                   label=f"diverged at {diverged_at:.2g}")


def _validation_panel(ax: Axes, val: Mapping[str, Any]) -> None:
    """Validation loss (left axis) and accuracy (right axis) against LR, from a sparse val sweep."""
    lr_loss, loss = _finite(val.get("lr"), val.get("val_loss"), positive_x=True)
    lr_acc, acc = _finite(val.get("lr"), val.get("val_acc"), positive_x=True)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("val loss", color="tab:purple")
    if lr_loss.size:
        ax.plot(lr_loss, loss, color="tab:purple", marker=".", label="val loss")
        ax.set_ylim(*_loss_limits(loss))  # one huge loss at a high LR would flatten the rest
    twin = ax.twinx()
    twin.set_ylabel("val accuracy", color="tab:olive")
    if lr_acc.size:
        twin.plot(lr_acc, acc, color="tab:olive", marker=".", label="val accuracy")
    if not (lr_loss.size or lr_acc.size):
        _empty_note(ax, "no finite validation points")


def plot_range_test(
    path: str | Path,
    lrs: Values,
    smoothed: Values,
    raw: Values | None = None,
    suggestions: Mapping[str, float | None] | None = None,
    band: tuple[float, float] | None = None,
    diverged_at: float | None = None,
    val: Mapping[str, Any] | None = None,
) -> Path:
    """Plot an LR range test: smoothed loss over LR (log x), suggestions, recommended band, divergence.

    `raw` is drawn faintly behind the smoothed curve; `val` (keys "lr", "val_loss", "val_acc") adds
    a second panel below. The y-axis is clipped so the final blow-up does not flatten the dip.
    """
    fig = _new_figure()
    if val:
        ax, val_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    else:
        ax, val_ax = fig.subplots(), None
    xs, ys = _finite(lrs, smoothed, positive_x=True)
    raw_x, raw_y = _finite(lrs, raw, positive_x=True)
    ax.set_xscale("log")
    ax.set_ylabel("loss")
    ax.set_title("LR range test")
    if raw_x.size:
        ax.plot(raw_x, raw_y, color="tab:blue", alpha=0.25, linewidth=0.8, label="raw loss")
    if xs.size:
        ax.plot(xs, ys, color="tab:blue", linewidth=1.6, label="smoothed loss")
        ax.set_ylim(*_loss_limits(ys))
    else:
        _empty_note(ax, "no finite loss values")
    _mark_range_test(ax, xs, ys, suggestions or {}, band, diverged_at)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    ax.grid(True, alpha=0.25)
    if val_ax is not None:
        _validation_panel(val_ax, val or {})
    else:
        ax.set_xlabel("learning rate")
    return _save(fig, path)


# ---------------------------------------------------------------- history and schedule


def _plot_series(ax: Axes, x: Values, y: Values | None, **style: Any) -> bool:
    xs, ys = _finite(x, y)
    if xs.size:
        ax.plot(xs, ys, **{"marker": ".", **style})
    return bool(xs.size)


def plot_history(path: str | Path, history: Mapping[str, Values | None]) -> Path:
    """Plot loss and accuracy per epoch, train and validation, side by side.

    `history` holds lists under "epoch", "train_loss", "train_acc", "val_loss", "val_acc"; the val
    lists may be missing or hold None for epochs without validation.
    """
    fig = _new_figure()
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = history.get("epoch")
    if epochs is None:
        epochs = list(range(1, len(history.get("train_loss") or []) + 1))
    for ax, metric, title in ((loss_ax, "loss", "loss"), (acc_ax, "acc", "accuracy")):
        drawn = [
            _plot_series(ax, epochs, history.get(f"train_{metric}"), color="tab:blue", label="train"),
            _plot_series(ax, epochs, history.get(f"val_{metric}"), color="tab:orange", label="validation"),
        ]
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.25)
        if any(drawn):
            ax.legend(fontsize="small")
        else:
            _empty_note(ax, "no epochs yet")
    return _save(fig, path)


def plot_lr_schedule(path: str | Path, steps: Values, lrs: Values, momentums: Values | None = None) -> Path:
    """Plot the learning rate per iteration, with momentum (or Adam's beta1) on a right-hand axis.

    Used for the schedule preview before training and for the schedule actually applied after it.
    """
    fig = _new_figure()
    ax = fig.subplots()
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate", color="tab:blue")
    ax.set_title("learning rate schedule")
    ax.grid(True, alpha=0.25)
    drawn = _plot_series(ax, steps, lrs, color="tab:blue", marker=None, label="learning rate")
    if momentums is not None:
        twin = ax.twinx()
        twin.set_ylabel("momentum", color="tab:orange")
        drawn |= _plot_series(twin, steps, momentums, color="tab:orange", marker=None, linestyle="--",
                              label="momentum")
    if not drawn:
        _empty_note(ax, "no finite schedule values")
    return _save(fig, path)


# ---------------------------------------------------------------- confusion matrix


def plot_confusion_matrix(path: str | Path, matrix: np.ndarray | Sequence[Sequence[int]],
                          class_names: Sequence[str]) -> Path:
    """Plot the confusion matrix as a heatmap coloured by row (recall per true class), counts written in.

    Row-normalised colours keep a rare class readable next to a common one; the counts keep the
    absolute numbers. Large class counts drop the cell text and then the tick labels.
    """
    counts = np.asarray(matrix)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"matrix shape {counts.shape} does not match {n} class names")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    fig = _new_figure()
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({int(counts.sum())} samples)")
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right", fontsize="small")
        ax.set_yticks(range(n), labels=list(class_names), fontsize="small")
    if n <= MAX_ANNOTATED_CLASSES:
        for (i, j), count in np.ndenumerate(counts):
            ax.text(j, i, str(int(count)), ha="center", va="center", fontsize="small",
                    color="white" if share[i, j] > 0.5 else "black")
    return _save(fig, path)
