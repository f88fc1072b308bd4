"""SkinFusion: dermoscopy image + patient metadata fusion classifier for the Hugging Face ecosystem.

Importing the package registers the config, models and processor with transformers' Auto classes, and marks them
so that `save_pretrained` / `push_to_hub` copy their code (an `auto_map` in config.json) for `trust_remote_code`.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, AutoProcessor

from .modeling import (
    MetadataEncoder,
    MetadataError,
    SkinFusionConfig,
    SkinFusionForImageClassification,
    SkinFusionModel,
    SkinFusionProcessor,
)

AutoConfig.register(SkinFusionConfig.model_type, SkinFusionConfig, exist_ok=True)
AutoModel.register(SkinFusionConfig, SkinFusionModel, exist_ok=True)
AutoModelForImageClassification.register(SkinFusionConfig, SkinFusionForImageClassification, exist_ok=True)
AutoImageProcessor.register(SkinFusionConfig, image_processor_classes={"pil": SkinFusionProcessor}, exist_ok=True)
AutoProcessor.register(SkinFusionConfig, SkinFusionProcessor, exist_ok=True)

SkinFusionConfig.register_for_auto_class()
SkinFusionModel.register_for_auto_class("AutoModel")
SkinFusionForImageClassification.register_for_auto_class("AutoModelForImageClassification")
SkinFusionProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "MetadataEncoder",
    "MetadataError",
    "SkinFusionConfig",
    "SkinFusionForImageClassification",
    "SkinFusionModel",
    "SkinFusionProcessor",
]
