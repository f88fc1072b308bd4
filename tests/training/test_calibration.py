"""Expected calibration error and NLL (`skin_fusion.evaluation.metrics`) and temperature scaling
(`skin_fusion.training.calibration`)."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from skin_fusion.evaluation.metrics import expected_calibration_error, negative_log_likelihood
from skin_fusion.training.calibration import TEMPERATURE_BOUNDS, class_prior, fit_temperature

NUM_CLASSES = 5


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's probabilities, so `probs` are calibrated by construction."""
    return (rng.random(len(probs))[:, None] > probs.cumsum(axis=1)).sum(axis=1).clip(max=probs.shape[1] - 1)


def calibrated_logits(num_examples: int = 20000, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.normal(size=(num_examples, NUM_CLASSES))
    return logits, sample_labels(softmax(logits, axis=1), rng)


def test_ece_of_calibrated_probabilities_is_near_zero():
    logits, labels = calibrated_logits()
    assert expected_calibration_error(softmax(logits, axis=1), labels) < 0.02


def test_ece_of_over_confident_probabilities_is_large():
    logits, labels = calibrated_logits()
    assert expected_calibration_error(softmax(3.0 * logits, axis=1), labels) > 0.15


def test_ece_equals_hand_computed_value():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    # Bins of width 1/15: 0.7 (right) and 0.8 (wrong) fall in separate bins: (0.3 + 0.8) / 2.
    assert expected_calibration_error(probs, np.array([0, 2])) == pytest.approx(0.55)


@pytest.mark.parametrize("true_temperature", [0.5, 2.0, 4.0])
def test_fit_temperature_recovers_the_generating_temperature(true_temperature):
    rng = np.random.default_rng(1)
    logits = 3.0 * rng.normal(size=(20000, NUM_CLASSES))
    labels = sample_labels(softmax(logits / true_temperature, axis=1), rng)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_fit_temperature_lowers_nll_and_ece_of_over_confident_logits():
    logits, labels = calibrated_logits()
    over_confident = 3.0 * logits
    temperature = fit_temperature(over_confident, labels)
    scaled = over_confident / temperature

    assert temperature == pytest.approx(3.0, rel=0.05)
    assert negative_log_likelihood(scaled, labels) < 0.8 * negative_log_likelihood(over_confident, labels)
    assert expected_calibration_error(softmax(scaled, axis=1), labels) < 0.02


def test_fit_temperature_is_deterministic_and_accepts_tensors():
    logits, labels = calibrated_logits(num_examples=2000)
    from_numpy = fit_temperature(logits, labels)
    assert fit_temperature(logits, labels) == from_numpy
    from_tensors = fit_temperature(torch.from_numpy(logits).float(), torch.from_numpy(labels))
    assert from_tensors == pytest.approx(from_numpy, rel=1e-4)


def test_fit_temperature_stays_in_bounds_on_separable_data():
    logits, _ = calibrated_logits(num_examples=2000)
    temperature = fit_temperature(logits, logits.argmax(axis=1))
    low, _high = TEMPERATURE_BOUNDS
    assert low <= temperature < 1.01 * low


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        (np.empty((0, NUM_CLASSES)), np.empty(0, dtype=int), "is empty"),
        (np.full((3, NUM_CLASSES), 0.2), np.array([0, 1]), "has 3 rows but `labels` has 2"),
        (np.full((2, NUM_CLASSES), 0.2), np.array([0, NUM_CLASSES]), r"must lie in \[0, 5\)"),
        (np.full((2, NUM_CLASSES), 0.2), np.array([0.0, 1.0]), "integer class indices"),
        (np.full(NUM_CLASSES, 0.2), np.array([0]), "must be 2-D"),
        (np.array([[np.nan, 1.0]]), np.array([0]), "NaN or infinite"),
    ],
)
@pytest.mark.parametrize("function", [expected_calibration_error, fit_temperature])
def test_bad_inputs_raise_clear_errors(function, scores, labels, message):
    with pytest.raises(ValueError, match=message):
        function(scores, labels)


def test_ece_refuses_logits():
    with pytest.raises(ValueError, match="apply a softmax"):
        expected_calibration_error(np.array([[2.0, -1.0], [0.5, 0.1]]), np.array([0, 1]))


def test_decision_offsets_raise_balanced_accuracy_of_a_model_that_favours_the_majority():
    from skin_fusion.training.calibration import ADJUSTMENT_STRENGTHS, fit_decision_offsets
    from skin_fusion.evaluation.metrics import balanced_accuracy

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [800, 150, 50])
    prior = np.bincount(labels) / len(labels)
    # Class-informative logits plus the log-prior: the majority class wins most close calls.
    logits = rng.normal(size=(len(labels), 3)) + 1.5 * np.eye(3)[labels] + np.log(prior)
    offsets, tau = fit_decision_offsets(logits, labels, np.bincount(labels))
    assert tau in ADJUSTMENT_STRENGTHS and tau > 0
    np.testing.assert_allclose(offsets, -tau * np.log(prior))
    adjusted = balanced_accuracy(labels, (log_softmax(logits, axis=1) + offsets).argmax(1))
    assert adjusted > balanced_accuracy(labels, logits.argmax(1)) + 0.05


def test_decision_offsets_stay_zero_when_the_plain_arg_max_is_already_balanced():
    from skin_fusion.training.calibration import fit_decision_offsets

    labels = np.repeat([0, 1], 50)
    logits = np.eye(2)[labels] * 4.0
    offsets, tau = fit_decision_offsets(logits, labels, np.array([90, 10]))
    assert tau == 0 and offsets == [0.0, 0.0]


def test_class_prior_counts_every_class_plus_one_so_none_is_zero():
    assert class_prior(np.array([0, 0, 2]), 4).tolist() == [3.0, 1.0, 2.0, 1.0]
