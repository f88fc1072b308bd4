"""SkinFusionForImageClassification: the three modalities, the loss, saving and Auto loading."""

import json

import pytest
import timm
import torch
from transformers import AutoConfig, AutoModelForImageClassification

import skin_fusion  # noqa: F401  (registers the Auto classes)
from tests.helpers import TINY_SIZE, tiny_model


def inputs(model, batch: int = 2) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.randn(batch, 3, TINY_SIZE, TINY_SIZE),
        "metadata": torch.randn(batch, model.config.metadata_dim),
        "labels": torch.tensor([0, 2] * (batch // 2)),
    }


@pytest.mark.parametrize("modality", ["fusion", "image", "metadata"])
def test_forward_and_backward_in_every_modality(modality):
    model = tiny_model(modality)
    output = model(**inputs(model))
    assert output.logits.shape == (2, 3)
    output.loss.backward()
    trained = [p for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert trained, "no parameter received a gradient"
    assert (model.skin_fusion.backbone is None) == (modality == "metadata")
    assert (model.skin_fusion.metadata_mlp is None) == (modality == "image")


def test_the_image_only_model_ignores_metadata_and_the_metadata_only_model_ignores_pixels():
    image_model = tiny_model("image").eval()
    batch = inputs(image_model)
    assert torch.equal(image_model(pixel_values=batch["pixel_values"]).logits, image_model(**batch).logits)
    metadata_model = tiny_model("metadata").eval()
    assert metadata_model(metadata=batch["metadata"][:, : metadata_model.config.metadata_dim]).logits.shape == (2, 3)


def test_the_small_plain_cnn_and_a_resnet_are_backbones_too():
    for backbone in ["skin_fusion_small_cnn", "resnet10t"]:
        model = tiny_model("fusion", backbone=backbone)
        assert model(**inputs(model)).logits.shape == (2, 3)


def test_class_weights_weight_the_cross_entropy():
    model = tiny_model("fusion", class_weights=[1.0, 1.0, 5.0]).eval()
    batch = inputs(model)
    logits = model(**batch).logits
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=torch.tensor([1.0, 1.0, 5.0]))
    torch.testing.assert_close(model(**batch).loss, expected)


def test_temperature_divides_the_logits():
    model = tiny_model("fusion").eval()
    batch = inputs(model)
    logits = model(**batch).logits
    model.config.temperature = 2.0
    torch.testing.assert_close(model(**batch).logits, logits / 2.0)


def test_missing_inputs_raise_errors_that_say_the_fix():
    model = tiny_model("fusion")
    with pytest.raises(ValueError, match="needs `metadata`"):
        model(pixel_values=torch.randn(1, 3, TINY_SIZE, TINY_SIZE))
    with pytest.raises(ValueError, match="needs `pixel_values`"):
        model(metadata=torch.randn(1, model.config.metadata_dim))
    with pytest.raises(ValueError, match="encode it with the processor saved beside this model"):
        model(pixel_values=torch.randn(1, 3, TINY_SIZE, TINY_SIZE), metadata=torch.randn(1, 3))


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_vit"])
def test_post_init_keeps_timm_initialisation_of_the_backbone(backbone):
    torch.manual_seed(0)
    expected = timm.create_model(backbone, num_classes=0).state_dict()
    torch.manual_seed(0)
    model = tiny_model("image", backbone=backbone)
    actual = model.skin_fusion.backbone.state_dict()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    head = model.head[1]  # PyTorch's fan-in init: uniform with std 1 / sqrt(3 * fan_in)
    assert head.weight.std().item() == pytest.approx(1 / (3 * head.in_features) ** 0.5, rel=0.2)


def test_save_then_auto_load_gives_the_same_logits(tmp_path):
    model = tiny_model("fusion").eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    batch = inputs(model)
    batch.pop("labels")
    # Equal up to float rounding: safetensors-loaded tensors can take another oneDNN kernel (seen: 1e-10).
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=1e-6)
    assert type(loaded).__name__ == "SkinFusionForImageClassification"
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))


def test_config_json_has_model_type_and_auto_map_and_the_code_is_copied(tmp_path):
    tiny_model("fusion").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "skin_fusion"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_skin_fusion.SkinFusionConfig",
        "AutoModelForImageClassification": "modeling_skin_fusion.SkinFusionForImageClassification",
    }
    for module in ["configuration_skin_fusion.py", "modeling_skin_fusion.py", "backbones.py"]:
        assert (tmp_path / module).is_file()
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "SkinFusionConfig"


def masking_model(field_probability: float, row_probability: float):
    from tests.helpers import fitted_processor

    processor = fitted_processor()
    missing = processor.encode_metadata([{}])[0].tolist()
    return tiny_model(metadata_dropout=field_probability, metadata_row_dropout=row_probability,
                      missing_metadata=missing, processor=processor), processor


def test_metadata_masking_turns_rows_into_nothing_recorded_in_training_only():
    model, processor = masking_model(0.0, 1.0)
    masking = model.skin_fusion.metadata_masking
    recorded = processor.encode_metadata([{"age": 70, "sex": "male", "anatom_site_general": "back"}] * 4)
    assert torch.equal(masking.eval()(recorded), recorded)
    assert torch.equal(masking.train()(recorded), processor.encode_metadata([{}] * 4))


def test_metadata_masking_drops_each_field_whole_value_and_missing_flag_together():
    torch.manual_seed(0)
    model, processor = masking_model(0.5, 0.0)
    rows = [{"age": 70, "sex": "male", "anatom_site_general": "back"}] * 400
    masked = model.skin_fusion.metadata_masking.train()(processor.encode_metadata(rows))
    widths = model.config.metadata_field_widths
    empty, recorded = processor.encode_metadata([{}])[0], processor.encode_metadata(rows[:1])[0]
    dropped_share = []
    for start, width in zip([0, *torch.tensor(widths).cumsum(0).tolist()[:-1]], widths):
        block = masked[:, start:start + width]
        is_empty = (block == empty[start:start + width]).all(1)
        assert (is_empty | (block == recorded[start:start + width]).all(1)).all()  # never half a field
        dropped_share.append(is_empty.float().mean().item())
    assert all(0.4 < share < 0.6 for share in dropped_share)


def test_metadata_masking_needs_the_encoded_empty_row():
    with pytest.raises(ValueError, match="need `missing_metadata`"):
        tiny_model(metadata_row_dropout=0.5)


def test_decision_offsets_move_the_predicted_class_but_not_the_probabilities():
    model = tiny_model(decision_offsets=[0.0, 0.0, 5.0])
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, -9.0]])
    assert model.predicted_classes(logits).tolist() == [2, 1]
    assert tiny_model().predicted_classes(logits).tolist() == [0, 1]
