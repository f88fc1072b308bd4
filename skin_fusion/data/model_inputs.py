"""From loaded lesion splits to what the model and the Trainer take: metadata frames, lazily transformed splits,
balanced training splits, and the rows of cached backbone features."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
from accelerate import PartialState

from ..modeling.configuration_skin_fusion import SkinFusionConfig
from ..modeling.modeling_skin_fusion import SkinFusionForImageClassification
from ..modeling.processing_skin_fusion import SkinFusionProcessor
from .balancing import RESAMPLING_STRATEGIES, balance_dataset, resample_indices, smote_features
from .feature_cache import (
    CachedInputs,
    add_image_features,
    cached_inputs,
    concatenate_inputs,
    select_rows,
    smote_inputs,
    withhold_metadata,
)
from .loading import LesionDataset


def metadata_frame(split: datasets.Dataset, columns: list[str]) -> pd.DataFrame:
    """The given columns of a split as a DataFrame (images are not decoded)."""
    return split.select_columns(columns).to_pandas()


def with_model_inputs(
    split: datasets.Dataset, processor: SkinFusionProcessor, config: SkinFusionConfig, training: bool,
    withhold_metadata: bool = False,
) -> datasets.Dataset:
    """The split with a lazy transform to model inputs; images are not even decoded for a metadata-only model.
    `withhold_metadata` encodes every row as "nothing recorded" (the model's answer for an empty form)."""
    columns = ["label"] + (["image"] if config.uses_image else [])
    if config.uses_metadata:
        columns += processor.encoder.columns
    transform = processor.dataset_transform(training, use_images=config.uses_image, use_metadata=config.uses_metadata,
                                            withhold_metadata=withhold_metadata)
    return split.with_transform(transform, columns=columns)


def training_split(
    lesions: LesionDataset, processor: SkinFusionProcessor, config: SkinFusionConfig, strategy: str, seed: int
) -> tuple[datasets.Dataset, np.ndarray]:
    """The balanced training split with its (augmenting) transform, and its labels; SMOTE works on encoded rows."""
    train = lesions.splits["train"]
    if strategy == "smote":
        if config.modality != "metadata":
            raise ValueError(
                "balancing='smote' interpolates feature vectors, which is meaningful for tabular metadata but not for "
                "raw pixels: use it with --modality metadata or on cached backbone features (--cache_image_features "
                "True with a frozen backbone), or pick oversample / augment / class_weights for image models."
            )
        features = processor.encode_metadata(metadata_frame(train, processor.encoder.columns)).numpy()
        resampled, labels = smote_features(features, np.asarray(train["label"]), seed=seed)
        return datasets.Dataset.from_dict({"metadata": resampled, "labels": labels}).with_format("torch"), labels
    train = balance_dataset(train, strategy, seed=seed)
    return with_model_inputs(train, processor, config, training=True), np.asarray(train["label"])


def cached_feature_splits(
    lesions: LesionDataset, processor: SkinFusionProcessor, model: SkinFusionForImageClassification, strategy: str,
    train_views: list[str], batch_size: int, seed: int, stage: int | None = None,
) -> tuple[CachedInputs, np.ndarray, CachedInputs, CachedInputs, CachedInputs | None]:
    """Train (balanced, one row per cached view), validation, test and test with nothing recorded, as rows of
    `image_features`, `metadata`, `labels`: the frozen backbone runs once per image and view, the Trainer only trains
    the metadata MLP and head. With `stage`, rows of `feature_maps` entering that backbone stage instead: the stages
    from it onwards train too."""
    config, backbone = model.config, model.skin_fusion.backbone

    def inputs(split: str, view: str) -> dict[str, np.ndarray]:
        with_features = add_image_features(lesions.splits[split], backbone, processor, view=view,
                                           batch_size=batch_size, desc=f"{split} features ({view})", stage=stage)
        return cached_inputs(with_features, processor, config.uses_image, config.uses_metadata)

    with PartialState().main_process_first():  # the main process fills the cache; the others read it
        train = concatenate_inputs([inputs("train", view) for view in train_views])
        validation, test = inputs("validation", "original"), inputs("test", "original")
    if strategy == "smote":
        train = smote_inputs(train, seed=seed)
    elif strategy in RESAMPLING_STRATEGIES:
        train = select_rows(train, resample_indices(train["labels"], strategy, seed, len(lesions.label_names)))
    test_without_metadata = withhold_metadata(test, processor) if config.uses_metadata else None
    return (CachedInputs(train), train["labels"], CachedInputs(validation), CachedInputs(test),
            CachedInputs(test_without_metadata) if test_without_metadata is not None else None)
