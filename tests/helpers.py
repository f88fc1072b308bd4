"""Small builders shared by the tests: tiny timm backbones, a fitted processor, a matching model."""

from __future__ import annotations

import pandas as pd

from skin_fusion import MetadataEncoder, SkinFusionConfig, SkinFusionForImageClassification, SkinFusionProcessor

TINY_BACKBONE = "test_efficientnet"
TINY_SIZE = 64
# HAM10000 class counts, from ../shared/data/README.md.
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
