"""Pooled features of a frozen backbone, cached as a `datasets` column, so the heads train in seconds.

While the backbone is frozen, every epoch would run it again on the same images. `add_image_features` runs it once
per image (eval mode, inference mode, channels-last, batches of evaluation-transformed images) and stores the pooled
features (`forward_head(..., pre_logits=True)`) in the column `image_features` with `Dataset.map`. The map's
fingerprint is made from the split's content (every column, and the names and bytes of the image files it names), the
backbone's weights, the image settings and the view, and the features alone are written to
`feature_cache_dir()/<fingerprint>.arrow`, then set beside the split's rows. A second run on the same data reads that
Arrow file instead of running the backbone, even after the image files were laid down again or their folder moved
(`datasets`' own fingerprint of a local folder follows the files' paths and modification times, and its cache folder
with it).

The model then takes `image_features=` instead of `pixel_values=`; its head sees exactly what it would have seen
from pixels, so a model trained on cached features is a complete SkinFusion model that serves images.

With `stage=k`, the cache holds instead the feature maps that enter backbone stage k (column `feature_maps`,
float16): the stem and the stages before k run once, and stages k onwards train on the maps with the head
(`model.skin_fusion.feature_map_stage = k`). The early stages keep their pretrained weights and batch-norm statistics.

Measured here (2-core CPU, load average about 5): the synthetic set of tests/test_training.py (600 images at 64 px,
`skin_fusion_small_cnn`, 15 epochs, backbone frozen throughout) trains in 5.8 s on cached features (plus 0.5 s to
extract them once) against 76.5 s on pixels, 13 times faster; the pixel run also pays the random training
augmentation, which a cached run replaces by fixed views (`views.VIEWS`). Real-data timings: bench/real_data.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.fingerprint import Hasher
from torch import nn
from transformers import default_data_collator

from ..modeling.backbones import check_stage_split, early_stage_maps
from ..modeling.processing_skin_fusion import SkinFusionProcessor
from .balancing import smote_features
from .views import check_views, view_of

IMAGE_FEATURES_COLUMN = "image_features"
FEATURE_MAPS_COLUMN = "feature_maps"
CACHE_VERSION = 2  # bump when the extraction changes, so old cache files are not reused
FEATURE_CACHE_FOLDER = "skin_fusion_features"  # under `datasets`' cache folder (HF_DATASETS_CACHE)


def feature_extractor(backbone: nn.Module) -> nn.Module:
    """A channels-last eval-mode copy of `backbone` (the model being trained keeps its own layout and mode)."""
    return copy.deepcopy(backbone).eval().to(memory_format=torch.channels_last)


def backbone_features(extractor: nn.Module, pixel_values: torch.Tensor, view: str = "original",
                      stage: int | None = None) -> torch.Tensor:
    """The pooled features `(batch, num_features)` of a batch of normalised images, seen in `view`; with `stage`,
    the maps `(batch, channels, height, width)` that enter that backbone stage instead."""
    pixels = view_of(pixel_values, view).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if stage is not None:
            return early_stage_maps(extractor, pixels, stage).contiguous()
        feature_map = extractor.forward_features(pixels)
        return extractor.forward_head(feature_map, pre_logits=True).float()


def weights_digest(module: nn.Module) -> str:
    """A SHA-256 of every tensor of `module`'s state dict (names, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def split_content_digest(split: datasets.Dataset, batch_size: int = 512) -> str:
    """A SHA-256 of `split`'s rows as stored (every column; for images stored as paths, the file names and bytes).
    Unlike `split._fingerprint`, it stays the same when the same files are written again or their folder moves."""
    digest = hashlib.sha256()

    def update(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    for rows in split.with_format("arrow").iter(batch_size=batch_size):
        # Canonical JSON, not a pickle-based hash, so that a digest recorded with a run stays valid across versions.
        update(json.dumps(rows.drop_columns(["image"]).to_pydict(), sort_keys=True, default=str).encode())
        for image in rows.column("image").to_pylist():
            update(Path(image["path"] or "").name.encode())
            update(image["bytes"] if image["bytes"] is not None else Path(image["path"]).read_bytes())
    return digest.hexdigest()


def split_digests(splits: Mapping[str, datasets.Dataset]) -> dict[str, str]:
    """`split_content_digest` of each split by name: recorded with a run, so that rows can be proven the same later."""
    return {name: split_content_digest(split) for name, split in splits.items()}


def features_fingerprint(split: datasets.Dataset, backbone: nn.Module, processor: SkinFusionProcessor,
                         view: str, stage: int | None = None) -> str:
    """The `datasets` fingerprint of `split` with cached features: changes with the data, weights, transform, view
    and stage."""
    image_settings = {key: getattr(processor, key) for key in
                      ("image_size", "resize_size", "interpolation", "image_mean", "image_std")}
    return Hasher.hash([split_content_digest(split), type(backbone).__name__, weights_digest(backbone),
                        image_settings, view, stage, CACHE_VERSION])


def feature_cache_dir() -> Path:
    """Where cached features are written: a folder of `datasets`' cache (set HF_DATASETS_CACHE to move it; delete it
    to free the space: the next run extracts again)."""
    return Path(datasets.config.HF_DATASETS_CACHE) / FEATURE_CACHE_FOLDER


def add_image_features(
    split: datasets.Dataset,
    backbone: nn.Module,
    processor: SkinFusionProcessor,
    view: str = "original",
    batch_size: int = 64,
    desc: str | None = None,
    stage: int | None = None,
) -> datasets.Dataset:
    """`split` with an `image_features` column: `backbone`'s pooled features of each evaluation-transformed image
    (or, with `stage`, a float16 `feature_maps` column: the maps that enter that backbone stage).

    Args:
        split: rows with an `image` column (decoded lazily), e.g. a split of `load_lesion_dataset`.
        backbone: a timm model with `forward_features` / `forward_head` (a SkinFusion model's `skin_fusion.backbone`).
        processor: gives the evaluation transform (resize, centre crop, normalise).
        view: one of `views.VIEWS`, applied to the transformed image.
        batch_size: images per backbone call.
        desc: progress-bar text.
        stage: cache the maps entering this stage of `backbone.blocks` (timm EfficientNet-style backbones), so the
            stages from it onwards can train; `None` caches the pooled features.

    Returns:
        The split with the new column, read from `feature_cache_dir()` when the same rows, weights and view ran
        before.
    """
    if "image" not in split.column_names:
        raise ValueError(f"The split has no 'image' column (columns: {split.column_names}); pass a split of "
                         "`load_lesion_dataset`, whose images are decoded lazily from that column.")
    check_views([view])
    extractor = feature_extractor(backbone)
    if stage is None:
        column = IMAGE_FEATURES_COLUMN
        feature = datasets.List(datasets.Value("float32"), length=int(backbone.num_features))
    else:
        check_stage_split(backbone, stage)
        column = FEATURE_MAPS_COLUMN
        probe = torch.zeros(1, 3, processor.image_size, processor.image_size)
        feature = datasets.Array3D(tuple(backbone_features(extractor, probe, stage=stage).shape[1:]), "float16")

    def extract(images: list) -> dict[str, np.ndarray]:
        pixel_values = processor.preprocess_images(images, training=False)
        values = backbone_features(extractor, pixel_values, view, stage)
        return {column: (values.half() if stage is not None else values).numpy()}

    fingerprint = features_fingerprint(split, backbone, processor, view, stage)
    features = split.map(
        extract, input_columns="image", batched=True, batch_size=batch_size, remove_columns=split.column_names,
        features=datasets.Features({column: feature}), new_fingerprint=fingerprint,
        cache_file_name=str(feature_cache_dir() / f"{fingerprint}.arrow"), desc=desc or f"Backbone features ({view})",
    )
    # The cache file holds the features only: the rows beside them are this split's (its image paths, not those of a
    # folder that the same files were cached from before they moved).
    return datasets.concatenate_datasets([split, features], axis=1)


def feature_matrix(split: datasets.Dataset, column: str = IMAGE_FEATURES_COLUMN) -> np.ndarray:
    """The `image_features` column as a `(rows, num_features)` float32 array (or the float16 `feature_maps`)."""
    if column not in split.column_names:
        raise ValueError(f"The split has no {column!r} column; add it with `add_image_features`.")
    if column == FEATURE_MAPS_COLUMN:
        shape, dtype = split.features[column].shape, np.float16
    else:
        shape, dtype = (split.features[column].length,), np.float32
    if len(split) == 0:
        return np.zeros((0, *shape), dtype=dtype)
    return np.asarray(split.with_format("numpy", columns=[column])[column], dtype=dtype)


def cached_inputs(
    split: datasets.Dataset, processor: SkinFusionProcessor, uses_image: bool, uses_metadata: bool
) -> dict[str, np.ndarray]:
    """Model inputs of every row as arrays: `image_features` or `feature_maps` (cached), `metadata` (encoded) and
    `labels`."""
    inputs = {"labels": np.asarray(split["label"], dtype=np.int64)}
    if uses_image:
        column = FEATURE_MAPS_COLUMN if FEATURE_MAPS_COLUMN in split.column_names else IMAGE_FEATURES_COLUMN
        inputs[column] = feature_matrix(split, column)
    if uses_metadata:
        columns = processor.encoder.columns
        inputs["metadata"] = processor.encode_metadata(split.select_columns(columns).to_pandas()).numpy()
    return inputs


def concatenate_inputs(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The rows of several input dicts (e.g. one per view) one after the other."""
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def select_rows(inputs: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The given rows of every input array (resampling for balancing)."""
    return {key: value[rows] for key, value in inputs.items()}


def smote_inputs(inputs: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """SMOTE on the concatenated `[image_features, metadata]` rows; returns the inputs split back into their columns.

    Originals come first, then synthetic minority rows, so every class ends with the majority count. Call it on the
    training split only.
    """
    if FEATURE_MAPS_COLUMN in inputs:
        raise ValueError("balancing='smote' interpolates feature vectors, not the feature maps cached to train the "
                         "backbone's last stages; use --balancing oversample or none with --unfreeze_last_blocks.")
    names = [key for key in (IMAGE_FEATURES_COLUMN, "metadata") if key in inputs]
    widths = [inputs[key].shape[1] for key in names]
    rows, labels = smote_features(np.concatenate([inputs[key] for key in names], axis=1), inputs["labels"], seed=seed)
    columns = np.split(rows.astype(np.float32), np.cumsum(widths)[:-1], axis=1)
    return {"labels": np.asarray(labels, dtype=np.int64), **dict(zip(names, columns))}


def withhold_metadata(inputs: dict[str, np.ndarray], processor: SkinFusionProcessor) -> dict[str, np.ndarray]:
    """The inputs with every metadata row encoded as "nothing recorded" (what an empty form gives the model)."""
    nothing_recorded = processor.encode_metadata([{}]).numpy()
    return {**inputs, "metadata": np.repeat(nothing_recorded, len(inputs["labels"]), axis=0)}


class CachedInputs(torch.utils.data.Dataset):
    """Model inputs held in memory as tensors, served a batch at a time.

    `__getitems__` gives the DataLoader a whole batch with one indexing operation per column; a row-by-row dataset
    builds and collates a dict per row, which on cached features costs more than the model's own step.
    """

    def __init__(self, inputs: dict[str, np.ndarray]) -> None:
        # Labels stay integers and feature maps float16 (half the memory; the model casts them); the rest float32.
        kept = ("labels", FEATURE_MAPS_COLUMN)
        self.columns = {key: torch.from_numpy(np.ascontiguousarray(value if key in kept else value.astype(np.float32)))
                        for key, value in inputs.items()}

    def __len__(self) -> int:
        return len(self.columns["labels"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: column[index] for key, column in self.columns.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(indices)
        return {key: column[rows] for key, column in self.columns.items()}


def collate_inputs(features: list[Mapping[str, Any]] | Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The Trainer's collator: a batch `CachedInputs` already made passes through; rows are stacked as usual."""
    return dict(features) if isinstance(features, Mapping) else default_data_collator(features)
