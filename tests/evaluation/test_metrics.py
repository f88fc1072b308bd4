"""The shipped `lesion_metrics` evaluate module and the Trainer adapter in `skin_fusion.evaluation.metrics`."""

import multiprocessing
import os

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from transformers import EvalPrediction

from skin_fusion.evaluation import metrics
from skin_fusion.evaluation.metrics import build_compute_metrics, expected_calibration_error, load_lesion_metric

NUM_CLASSES = 7
LABEL_NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def make_logits_and_labels(seed: int = 0, num_examples: int = 300, absent_class: int | None = None):
    """Seeded logits that lean towards the true class, so every metric is away from its trivial value."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, num_examples)
    if absent_class is not None:
        labels[labels == absent_class] = (absent_class + 1) % NUM_CLASSES
    logits = rng.normal(size=(num_examples, NUM_CLASSES)) + 1.5 * np.eye(NUM_CLASSES)[labels]
    return logits, labels


def compute_in_batches(metric, probs: np.ndarray, labels: np.ndarray, num_batches: int) -> dict:
    for batch_probs, batch_labels in zip(
        np.array_split(probs, num_batches), np.array_split(labels, num_batches), strict=True
    ):
        metric.add_batch(predictions=batch_probs, references=batch_labels)
    return metric.compute()


@pytest.mark.parametrize("num_batches", [1, 4])
def test_module_equals_sklearn(num_batches):
    logits, labels = make_logits_and_labels()
    probs = softmax(logits, axis=1)
    predicted = probs.argmax(axis=1)
    classes = list(range(NUM_CLASSES))
    results = compute_in_batches(load_lesion_metric(NUM_CLASSES, keep_in_memory=True), probs, labels, num_batches)

    assert results["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert results["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert results["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    np.testing.assert_allclose(results["precision"], precision_score(labels, predicted, labels=classes, average=None))
    np.testing.assert_allclose(results["recall"], recall_score(labels, predicted, labels=classes, average=None))
    assert results["macro_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    np.testing.assert_allclose(results["roc_auc"], roc_auc_score(np.eye(NUM_CLASSES)[labels], probs, average=None))
    assert results["confusion_matrix"] == confusion_matrix(labels, predicted).tolist()
    assert results["num_examples"] == len(labels)
    assert 0.3 < results["accuracy"] < 0.9


def test_module_ece_equals_calibration_function():
    logits, labels = make_logits_and_labels(seed=1)
    probs = softmax(logits, axis=1)
    results = load_lesion_metric(NUM_CLASSES, ece_bins=10, keep_in_memory=True).compute(
        predictions=probs, references=labels
    )
    assert results["ece"] == pytest.approx(expected_calibration_error(probs, labels, n_bins=10))


def test_absent_class_gets_nan_auc_and_macro_auc_over_present_classes():
    logits, labels = make_logits_and_labels(absent_class=3)
    probs = softmax(logits, axis=1)
    results = load_lesion_metric(NUM_CLASSES, keep_in_memory=True).compute(predictions=probs, references=labels)

    present = [k for k in range(NUM_CLASSES) if k != 3]
    expected = [roc_auc_score(labels == k, probs[:, k]) for k in present]
    assert np.isnan(results["roc_auc"][3])
    np.testing.assert_allclose([results["roc_auc"][k] for k in present], expected)
    assert results["macro_auc"] == pytest.approx(np.mean(expected))


def test_absent_class_keeps_confusion_matrix_shape_and_has_nan_recall():
    logits, labels = make_logits_and_labels(absent_class=6)
    results = load_lesion_metric(NUM_CLASSES, keep_in_memory=True).compute(
        predictions=softmax(logits, axis=1), references=labels
    )
    matrix = np.array(results["confusion_matrix"])
    assert matrix.shape == (NUM_CLASSES, NUM_CLASSES)
    assert matrix[6].sum() == 0
    assert matrix.sum() == len(labels)
    assert np.isnan(results["recall"][6])


def test_logits_are_refused_with_a_softmax_hint():
    logits, labels = make_logits_and_labels()
    metric = load_lesion_metric(NUM_CLASSES, keep_in_memory=True)
    with pytest.raises(ValueError, match="Apply a softmax"):
        metric.compute(predictions=logits, references=labels)


def test_prediction_width_must_match_num_classes():
    logits, labels = make_logits_and_labels()
    metric = load_lesion_metric(NUM_CLASSES + 1, keep_in_memory=True)
    with pytest.raises(ValueError, match="num_classes=8"):
        metric.compute(predictions=softmax(logits, axis=1), references=labels)


def test_module_loads_from_its_file_with_the_hub_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    metric = load_lesion_metric(NUM_CLASSES)
    assert metric.name == "lesion_metrics"
    assert "expected calibration error" in metric.description
    assert set(metric.features) == {"predictions", "references"}


def test_missing_module_file_raises_with_its_path(monkeypatch, tmp_path):
    missing = tmp_path / "lesion_metrics.py"
    monkeypatch.setattr(metrics, "LESION_METRIC_PATH", missing)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_lesion_metric(NUM_CLASSES)


def _compute_in_process(process_id, num_process, cache_dir, probs, labels, results):
    metric = load_lesion_metric(
        NUM_CLASSES, num_process=num_process, process_id=process_id, cache_dir=cache_dir, experiment_id="shards"
    )
    metric.add_batch(predictions=probs, references=labels)
    results.put((process_id, metric.compute()))


def test_processes_sharing_a_cache_dir_compute_over_all_shards(tmp_path):
    logits, labels = make_logits_and_labels()
    probs = softmax(logits, axis=1)
    # Fork: the children reuse the already imported `evaluate` instead of paying its import again.
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [
        context.Process(target=_compute_in_process, args=(i, 2, str(tmp_path), probs[i::2], labels[i::2], results))
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    by_process = dict(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)

    single = load_lesion_metric(NUM_CLASSES, keep_in_memory=True).compute(predictions=probs, references=labels)
    assert by_process[1] is None
    assert by_process[0]["num_examples"] == len(labels)
    assert by_process[0]["confusion_matrix"] == single["confusion_matrix"]
    assert by_process[0]["macro_auc"] == pytest.approx(single["macro_auc"])


def test_compute_metrics_returns_flat_floats_named_by_label():
    logits, labels = make_logits_and_labels()
    output = build_compute_metrics(LABEL_NAMES)(EvalPrediction(predictions=logits, label_ids=labels))

    expected_keys = {"accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece"}
    for prefix in ("precision", "recall", "auc"):
        expected_keys |= {f"{prefix}_{name}" for name in LABEL_NAMES}
    assert set(output) == expected_keys
    assert all(type(value) is float for value in output.values())
    predicted = logits.argmax(axis=1)
    assert output["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert output["recall_mel"] == pytest.approx(recall_score(labels == 4, predicted == 4))
    assert output["macro_auc"] == pytest.approx(roc_auc_score(labels, softmax(logits, axis=1), multi_class="ovr"))


def test_compute_metrics_takes_logits_first_from_tuple_predictions():
    logits, labels = make_logits_and_labels()
    compute_metrics = build_compute_metrics(LABEL_NAMES)
    hidden = np.zeros((len(labels), 16))
    from_tuple = compute_metrics(EvalPrediction(predictions=(logits, hidden), label_ids=labels))
    assert from_tuple == compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))


def test_compute_metrics_refuses_duplicate_label_names():
    with pytest.raises(ValueError, match="distinct class names"):
        build_compute_metrics(["mel", "nv", "mel"])


def test_decision_offsets_score_the_adjusted_decisions_and_leave_auc_and_ece_to_the_probabilities():
    logits, labels = make_logits_and_labels(seed=3)
    probs = softmax(logits, axis=1)
    offsets = [0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0]  # raise "mel"
    plain = load_lesion_metric(NUM_CLASSES, keep_in_memory=True).compute(predictions=probs, references=labels)
    adjusted = load_lesion_metric(NUM_CLASSES, keep_in_memory=True, decision_offsets=offsets).compute(
        predictions=probs, references=labels)
    decisions = (np.log(probs) + offsets).argmax(1)
    assert adjusted["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, decisions))
    assert adjusted["recall"][4] > plain["recall"][4]
    assert adjusted["macro_auc"] == plain["macro_auc"] and adjusted["ece"] == plain["ece"]
