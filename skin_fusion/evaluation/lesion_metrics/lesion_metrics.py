"""Lesion classification metrics from per-class probabilities, as an `evaluate` module loadable by path (offline).

The file is self-contained on purpose: `evaluate.load` copies it into its module cache, so it imports only libraries,
never `skin_fusion` (its ECE mirrors `skin_fusion.training.calibration.expected_calibration_error`; a test keeps them
equal).
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

_DESCRIPTION = """\
Multi-class skin-lesion classification metrics computed with scikit-learn from per-class probabilities:
accuracy, balanced accuracy (mean recall over the classes present in the references), macro F1 (over the classes
present in references or predictions, scikit-learn's default), per-class precision and recall, one-vs-rest ROC AUC
per class and their macro mean, the confusion matrix and the top-label expected calibration error (ECE).

Classes absent from the references: their recall and one-vs-rest AUC are undefined and reported as NaN; the macro
AUC is the mean over the classes whose AUC is defined (present in the references, and not every reference).
scikit-learn's own `roc_auc_score(multi_class="ovr")` returns NaN in that case; with every class present the two agree.
A class never predicted has NaN precision. The confusion matrix is always `num_classes` x `num_classes`.
"""

_CITATION = """\
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks},
  author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle={Proceedings of the 34th International Conference on Machine Learning},
  pages={1321--1330},
  year={2017}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): per-class probabilities, shape (n, num_classes); each row sums to 1
        (apply a softmax to logits first).
    references (`list` of `int`): true class indices in [0, num_classes).
Module arguments (given to `evaluate.load(path, ...)`):
    num_classes (`int`, *optional*): expected number of classes; checked against the width of `predictions`.
    ece_bins (`int`, defaults to 15): number of equal-width confidence bins of the ECE.
    decision_offsets (`list` of `float`, *optional*): per-class offsets added to the log-probabilities before the
        arg-max that gives the predicted class (post-hoc logit adjustment). Accuracy, balanced accuracy, F1,
        precision, recall and the confusion matrix score these decisions; AUC and ECE score the probabilities.
Returns:
    accuracy (`float`), balanced_accuracy (`float`), macro_f1 (`float`),
    precision (`list` of `float`, one per class), recall (`list` of `float`, one per class),
    roc_auc (`list` of `float`, one-vs-rest AUC per class), macro_auc (`float`),
    confusion_matrix (`list` of `list` of `int`, rows are true classes, columns predicted classes),
    ece (`float`), num_examples (`int`).
Examples:
    >>> metric = evaluate.load("skin_fusion/evaluation/lesion_metrics", num_classes=3)
    >>> results = metric.compute(predictions=[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], references=[0, 2])
    >>> results["accuracy"]
    0.5
"""

# Slack for probabilities that went through float32 softmax and storage.
_PROBABILITY_TOLERANCE = 1e-3


def _expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Top-label ECE with equal-width bins (lower edge excluded, upper edge included, as in Guo et al. 2017)."""
    confidences = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], confidences, side="left")
    correct_per_bin = np.bincount(bin_ids, weights=correct, minlength=n_bins)
    confidence_per_bin = np.bincount(bin_ids, weights=confidences, minlength=n_bins)
    return float(np.abs(correct_per_bin - confidence_per_bin).sum() / len(labels))


def _one_vs_rest_auc(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """ROC AUC of each class against the rest; NaN where a class has no positive or no negative reference."""
    aucs = []
    for k in range(probs.shape[1]):
        is_k = labels == k
        aucs.append(float(roc_auc_score(is_k, probs[:, k])) if 0 < is_k.sum() < len(labels) else float("nan"))
    return aucs


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LesionMetrics(evaluate.Metric):
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/AUC, confusion matrix and ECE."""

    def __init__(self, num_classes: int | None = None, ece_bins: int = 15,
                 decision_offsets: list[float] | None = None, **kwargs):
        if num_classes is not None and (type(num_classes) is not int or num_classes < 2):
            raise ValueError(f"`num_classes` must be an integer >= 2 (got {num_classes!r}); pass len(label_names).")
        if type(ece_bins) is not int or ece_bins < 1:
            raise ValueError(f"`ece_bins` must be a positive integer (got {ece_bins!r}); 15 is the usual choice.")
        if decision_offsets is not None and num_classes is not None and len(decision_offsets) != num_classes:
            raise ValueError(f"`decision_offsets` needs one number per class ({num_classes}); got {decision_offsets}.")
        self.num_classes = num_classes
        self.ece_bins = ece_bins
        self.decision_offsets = None if decision_offsets is None else np.asarray(decision_offsets, dtype=np.float64)
        super().__init__(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.List(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/model_evaluation.html",
                "https://arxiv.org/abs/1706.04599",
            ],
        )

    def _compute(self, predictions, references) -> dict:
        probs, labels = self._validated(predictions, references)
        class_ids = list(range(probs.shape[1]))
        predicted = probs.argmax(axis=1)
        if self.decision_offsets is not None:
            with np.errstate(divide="ignore"):  # a probability of exactly 0 is never chosen: log gives -inf
                predicted = (np.log(probs) + self.decision_offsets).argmax(axis=1)
        per_class = {"labels": class_ids, "average": None, "zero_division": np.nan}
        per_class_auc = _one_vs_rest_auc(probs, labels)
        defined_auc = [auc for auc in per_class_auc if not np.isnan(auc)]
        return {
            "accuracy": float(accuracy_score(labels, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, average="macro")),
            # zero_division=nan: a class never predicted (precision) or absent (recall) has no value, not 0.
            "precision": precision_score(labels, predicted, **per_class).tolist(),
            "recall": recall_score(labels, predicted, **per_class).tolist(),
            "roc_auc": per_class_auc,
            "macro_auc": float(np.mean(defined_auc)) if defined_auc else float("nan"),
            "confusion_matrix": confusion_matrix(labels, predicted, labels=class_ids).tolist(),
            "ece": _expected_calibration_error(probs, labels, self.ece_bins),
            "num_examples": len(labels),
        }

    def _validated(self, predictions, references) -> tuple[np.ndarray, np.ndarray]:
        """The inputs as (n, C) float64 probabilities and (n,) int64 labels, or a ValueError that says the fix."""
        labels = np.asarray(references, dtype=np.int64)
        if len(labels) == 0:
            raise ValueError("No examples to score: add predictions and references with `add_batch` before `compute`.")
        widths = {len(row) for row in predictions}
        if len(widths) != 1:
            raise ValueError(f"Each prediction needs one probability per class; got rows of lengths {sorted(widths)}.")
        probs = np.asarray(predictions, dtype=np.float64)
        num_classes = probs.shape[1]
        if num_classes < 2:
            raise ValueError(f"Predictions need at least 2 class probabilities per row (got {num_classes}).")
        if self.num_classes is not None and num_classes != self.num_classes:
            raise ValueError(
                f"Predictions have {num_classes} columns but the metric was loaded with num_classes={self.num_classes}."
            )
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"References must be class indices in [0, {num_classes}); got values {np.unique(labels)}.")
        row_sums = probs.sum(axis=1)
        if (
            not np.isfinite(probs).all()
            or probs.min() < -_PROBABILITY_TOLERANCE
            or probs.max() > 1 + _PROBABILITY_TOLERANCE
            or np.abs(row_sums - 1).max() > _PROBABILITY_TOLERANCE
        ):
            raise ValueError(
                "Predictions must be probabilities in [0, 1] whose rows sum to 1; these look like logits "
                f"(row sums range {row_sums.min():.3g}..{row_sums.max():.3g}). Apply a softmax first."
            )
        return probs, labels
