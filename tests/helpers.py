"""Small builders shared by the tests: tiny timm backbones, a fitted processor, a matching model saved with it,
lesion-like images."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from skin_fusion import MetadataEncoder, SkinFusionConfig, SkinFusionForImageClassification, SkinFusionProcessor

TINY_BACKBONE = "test_efficientnet"
TINY_SIZE = 64
# HAM10000 class counts, as published (Tschandl et al., Sci. Data 5, 180161, 2018; see data/known_datasets.py).
HAM_DX_COUNTS = {"nv": 6703, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
LABELS = {0: "actinic keratosis", 1: "pigmented benign keratosis", 2: "squamous cell carcinoma"}


def training_rows() -> pd.DataFrame:
    """Six metadata rows with gaps, as HAM10000 / ISIC write them."""
    return pd.DataFrame({
        "age": [30, None, 50, "60", 70, 45],
        "sex": ["male", "female", "unknown", "male", "male", None],
        "anatom_site_general": ["back", None, "face", "back", "back", "face"],
    })


def fitted_processor(backbone: str = TINY_BACKBONE, image_size: int = TINY_SIZE) -> SkinFusionProcessor:
    encoder = MetadataEncoder.fit(training_rows(), ["age"], ["sex", "anatom_site_general"])
    return SkinFusionProcessor.for_backbone(backbone, image_size, metadata_encoder=encoder)


def tiny_model(modality: str = "fusion", processor: SkinFusionProcessor | None = None, **overrides):
    processor = processor or fitted_processor()
    settings = {
        "backbone": TINY_BACKBONE, "image_size": TINY_SIZE, "modality": modality, "id2label": LABELS,
        "metadata_hidden_sizes": [16], "head_hidden_sizes": [32], **processor.metadata_schema(),
    }
    config = SkinFusionConfig(**{**settings, **overrides})
    return SkinFusionForImageClassification(config)


def save_tiny_model(directory: Path, modality: str = "fusion", seed: int = 0) -> Path:
    """A tiny SkinFusion model and its fitted processor saved in `directory`."""
    torch.manual_seed(seed)
    processor = fitted_processor()
    model = tiny_model(modality, processor=processor)
    # Wider than the 0.02 initialisation, so that the untrained model clearly prefers one class per input.
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.5)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def lesion_image(width: int = 96, height: int = 80, seed: int = 0) -> Image.Image:
    """A skin-toned RGB image with a dark, off-centre, noisy blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    blob = ((xx - 0.4 * width) / (0.25 * width)) ** 2 + ((yy - 0.55 * height) / (0.3 * height)) ** 2 < 1
    pixels = np.where(blob[..., None], [110, 60, 45], [225, 180, 160]) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def symmetric_lesion(size: int = 64) -> Image.Image:
    """A centred disc in a square: unchanged by every 90-degree rotation and flip."""
    centre = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - centre, xx - centre)
    pixels = np.stack([225 - radius, 180 - 2 * radius, 160 - radius], axis=-1)
    pixels[radius < size / 4] = [110, 60, 45]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# Ways a model folder gets damaged: an interrupted copy, an empty file, a cut header, another model's config.
MODEL_DAMAGES = ["truncated weights", "empty weights", "weights header cut", "another model_type"]


def damaged_model(model_dir: Path, damage: str) -> Path:
    """A copy of a saved model beside it, broken as `damage` (one of `MODEL_DAMAGES`) says."""
    broken = model_dir.parent / f"{model_dir.name}-{damage.replace(' ', '-')}"
    shutil.copytree(model_dir, broken)
    weights, config = broken / "model.safetensors", broken / "config.json"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty weights":
        weights.write_bytes(b"")
    elif damage == "weights header cut":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "another model_type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "other_fusion"}))
    else:
        raise ValueError(f"Unknown damage {damage!r}; use one of {MODEL_DAMAGES}.")
    return broken


def require_chromium() -> None:
    """Skip the calling test (with the reason) where Chromium is not installed, except in CI (`CI` set): a failure."""
    from tools.screenshot import CHROMIUM, chromium_available

    if chromium_available():
        return
    if os.environ.get("CI"):
        pytest.fail(f"Chromium is missing at {CHROMIUM}, and the browser test must run in CI: install it with "
                    "`make browser` (Debian package `chromium`).")
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (`make browser` installs it); in CI this is a failure.")
