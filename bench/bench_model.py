"""The fusion model the timing benchmarks measure: a SkinFusion classifier on any timm backbone with a metadata
encoder fitted on a few rows of age, sex and site (what the weights are does not change the speed)."""

from __future__ import annotations

import pandas as pd

from skin_fusion import MetadataEncoder, SkinFusionConfig, SkinFusionForImageClassification, SkinFusionProcessor

METADATA_ROWS = pd.DataFrame({
    "age": [40, 55, 70, None], "sex": ["male", "female", "male", None],
    "anatom_site_general": ["head/neck", "posterior torso", "lower extremity", None],
})


def fusion_model(
    backbone: str, image_size: int, backbone_weights: str = "none"
) -> tuple[SkinFusionForImageClassification, SkinFusionProcessor]:
    """A fusion model on `backbone` (backbone weights not loaded yet: see `load_backbone_weights`) and its processor."""
    encoder = MetadataEncoder.fit(METADATA_ROWS, ["age"], ["sex", "anatom_site_general"])
    processor = SkinFusionProcessor.for_backbone(backbone, image_size, metadata_encoder=encoder)
    config = SkinFusionConfig(backbone=backbone, image_size=image_size, backbone_weights=backbone_weights,
                              **processor.metadata_schema())
    return SkinFusionForImageClassification(config), processor
