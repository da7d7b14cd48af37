"""Classification report and confusion matrix: sklearn's numbers, hand counts, absent classes."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics

from clrcore.reports import classification_report, confusion_matrix, write_report

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["cat", "dog", "bird"]
Y_TRUE = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
Y_PRED = np.array([0, 1, 1, 1, 0, 2, 1, 0, 1, 2])


def test_text_table_names_every_class_and_the_averages():
    text = classification_report(Y_TRUE, Y_PRED, CLASSES).text
    for word in [*CLASSES, "precision", "recall", "f1-score", "support", "accuracy", "macro avg",
                 "weighted avg"]:
        assert word in text
    assert "0.7000" in text  # digits=4


def test_json_matches_sklearn_numbers():
    report = classification_report(Y_TRUE, Y_PRED, CLASSES)
    expected = metrics.classification_report(Y_TRUE, Y_PRED, target_names=CLASSES, output_dict=True)
    data = json.loads(report.to_json())
    for key in [*CLASSES, "macro avg", "weighted avg"]:
        assert data[key] == pytest.approx(expected[key])
    assert data["accuracy"] == pytest.approx(expected["accuracy"])
    assert data["classes"] == CLASSES
    assert data["confusion_matrix"] == metrics.confusion_matrix(Y_TRUE, Y_PRED).tolist()


def test_accuracy_matches_a_hand_count():
    report = classification_report(Y_TRUE, Y_PRED, CLASSES)
    assert report.accuracy == pytest.approx(7 / 10)
    assert isinstance(report.accuracy, float)


def test_classes_never_predicted_or_present_score_zero_without_warning():
    names = ["a", "b", "c", "d"]
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = classification_report(y_true, y_pred, names)
    for name in ("b", "c", "d"):
        assert name in report.text
        assert report.data[name]["f1-score"] == 0.0
    assert report.data["d"]["support"] == 0
    assert report.accuracy == 0.5
    assert report.matrix.shape == (4, 4)


def test_confusion_matrix_counts_pairs_and_sums_to_n():
    matrix = confusion_matrix(Y_TRUE, Y_PRED, 4)
    assert matrix.shape == (4, 4)
    assert matrix.sum() == Y_TRUE.size
    assert matrix[1, 0] == 1 and matrix[0, 0] == 2  # rows are true labels
    assert matrix[3].sum() == 0 and matrix[:, 3].sum() == 0


def test_confusion_matrix_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)


def test_write_report_writes_text_and_json(tmp_path):
    report = classification_report(Y_TRUE, Y_PRED, CLASSES)
    paths = write_report(report, tmp_path / "run")
    assert paths["text"].read_text().strip() == report.text.strip()
    assert json.loads(paths["json"].read_text()) == report.data
    assert set(paths) == {"text", "json"}


def test_importing_reports_and_plots_does_not_load_torch():
    code = "import clrcore.reports, clrcore.plots, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
