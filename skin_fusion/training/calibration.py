"""Calibration fitted on held-out data: temperature scaling (Guo et al. 2017) and post-hoc logit adjustment.

Temperature scaling divides every logit by one scalar T fitted on held-out data by minimising the negative
log-likelihood; it changes confidences, never the predicted class. The measures (ECE, NLL) are in
`skin_fusion.evaluation.metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from ..evaluation.metrics import (
    as_numpy,
    balanced_accuracy,
    check_scores_and_labels,
    expected_calibration_error,
    negative_log_likelihood,
)

TEMPERATURE_BOUNDS = (0.05, 20.0)
# Strengths of the post-hoc logit adjustment tried on validation data (0 = the most probable class is the decision).
ADJUSTMENT_STRENGTHS = tuple(np.round(np.arange(0.0, 2.01, 0.1), 2))


def fit_temperature(
    logits: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tolerance: float = 1e-6,
) -> float:
    """The temperature T in `bounds` that minimises the NLL of softmax(logits / T) on held-out (logits, labels).

    Args:
        logits: pre-softmax scores, shape (n, C); not probabilities.
        labels: true class indices, shape (n,).
        bounds: search interval for T; the result stays inside it (separable data push T to the lower bound).
        tolerance: absolute tolerance on log T.

    Returns:
        T > 0; T > 1 softens over-confident predictions, T < 1 sharpens under-confident ones.
    """
    logits, labels = as_numpy(logits).astype(np.float64), as_numpy(labels)
    check_scores_and_labels(logits, labels, "logits")
    low, high = bounds
    if not 0 < low < high or not math.isfinite(high):
        raise ValueError(f"`bounds` must satisfy 0 < low < high < inf; got {bounds}.")
    rows = np.arange(len(labels))

    def nll(log_temperature: float) -> float:
        return float(-log_softmax(logits / math.exp(log_temperature), axis=1)[rows, labels].mean())

    # The NLL is convex in 1/T, hence unimodal in log T: Brent's bounded search finds the constrained optimum
    # deterministically and never leaves the bounds, unlike a gradient method on a flat (separable) objective.
    log_bounds = (math.log(low), math.log(high))
    result = minimize_scalar(nll, bounds=log_bounds, method="bounded", options={"xatol": tolerance})
    return float(math.exp(result.x))


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Training-split class counts plus one (no class gets a zero prior), the `class_prior` of
    `fit_decision_offsets`."""
    return np.bincount(np.asarray(labels), minlength=num_classes) + 1.0


def fit_decision_offsets(
    logits: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    class_prior: np.ndarray,
    strengths: tuple[float, ...] = ADJUSTMENT_STRENGTHS,
) -> tuple[list[float], float]:
    """Post-hoc logit adjustment (Menon et al. 2021): offsets `-tau * log(prior)` with the `tau` of `strengths` that
    maximises balanced accuracy on held-out (logits, labels); ties go to the smaller `tau`.

    Args:
        logits: calibrated held-out logits, shape (n, C).
        labels: true class indices, shape (n,).
        class_prior: class frequencies of the training data, shape (C,), all positive.

    Returns:
        The per-class offsets (added to log-probabilities before the arg-max) and the chosen `tau`.
    """
    logits, labels = as_numpy(logits).astype(np.float64), as_numpy(labels)
    check_scores_and_labels(logits, labels, "logits")
    prior = np.asarray(class_prior, dtype=np.float64)
    if prior.shape != (logits.shape[1],) or (prior <= 0).any():
        raise ValueError(f"`class_prior` must hold {logits.shape[1]} positive class frequencies; got {class_prior}.")
    log_probabilities, log_prior = log_softmax(logits, axis=1), np.log(prior / prior.sum())
    scores = [balanced_accuracy(labels, (log_probabilities - tau * log_prior).argmax(axis=1)) for tau in strengths]
    tau = float(strengths[int(np.argmax(scores))])
    return [float(v) for v in -tau * log_prior], tau


@dataclass
class ValidationCalibration:
    """What is fitted on the validation split after training, and how calibrated it was before and after."""

    temperature: float
    decision_offsets: list[float] | None
    decision_strength: float  # tau of the logit adjustment (0: the most probable class is the decision)
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float


def fit_on_validation(logits: np.ndarray, labels: np.ndarray, train_labels: np.ndarray, num_classes: int,
                      calibrate: bool = True, tune_decisions: bool = True) -> ValidationCalibration:
    """The temperature (if `calibrate`) and the logit adjustment for balanced accuracy (if `tune_decisions`; class
    prior from `train_labels`) fitted on the validation `logits` of a model whose temperature is 1."""
    temperature = fit_temperature(logits, labels) if calibrate else 1.0
    offsets, strength = None, 0.0
    if tune_decisions:
        offsets, strength = fit_decision_offsets(logits / temperature, labels, class_prior(train_labels, num_classes))
    return ValidationCalibration(
        temperature=temperature, decision_offsets=offsets, decision_strength=strength,
        ece_before=expected_calibration_error(softmax(logits, axis=1), labels),
        ece_after=expected_calibration_error(softmax(logits / temperature, axis=1), labels),
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(logits / temperature, labels),
    )
