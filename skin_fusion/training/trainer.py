"""The original study's fine-tuning schedule on `transformers.Trainer`.

Phase one trains the metadata MLP and the head on a frozen backbone; phase two unfreezes the backbone (all of it, or
its last blocks) with a lower learning rate than the head's. The optional weighted sampler is the one balancing
strategy that needs the Trainer's sampler.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from ..modeling.modeling_skin_fusion import SkinFusionForImageClassification


def backbone_block_names(model: SkinFusionForImageClassification) -> list[list[str]]:
    """The backbone's parameter names grouped by block, first to last, from timm's own `group_matcher`."""
    from timm.models import group_parameters

    backbone = model.skin_fusion.backbone
    groups = group_parameters(backbone, backbone.group_matcher(coarse=True), reverse=False)
    return [[f"skin_fusion.backbone.{name}" for name in names] for _, names in sorted(groups.items())]


def optimizer_parameter_groups(
    model: SkinFusionForImageClassification,
    head_learning_rate: float,
    backbone_learning_rate: float,
    weight_decay: float,
    unfreeze_last_blocks: int = 0,
) -> list[dict]:
    """AdamW parameter groups: head and metadata MLP at the head's rate, backbone at its own (lower) rate.

    With `unfreeze_last_blocks=N`, the blocks before the last N get a learning rate of zero: they stay at their
    pretrained values while keeping `requires_grad` (see `SkinFusionModel.freeze_backbone` for why).
    Biases and normalisation weights get no weight decay.
    """
    named = dict(model.named_parameters())
    frozen_names: set[str] = set()
    if model.skin_fusion.backbone is not None and unfreeze_last_blocks > 0:
        blocks = backbone_block_names(model)
        frozen_names = {name for block in blocks[: max(len(blocks) - unfreeze_last_blocks, 0)] for name in block}
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, parameter in named.items():
        if name in frozen_names:
            rate = 0.0
        elif name.startswith("skin_fusion.backbone."):
            rate = backbone_learning_rate
        else:
            rate = head_learning_rate
        decay = 0.0 if parameter.ndim <= 1 or rate == 0.0 else weight_decay
        groups.setdefault((rate, decay), []).append(parameter)
    # Highest rate first: the Trainer logs the first group's learning rate, which should be the head's, not zero.
    ordered = sorted(groups.items(), key=lambda item: -item[0][0])
    return [{"params": params, "lr": rate, "weight_decay": decay} for (rate, decay), params in ordered]


class BackboneFreezeCallback(TrainerCallback):
    """Freezes the backbone for the first `freeze_epochs` epochs, then unfreezes it (also right after a resume)."""

    def __init__(self, freeze_epochs: int) -> None:
        self.freeze_epochs = freeze_epochs

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and model.skin_fusion.backbone is not None:
            model.skin_fusion.freeze_backbone(int(state.epoch or 0) < self.freeze_epochs)


class BestWeightsInMemoryCallback(TrainerCallback):
    """Keeps the weights of the best evaluation so far in memory and restores them when training ends.

    For heads on cached pooled features (the backbone frozen throughout: shared, not copied); see
    `keeps_best_weights_in_memory` in run.py.
    """

    def __init__(self) -> None:
        self.best_metric: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{args.metric_for_best_model}")
        if model is None or value is None:
            return
        better = self.best_metric is None or (value > self.best_metric if args.greater_is_better
                                              else value < self.best_metric)
        if better:
            self.best_metric = value
            self.best_state = {name: value.detach().clone() for name, value in model.state_dict().items()
                               if not name.startswith("skin_fusion.backbone.")}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self.best_state is not None:
            model.load_state_dict(self.best_state, strict=False)
            state.best_metric = self.best_metric


class SkinFusionTrainer(Trainer):
    """`Trainer` with the study's two learning rates and an optional class-balancing sampler."""

    def __init__(self, *args, backbone_learning_rate: float, unfreeze_last_blocks: int = 0,
                 sample_weights: np.ndarray | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backbone_learning_rate = backbone_learning_rate
        self.unfreeze_last_blocks = unfreeze_last_blocks
        self.sample_weights = sample_weights

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            groups = optimizer_parameter_groups(
                self.model if model is None else model, self.args.learning_rate, self.backbone_learning_rate,
                self.args.weight_decay, self.unfreeze_last_blocks,
            )
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        generator = torch.Generator().manual_seed(self.args.seed)
        weights = torch.as_tensor(self.sample_weights, dtype=torch.double)
        return torch.utils.data.WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)
