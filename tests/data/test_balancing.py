"""Class balancing strategies change the training class counts exactly as documented."""

import numpy as np
import pytest

from skin_fusion.data.balancing import (
    STRATEGY_TABLE,
    BALANCING_STRATEGIES,
    balance_dataset,
    class_counts,
    class_weights,
    describe_balancing,
    resample_indices,
    sample_weights,
    smote_features,
)

# 12 pigmented benign keratosis (2), 5 squamous cell carcinoma (1), 3 actinic keratosis (0), shuffled.
LABELS = np.random.default_rng(0).permutation([2] * 12 + [1] * 5 + [0] * 3)


def test_none_keeps_every_row_once():
    np.testing.assert_array_equal(resample_indices(LABELS, "none", seed=0), np.arange(len(LABELS)))


def test_oversample_brings_every_class_to_the_majority_count():
    indices = resample_indices(LABELS, "oversample", seed=0)
    np.testing.assert_array_equal(class_counts(LABELS[indices]), [12, 12, 12])
    assert set(indices) == set(range(len(LABELS)))  # every original row is kept


def test_undersample_brings_every_class_to_the_minority_count():
    indices = resample_indices(LABELS, "undersample", seed=0)
    np.testing.assert_array_equal(class_counts(LABELS[indices]), [3, 3, 3])
    assert len(set(indices)) == len(indices)  # no row is repeated


def test_augment_repeats_every_minority_row_evenly():
    indices = resample_indices(LABELS, "augment", seed=0)
    np.testing.assert_array_equal(class_counts(LABELS[indices]), [12, 12, 12])
    repeats = np.bincount(indices, minlength=len(LABELS))
    assert set(repeats[LABELS == 0]) == {4}  # 12 / 3
    assert set(repeats[LABELS == 1]) == {2, 3}  # 12 / 5 = 2 rounds, 2 rows get a third copy
    assert set(repeats[LABELS == 2]) == {1}


@pytest.mark.parametrize("strategy", ["oversample", "undersample", "augment"])
def test_resampling_is_reproducible_and_seeded(strategy):
    first = resample_indices(LABELS, strategy, seed=1)
    np.testing.assert_array_equal(first, resample_indices(LABELS, strategy, seed=1))
    assert any(not np.array_equal(first, resample_indices(LABELS, strategy, seed=s)) for s in range(2, 6))


@pytest.mark.parametrize("strategy", ["class_weights", "weighted_sampler", "smote"])
def test_strategies_that_act_elsewhere_keep_the_rows(strategy):
    np.testing.assert_array_equal(resample_indices(LABELS, strategy, seed=0), np.arange(len(LABELS)))


def test_class_weights_are_inverse_frequency_with_mean_one_over_rows():
    weights = class_weights(LABELS, num_classes=3)
    np.testing.assert_allclose(weights, [20 / (3 * 3), 20 / (3 * 5), 20 / (3 * 12)])
    assert np.mean(np.asarray(weights)[LABELS]) == pytest.approx(1.0)


def test_class_weights_match_sklearn_balanced():
    from sklearn.utils.class_weight import compute_class_weight

    expected = compute_class_weight("balanced", classes=np.arange(3), y=LABELS)
    np.testing.assert_allclose(class_weights(LABELS, num_classes=3), expected)


def test_class_weights_refuse_a_class_without_rows():
    with pytest.raises(ValueError, match=r"Class\(es\) \[3\] have no training rows"):
        class_weights(LABELS, num_classes=4)


def test_sample_weights_give_every_class_the_same_total():
    weights = sample_weights(LABELS)
    totals = [weights[LABELS == c].sum() for c in range(3)]
    np.testing.assert_allclose(totals, totals[0])


def test_smote_balances_features_and_keeps_the_originals_first():
    features = np.random.default_rng(0).normal(size=(len(LABELS), 4))
    resampled, labels = smote_features(features, LABELS, seed=0)
    np.testing.assert_array_equal(class_counts(labels), [12, 12, 12])
    np.testing.assert_array_equal(resampled[: len(LABELS)], features)
    np.testing.assert_array_equal(labels[: len(LABELS)], LABELS)


def test_smote_rows_are_convex_combinations_of_two_rows_of_their_class():
    features = np.random.default_rng(1).normal(size=(len(LABELS), 3))
    resampled, labels = smote_features(features, LABELS, seed=0)
    for row, label in zip(resampled[len(LABELS) :], labels[len(LABELS) :]):
        same_class = features[LABELS == label]
        assert any(_on_segment(row, a, b) for a in same_class for b in same_class), row


def _on_segment(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    direction = b - a
    if not direction.any():
        return np.allclose(point, a)
    t = np.dot(point - a, direction) / np.dot(direction, direction)
    return -1e-9 <= t <= 1 + 1e-9 and np.allclose(a + t * direction, point)


def test_smote_refuses_images():
    images = np.zeros((len(LABELS), 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="not applied to images"):
        smote_features(images, LABELS, seed=0)


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="use one of .*'oversample'.*'smote'"):
        resample_indices(LABELS, "rebalance", seed=0)
    with pytest.raises(ValueError, match="Unknown balancing strategy"):
        describe_balancing("rebalance")


def test_empty_labels_are_refused():
    with pytest.raises(ValueError, match="labels is empty"):
        resample_indices(np.array([], dtype=int), "oversample", seed=0)


def test_undersample_refuses_a_class_without_rows():
    with pytest.raises(ValueError, match=r"Cannot undersample: class\(es\) \[3\]"):
        resample_indices(LABELS, "undersample", seed=0, num_classes=4)


def test_every_strategy_has_a_stage_and_a_description():
    for strategy in BALANCING_STRATEGIES:
        stage, _ = STRATEGY_TABLE[strategy]
        assert stage in {"none", "dataset", "loss", "sampler", "features"}
        assert describe_balancing(strategy).endswith(".")


def test_balance_dataset_resamples_train_and_leaves_validation_untouched():
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"label": ClassLabel(names=["ak", "scc", "bkl"]), "lesion_id": Value("string")})
    splits = DatasetDict(
        train=Dataset.from_dict({"label": LABELS, "lesion_id": [f"L{i}" for i in range(20)]}, features=features),
        validation=Dataset.from_dict({"label": [0, 2, 2, 2], "lesion_id": ["V0", "V1", "V2", "V3"]}, features=features),
    )
    splits["train"] = balance_dataset(splits["train"], "oversample", seed=0)
    np.testing.assert_array_equal(class_counts(splits["train"]["label"]), [12, 12, 12])
    np.testing.assert_array_equal(class_counts(splits["validation"]["label"]), [1, 0, 3])


def test_balance_dataset_accepts_string_labels_and_keeps_non_resampling_strategies_unchanged():
    from datasets import Dataset

    names = np.array(["ak", "scc", "bkl"])[LABELS]
    train = Dataset.from_dict({"label": names})
    undersampled = balance_dataset(train, "undersample", seed=0)
    assert sorted(undersampled["label"]) == ["ak"] * 3 + ["bkl"] * 3 + ["scc"] * 3
    assert balance_dataset(train, "class_weights", seed=0) is train


def test_balance_dataset_names_a_missing_label_column():
    from datasets import Dataset

    with pytest.raises(ValueError, match="Column 'dx' not found"):
        balance_dataset(Dataset.from_dict({"label": [0, 1]}), "oversample", seed=0, label_column="dx")
