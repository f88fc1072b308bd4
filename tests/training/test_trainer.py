"""The fine-tuning optimizer: parameter groups per learning rate, the backbone's blocks, partial unfreezing."""

from __future__ import annotations

import pytest

from skin_fusion.training.arguments import parse_training_arguments
from skin_fusion.training.trainer import SkinFusionTrainer, backbone_block_names, optimizer_parameter_groups
from tests.helpers import tiny_model

HEAD_RATE, BACKBONE_RATE, DECAY = 2e-3, 2e-4, 1e-4


def rates_by_name(model, groups) -> dict[str, tuple[float, float]]:
    """(learning rate, weight decay) of every parameter, by name; each parameter must be in exactly one group."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    seen = [(names[id(p)], (group["lr"], group["weight_decay"])) for group in groups for p in group["params"]]
    assert len(seen) == len(names), "every parameter belongs to exactly one group"
    return dict(seen)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_backbone_blocks_cover_every_backbone_parameter_once_first_to_last(model):
    blocks = backbone_block_names(model)
    flat = [name for block in blocks for name in block]
    backbone = [name for name, _ in model.named_parameters() if name.startswith("skin_fusion.backbone.")]
    assert sorted(flat) == sorted(backbone) and len(flat) == len(set(flat))
    assert len(blocks) >= 3
    assert any("conv_stem" in name for name in blocks[0])  # the stem comes first


def test_parameter_groups_give_the_backbone_its_own_rate_and_spare_biases_from_decay(model):
    rates = rates_by_name(model, optimizer_parameter_groups(model, HEAD_RATE, BACKBONE_RATE, DECAY))
    for name, parameter in model.named_parameters():
        rate, decay = rates[name]
        assert rate == (BACKBONE_RATE if name.startswith("skin_fusion.backbone.") else HEAD_RATE)
        assert decay == (0.0 if parameter.ndim <= 1 else DECAY)


def test_unfreeze_last_blocks_keeps_earlier_blocks_at_rate_zero(model):
    blocks = backbone_block_names(model)
    rates = rates_by_name(model, optimizer_parameter_groups(model, HEAD_RATE, BACKBONE_RATE, DECAY,
                                                            unfreeze_last_blocks=2))
    for block in blocks[:-2]:
        assert all(rates[name] == (0.0, 0.0) for name in block)
    for block in blocks[-2:]:
        assert all(rates[name][0] == BACKBONE_RATE for name in block)
    head = [name for name in rates if not name.startswith("skin_fusion.backbone.")]
    assert head and all(rates[name][0] == HEAD_RATE for name in head)


def test_unfreeze_last_blocks_flag_reaches_the_trainers_optimizer(model, tmp_path):
    _, _, args = parse_training_arguments(["--output_dir", str(tmp_path), "--unfreeze_last_blocks", "1",
                                           "--report_to", "none", "--eval_strategy", "no", "--save_strategy", "no",
                                           "--load_best_model_at_end", "False"])
    assert args.unfreeze_last_blocks == 1
    trainer = SkinFusionTrainer(model=model, args=args, backbone_learning_rate=args.backbone_learning_rate,
                                unfreeze_last_blocks=args.unfreeze_last_blocks)
    rates = rates_by_name(model, trainer.create_optimizer().param_groups)
    blocks = backbone_block_names(model)
    assert all(rates[name][0] == 0.0 for block in blocks[:-1] for name in block)
    assert all(rates[name][0] == args.backbone_learning_rate for name in blocks[-1])


def test_best_weights_in_memory_restore_what_trained_and_share_a_frozen_backbone():
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from skin_fusion.training.trainer import BestWeightsInMemoryCallback

    model = tiny_model("fusion")
    args, state, control = TrainingArguments("unused", metric_for_best_model="bacc"), TrainerState(), TrainerControl()
    callback = BestWeightsInMemoryCallback()
    best = {name: value.clone() for name, value in model.state_dict().items()}
    callback.on_evaluate(args, state, control, model=model, metrics={"eval_bacc": 0.6})
    with torch.no_grad():
        for value in model.state_dict().values():
            value.add_(1)  # parameters and batch-norm statistics alike
    callback.on_evaluate(args, state, control, model=model, metrics={"eval_bacc": 0.5})  # worse: not kept
    callback.on_train_end(args, state, control, model=model)
    restored = model.state_dict()
    head, tail = "head.1.weight", "skin_fusion.backbone.blocks.4.0.bn1.running_mean"
    assert torch.equal(restored[head], best[head]) and state.best_metric == 0.6
    assert not torch.equal(restored[tail], best[tail])  # a backbone frozen throughout is shared, not copied


def test_the_first_parameter_group_is_the_heads_so_the_logged_learning_rate_is_its():
    model = tiny_model("fusion")
    groups = optimizer_parameter_groups(model, HEAD_RATE, BACKBONE_RATE, DECAY, unfreeze_last_blocks=1)
    assert groups[0]["lr"] == HEAD_RATE and [g["lr"] for g in groups] == sorted((g["lr"] for g in groups), reverse=True)


@pytest.mark.parametrize("evaluation", [[], ["--eval_steps", "50"], ["--eval_strategy", "epoch"]])
def test_checkpoints_follow_the_evaluations_unless_set(evaluation, tmp_path):
    _, _, args = parse_training_arguments(["--preset", "ham10000", "--output_dir", str(tmp_path), *evaluation])
    assert args.save_strategy == args.eval_strategy and args.save_steps == args.eval_steps
    assert args.load_best_model_at_end


def test_given_values_are_merged_with_the_preset_before_they_are_validated(tmp_path):
    _, data_args, args = parse_training_arguments(["--preset", "ham10000", "--output_dir", str(tmp_path),
                                                   "--save_strategy", "steps", "--save_steps", "0.25"])
    assert (args.save_steps, args.eval_steps, data_args.split_seed) == (0.25, 0.125, 42)


def test_checkpoints_that_cannot_hold_the_best_evaluation_are_refused_when_parsed(tmp_path):
    with pytest.raises(ValueError, match="save and eval strategy to match"):
        parse_training_arguments(["--preset", "ham10000", "--output_dir", str(tmp_path), "--save_strategy", "epoch"])


def test_a_given_save_step_count_is_kept_while_the_strategy_follows_the_evaluations(tmp_path):
    _, _, args = parse_training_arguments(["--preset", "ham10000", "--output_dir", str(tmp_path),
                                           "--save_steps", "0.25"])
    assert (args.save_strategy, args.save_steps, args.eval_steps) == ("steps", 0.25, 0.125)
