"""The evaluation plots of a trained model (confusion matrix, ROC curves, training curves), as PNG files.

Figures are `matplotlib.figure.Figure` objects drawn straight to their file: no pyplot state and no backend to
choose, so importing this module changes nothing for a notebook's inline plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from ..files import CONFUSION_MATRIX_FILE, ROC_CURVES_FILE

DPI = 110


def save_figure(figure: Figure, path: Path, dpi: int = DPI) -> Path:
    """Lay the figure out tightly and write it to `path` (PNG by its suffix)."""
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    return path


def plot_confusion_matrix(matrix: np.ndarray, label_names: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix with counts, as a PNG."""
    matrix = np.asarray(matrix)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(1.6 * len(label_names) + 2, 1.4 * len(label_names) + 1.5))
    axes = figure.subplots()
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
    return save_figure(figure, path)


def plot_roc_curves(probabilities: np.ndarray, labels: np.ndarray, label_names: list[str], path: Path,
                    aucs: list[float]) -> Path:
    """One-vs-rest ROC curve per class, as a PNG."""
    figure = Figure(figsize=(5.5, 5))
    axes = figure.subplots()
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
    return save_figure(figure, path)


def plot_test_results(results: dict[str, Any], probabilities: np.ndarray, labels: np.ndarray, label_names: list[str],
                      output_dir: Path) -> None:
    """`confusion_matrix.png` and `roc_curves.png` of a test split's `results` (the lesion metric's), in
    `output_dir`: the plots a model card shows."""
    plot_confusion_matrix(np.asarray(results["confusion_matrix"]), label_names, output_dir / CONFUSION_MATRIX_FILE)
    plot_roc_curves(probabilities, labels, label_names, output_dir / ROC_CURVES_FILE, results["roc_auc"])


def plot_training_curves(log_histories: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Training loss, validation loss and validation balanced accuracy by epoch of one or more runs (the Trainer's
    `log_history`, by run name), as a PNG; `None` when no run logged an evaluation."""
    runs = {name: history for name, history in log_histories.items() if any("eval_loss" in row for row in history)}
    if not runs:
        return None
    figure = Figure(figsize=(10, 3.6))
    loss_axes, score_axes = figure.subplots(1, 2)
    for colour, (name, history) in enumerate(runs.items()):
        train = [(row["epoch"], row["loss"]) for row in history if "loss" in row and "epoch" in row]
        evaluation = [row for row in history if "eval_loss" in row]
        prefix, colours = (f"{name}: " if len(runs) > 1 else ""), [f"C{2 * colour}", f"C{2 * colour + 1}"]
        if train:
            loss_axes.plot(*zip(*train), label=f"{prefix}training loss", linewidth=1, color=colours[0])
        loss_axes.plot([row["epoch"] for row in evaluation], [row["eval_loss"] for row in evaluation], marker="o",
                       label=f"{prefix}validation loss", color=colours[1])
        for key, label, style in (("eval_balanced_accuracy", "balanced accuracy", "-"),
                                  ("eval_macro_auc", "macro AUC", "--")):
            if key in evaluation[0]:
                score_axes.plot([row["epoch"] for row in evaluation], [row[key] for row in evaluation], marker="o",
                                linestyle=style, label=f"{prefix}{label}", color=colours[1])
    loss_axes.set_xlabel("epoch")
    loss_axes.set_title("Loss")
    loss_axes.legend(fontsize=8 if len(runs) == 1 else 6)
    score_axes.set_xlabel("epoch")
    score_axes.set_title("Validation (the best epoch is kept)")
    score_axes.legend(fontsize=8 if len(runs) == 1 else 6)
    return save_figure(figure, path)
