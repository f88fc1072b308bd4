"""A soup of runs: averaged backbone, heads side by side; its logits are the mean of the heads' on that backbone."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from skin_fusion import SkinFusionForImageClassification
from skin_fusion.training.soup import draw_runs_curves, soup_of
from tests.helpers import TINY_SIZE, fitted_processor, tiny_model, training_rows


def trained_like(seed: int, temperature: float, **overrides) -> SkinFusionForImageClassification:
    """A tiny model whose every weight (backbone included) is drawn from `seed`, as runs of different seeds differ."""
    torch.manual_seed(seed)
    model = tiny_model(processor=fitted_processor(), **{"backbone_weights": "hub", **overrides}).eval()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():  # batch-norm statistics too
                noise = torch.randn_like(value) * 0.1
                value.add_(noise.abs() if "running_var" in name else noise)
    model.config.temperature = temperature
    return model


def inputs(rows: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    processor = fitted_processor()
    return {"pixel_values": torch.randn(rows, 3, TINY_SIZE, TINY_SIZE),
            "metadata": processor.encode_metadata(training_rows().head(rows))}


def heads_on_averaged_backbone(models, soup, batch) -> torch.Tensor:
    """The mean of each model's calibrated logits with its backbone replaced by the soup's."""
    logits = []
    for model in models:
        moved = copy.deepcopy(model)
        if soup.skin_fusion.backbone is not None:
            moved.skin_fusion.backbone.load_state_dict(soup.skin_fusion.backbone.state_dict())
        logits.append(moved(**batch).logits)
    return torch.stack(logits).mean(0)


@pytest.mark.parametrize("overrides", [{}, {"head_hidden_sizes": []}, {"modality": "image"},
                                       {"modality": "image", "head_hidden_sizes": []}, {"modality": "metadata"},
                                       {"modality": "metadata", "head_hidden_sizes": []},
                                       {"metadata_hidden_sizes": [16, 8]}])
def test_soup_logits_are_the_mean_of_the_heads_on_the_averaged_backbone(overrides):
    models = [trained_like(seed, temperature, **overrides) for seed, temperature in ((0, 1.0), (1, 2.0), (2, 0.5))]
    soup = soup_of(models)
    batch = inputs()
    if soup.config.modality == "image":
        batch.pop("metadata")
    if soup.config.modality == "metadata":
        batch.pop("pixel_values")
    with torch.inference_mode():
        expected = heads_on_averaged_backbone(models, soup, batch)
        torch.testing.assert_close(soup(**batch).logits, expected, rtol=0, atol=1e-5)
        # The backbone really is the element-wise mean (not one model's).
        backbone_state = soup.skin_fusion.backbone.state_dict() if soup.skin_fusion.backbone is not None else {}
        for name, value in backbone_state.items():
            if value.is_floating_point():
                mean = torch.stack([m.skin_fusion.backbone.state_dict()[name] for m in models]).mean(0)
                torch.testing.assert_close(value, mean)
    assert soup.config.temperature == 1.0 and soup.config.decision_offsets is None
    assert soup.config.head_hidden_sizes == [3 * w for w in models[0].config.head_hidden_sizes]


def test_a_saved_soup_loads_as_an_ordinary_model(tmp_path):
    models = [trained_like(seed, 1.0) for seed in (0, 1)]
    soup = soup_of(models)
    soup.save_pretrained(tmp_path)
    loaded = SkinFusionForImageClassification.from_pretrained(tmp_path).eval()
    batch = inputs()
    with torch.inference_mode():
        torch.testing.assert_close(loaded(**batch).logits, soup(**batch).logits, rtol=0, atol=1e-6)


def test_weights_equal_in_every_run_stay_exactly_equal():
    models = [trained_like(seed, 1.0) for seed in (0, 1, 2)]
    frozen = models[0].skin_fusion.backbone.conv_stem.weight
    for model in models[1:]:
        model.skin_fusion.backbone.conv_stem.weight.data.copy_(frozen)
    assert torch.equal(soup_of(models).skin_fusion.backbone.conv_stem.weight, frozen)


def test_soups_refuse_one_run_runs_of_different_recipes_and_unrelated_backbone_starts():
    with pytest.raises(ValueError, match="at least two"):
        soup_of([trained_like(0, 1.0)])
    with pytest.raises(ValueError, match="head_hidden_sizes"):
        soup_of([trained_like(0, 1.0), trained_like(1, 1.0, head_hidden_sizes=[8])])
    with pytest.raises(ValueError, match="own random weights"):
        soup_of([trained_like(0, 1.0, backbone_weights="none"), trained_like(1, 1.0, backbone_weights="none")])


def test_the_soup_draws_every_runs_curves_or_else_the_first_runs_plot(tmp_path):
    history = [{"epoch": 1.0, "loss": 1.2}, {"epoch": 1.0, "eval_loss": 1.0, "eval_balanced_accuracy": 0.5}]
    runs = [tmp_path / "seed1", tmp_path / "seed2"]
    for run in runs:
        run.mkdir()
        (run / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (runs[0] / "training_curves.png").write_bytes(b"the first run's own plot")
    drawn = tmp_path / "soup.png"
    assert draw_runs_curves(runs, [1, 2], drawn) == [1, 2]
    assert drawn.read_bytes().startswith(b"\x89PNG")
    (runs[1] / "trainer_state.json").unlink()  # a run saved before train.py kept its Trainer state
    assert draw_runs_curves(runs, [1, 2], drawn) == [1]
    assert drawn.read_bytes() == b"the first run's own plot"
    (runs[0] / "training_curves.png").unlink()
    drawn.unlink()
    assert draw_runs_curves(runs, [1, 2], drawn) == [] and not drawn.exists()
