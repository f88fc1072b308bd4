"""The Hub-portable model code: config, model, processor and what they import.

`save_pretrained` copies exactly these files beside a model (its config's `auto_map` names them), so they import each
other relatively and nothing from the rest of `skin_fusion`: a saved model loads with `trust_remote_code=True` alone.
"""

from .configuration_skin_fusion import SkinFusionConfig
from .metadata_encoding import MetadataEncoder, MetadataError
from .modeling_skin_fusion import SkinFusionForImageClassification, SkinFusionModel
from .processing_skin_fusion import SkinFusionProcessor

__all__ = [
    "MetadataEncoder",
    "MetadataError",
    "SkinFusionConfig",
    "SkinFusionForImageClassification",
    "SkinFusionModel",
    "SkinFusionProcessor",
]
