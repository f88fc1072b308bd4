"""Test-set evaluation of a trained model: overall and per-subgroup metrics, and the card's plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from ..training.calibration import expected_calibration_error  # noqa: E402
from .metrics import balanced_accuracy, load_lesion_metric  # noqa: E402

AGE_BANDS = (0, 30, 45, 60, 75, 200)
MIN_SUBGROUP_SIZE = 5


def evaluate_probabilities(
    probabilities: np.ndarray, labels: np.ndarray, label_names: list[str], decision_offsets: list[float] | None = None
) -> dict[str, Any]:
    """Every metric of the shipped `evaluate` module (confusion matrix and per-class lists included); decisions are
    the arg-max of the log-probabilities plus `decision_offsets` (see `SkinFusionConfig.decision_offsets`)."""
    metric = load_lesion_metric(len(label_names), keep_in_memory=True, decision_offsets=decision_offsets)
    return metric.compute(predictions=probabilities, references=labels)


def age_band(age: Any) -> str:
    """'45-59'-style band of an age, or 'unknown'."""
    try:
        value = float(age)
    except (TypeError, ValueError):
        return "unknown"
    if np.isnan(value):
        return "unknown"
    for low, high in zip(AGE_BANDS[:-1], AGE_BANDS[1:]):
        if low <= value < high:
            return f"{low}+" if high == AGE_BANDS[-1] else f"{low}-{high - 1}"
    return "unknown"


def subgroup_metrics(
    metadata: pd.DataFrame, probabilities: np.ndarray, labels: np.ndarray, columns: list[str],
    predicted: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Accuracy, balanced accuracy and ECE per value of each metadata column (numeric ones in age bands).

    Subgroups smaller than `MIN_SUBGROUP_SIZE` are reported with their size only: their metrics would be noise.
    `predicted` are the model's decisions (default: the most probable class).
    """
    predicted = probabilities.argmax(axis=1) if predicted is None else predicted
    rows: list[dict[str, Any]] = []
    for column in columns:
        values = metadata[column]
        if pd.api.types.is_numeric_dtype(values):
            groups, name = values.map(age_band), f"{column} band"
        else:
            groups, name = values.fillna("unknown").astype(str).replace("", "unknown"), column
        for group in sorted(groups.unique()):
            mask = (groups == group).to_numpy()
            row: dict[str, Any] = {"feature": name, "group": group, "n": int(mask.sum())}
            if mask.sum() >= MIN_SUBGROUP_SIZE:
                row["accuracy"] = float((predicted[mask] == labels[mask]).mean())
                row["balanced_accuracy"] = balanced_accuracy(labels[mask], predicted[mask])
                row["ece"] = expected_calibration_error(probabilities[mask], labels[mask])
            rows.append(row)
    return rows


def plot_confusion_matrix(matrix: np.ndarray, label_names: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix with counts, as a PNG."""
    matrix = np.asarray(matrix)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(1.6 * len(label_names) + 2, 1.4 * len(label_names) + 1.5))
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(label_names)), label_names, rotation=30, ha="right")
    axes.set_yticks(range(len(label_names)), label_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(j, i, f"{count}\n{normalised[i, j]:.0%}", ha="center", va="center",
                  color="white" if normalised[i, j] > 0.5 else "black", fontsize=8)
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_title("Confusion matrix (test split, row-normalised)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_roc_curves(probabilities: np.ndarray, labels: np.ndarray, label_names: list[str], path: Path,
                    aucs: list[float]) -> Path:
    """One-vs-rest ROC curve per class, as a PNG."""
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for index, name in enumerate(label_names):
        if len(np.unique(labels == index)) < 2:
            continue  # no positive (or no negative) example: no curve
        fpr, tpr, _ = roc_curve(labels == index, probabilities[:, index])
        axes.plot(fpr, tpr, label=f"{name} (AUC {aucs[index]:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("ROC, one vs rest (test split)")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_training_curves(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss, validation loss and validation balanced accuracy by epoch (the Trainer's `log_history`), as a
    PNG; `None` when the run logged no evaluation."""
    train = [(row["epoch"], row["loss"]) for row in log_history if "loss" in row and "epoch" in row]
    evaluation = [row for row in log_history if "eval_loss" in row]
    if not evaluation:
        return None
    figure, (loss_axes, score_axes) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        loss_axes.plot(*zip(*train), label="training loss", linewidth=1)
    loss_axes.plot([row["epoch"] for row in evaluation], [row["eval_loss"] for row in evaluation], marker="o",
                   label="validation loss")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_title("Loss")
    loss_axes.legend(fontsize=8)
    for key, name in (("eval_balanced_accuracy", "balanced accuracy"), ("eval_macro_auc", "macro AUC")):
        if key in evaluation[0]:
            score_axes.plot([row["epoch"] for row in evaluation], [row[key] for row in evaluation], marker="o",
                            label=name)
    score_axes.set_xlabel("epoch")
    score_axes.set_title("Validation (the best epoch is kept)")
    score_axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
