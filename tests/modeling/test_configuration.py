"""SkinFusionConfig: defaults, round trip, and the documented errors for bad values."""

import pytest

from skin_fusion import SkinFusionConfig
from skin_fusion.modeling.configuration_skin_fusion import DEFAULT_LABELS


def test_default_is_the_study_model_efficientnet_b4_fusion_on_three_classes():
    config = SkinFusionConfig()
    assert (config.backbone, config.image_size, config.modality) == ("tf_efficientnet_b4", 380, "fusion")
    assert list(config.id2label.values()) == list(DEFAULT_LABELS)
    assert config.label2id == {label: i for i, label in enumerate(DEFAULT_LABELS)}


def test_metadata_dim_counts_value_and_missing_columns():
    config = SkinFusionConfig(numeric_features=["age"], categorical_features={"sex": ["female", "male"]})
    assert config.metadata_dim == 2 + 3


def test_round_trip_keeps_every_setting(tmp_path):
    config = SkinFusionConfig(
        backbone="resnet18", image_size=224, modality="image", id2label={0: "nevus", 1: "melanoma"},
        head_hidden_sizes=[], class_weights=[1.0, 3.0], temperature=1.5,
    )
    config.save_pretrained(tmp_path)
    loaded = SkinFusionConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.id2label == {0: "nevus", 1: "melanoma"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backbone": "efficientnet_b44"}, "timm has no model named 'efficientnet_b44'. Did you mean"),
        ({"id2label": {0: "nevus"}}, "at least two labels"),
        ({"modality": "text"}, "modality='text' is not supported"),
        ({"numeric_features": [], "categorical_features": {}}, "needs metadata, but the metadata schema is empty"),
        ({"metadata_hidden_sizes": []}, "metadata_hidden_sizes=[] must be one or more positive widths"),
        ({"head_hidden_sizes": [256, 128]}, "must be [] (one dense layer) or one positive width"),
        ({"backbone_weights": "imagenet"}, "backbone_weights='imagenet' is not supported"),
        ({"backbone_weights": "file"}, "needs `backbone_weights_file`"),
        ({"class_weights": [1.0, 2.0]}, "class_weights must hold 3 positive numbers"),
        ({"temperature": 0.0}, "temperature=0.0 must be positive"),
        ({"dropout": 1.0}, "dropout=1.0 must be in [0, 1)"),
    ],
)
def test_bad_values_raise_errors_that_say_the_fix(overrides, message):
    with pytest.raises(ValueError) as error:
        SkinFusionConfig(**overrides)
    assert message in str(error.value)


def test_image_only_model_needs_no_metadata_schema():
    config = SkinFusionConfig(modality="image", numeric_features=[], categorical_features={})
    assert config.metadata_dim == 0
