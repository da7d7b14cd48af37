"""Classification report and confusion matrix for a finished training run.

The trainer hands over plain numpy label arrays; this module turns them into the table people
expect from scikit-learn (for `report.txt` and the CLI) and the same numbers as JSON (for the API),
so the two never disagree. Torch-free: only numpy and scikit-learn.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics

from clrcore.files import write_text
from clrcore.json_safe import json_safe

log = logging.getLogger(__name__)

DIGITS = 4  # decimals in the text table


@dataclass
class Report:
    """A classification report as the human table (`text`) and JSON-safe numbers (`data`).

    `data` is scikit-learn's `output_dict=True` report keyed by class name, plus "accuracy" (float),
    "classes" (the class names in label order) and "confusion_matrix" (list of rows: true label,
    columns: predicted label).
    """

    text: str
    data: dict[str, Any]

    @property
    def accuracy(self) -> float:
        return float(self.data["accuracy"])

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def matrix(self) -> np.ndarray:
        """The confusion matrix as an int64 array, ready for `plots.plot_confusion_matrix`."""
        return np.asarray(self.data["confusion_matrix"], dtype=np.int64)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.data, indent=indent)


def _labels(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, num_classes: int
) -> np.ndarray:
    """Count (true, predicted) pairs into a `num_classes` square int64 matrix (rows are true labels).

    Every class gets a row and a column even when it never occurs, so matrices from different runs
    of the same dataset line up.
    """
    true, pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    for name, array in (("y_true", true), ("y_pred", pred)):
        if array.size and (array.min() < 0 or array.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}")
    counts = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def classification_report(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, class_names: Sequence[str]
) -> Report:
    """Build the per-class precision/recall/F1 table and its JSON twin for labels 0..len(class_names)-1.

    Classes the model never predicts (or the test split never holds) score 0 instead of raising or
    warning, which is the usual state of an early or diverged run.
    """
    names = [str(name) for name in class_names]
    matrix = confusion_matrix(y_true, y_pred, len(names))  # validates shapes and ranges
    true, pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if true.size == 0:
        raise ValueError("cannot report on zero samples")
    options = {"labels": list(range(len(names))), "target_names": names, "zero_division": 0}
    text = metrics.classification_report(true, pred, digits=DIGITS, **options)
    data = json_safe(metrics.classification_report(true, pred, output_dict=True, **options))
    data["accuracy"] = float(np.trace(matrix) / true.size)
    data["classes"] = names
    data["confusion_matrix"] = matrix.tolist()
    log.debug("classification report: %d samples, accuracy %.4f", true.size, data["accuracy"])
    return Report(text=text, data=data)


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write `report.txt` (the table) and `report.json` (the numbers) into `out_dir`; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"text": out / "report.txt", "json": out / "report.json"}
    write_text(paths["text"], report.text if report.text.endswith("\n") else report.text + "\n")
    write_text(paths["json"], report.to_json() + "\n")
    return paths
