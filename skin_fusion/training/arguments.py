"""Arguments of `train.py`: model, data and training dataclasses for `HfArgumentParser`, and named presets.

With no arguments, `train.py` runs the `demo` preset: the embedded synthetic set, EfficientNet-Lite0 with its offline
ImageNet weights at 128 px, a few epochs; it finishes on a 2-core CPU in a few minutes. `--preset study` is the
original study's EfficientNet-B4 at 380 px with Hub weights, for a GPU and a network. A value given on the command
line (or in a JSON file) always wins over the preset.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, TrainingArguments

from ..data.views import FLIPS_AND_HALF_TURN, VIEWS
from ..files import DEFAULT_OUTPUT_DIR

# The dataclass defaults below are the demo preset; other presets override some of them.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    # One run of the shipped HAM10000 model (models/skin-fusion-ham10000: a soup of this preset's seeds 42, 43 and 44,
    # see skin_fusion/training/soup.py): offline ImageNet EfficientNet-Lite0 at 224 px; its
    # stem and first five stages frozen, their output maps cached once per image and view (the image, its two flips
    # and its half turn); the last two stages, the metadata MLP and the head trained on them with metadata masked at
    # random and no class weights (the decisions are balanced by the logit adjustment fitted on validation instead),
    # checkpointed at every evaluation. Measured in docs/experiments/ham10000-last-stages.
    # Run: python train.py --preset ham10000 --dataset ../shared/data/ham10000 [--seed 43 --output_dir ...]
    "ham10000": {
        "backbone": "tf_efficientnet_lite0", "image_size": 224, "backbone_weights": "lite",
        "cache_image_features": True, "unfreeze_last_blocks": 2, "freeze_epochs": 0, "num_train_epochs": 2,
        "cache_train_views": list(FLIPS_AND_HALF_TURN), "per_device_train_batch_size": 64,
        "per_device_eval_batch_size": 128, "learning_rate": 2e-3, "backbone_learning_rate": 3e-4,
        "warmup_steps": 0.1, "eval_strategy": "steps", "eval_steps": 0.125, "validation_size": 0.1, "test_size": 0.2,
        "split_seed": 42, "balancing": "none", "metadata_dropout": 0.1,
        "metadata_row_dropout": 0.25, "logging_steps": 20, "output_dir": "outputs/ham10000",
    },
    "study": {
        "backbone": "tf_efficientnet_b4", "image_size": 380, "backbone_weights": "hub",
        "num_train_epochs": 30, "freeze_epochs": 3, "per_device_train_batch_size": 16, "learning_rate": 1e-3,
        "backbone_learning_rate": 1e-4, "early_stopping_patience": 5,
    },
}


@dataclass
class ModelArguments:
    """What to train: the `SkinFusionConfig` settings that are not learned from the data."""

    preset: str = field(default="demo", metadata={"help": f"Named defaults: {', '.join(PRESETS)}."})
    backbone: str = field(default="tf_efficientnet_lite0", metadata={"help": "Any timm model name."})
    image_size: int = field(default=128, metadata={"help": "Square input resolution in pixels."})
    backbone_weights: str = field(
        default="lite", metadata={"help": "Pretrained backbone weights: none, hub, file or lite (offline Lite0/1/2)."}
    )
    backbone_weights_file: str | None = field(default=None, metadata={"help": "State dict for backbone_weights=file."})
    modality: str = field(default="fusion", metadata={"help": "fusion, image (backbone only) or metadata (MLP only)."})
    metadata_hidden_sizes: list[int] = field(
        default_factory=lambda: [64, 32], metadata={"help": "Metadata MLP widths."}
    )
    head_hidden_sizes: list[int] = field(
        default_factory=lambda: [256], metadata={"help": "Fusion head hidden widths: none (one layer) or one width."}
    )
    dropout: float = field(default=0.3, metadata={"help": "Dropout before every dense layer."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the cross-entropy loss."})
    metadata_dropout: float = field(
        default=0.1,
        metadata={"help": "Training only: probability that each metadata field of a row is replaced by 'not "
                          "recorded', so that the model stays good when visitors leave fields empty."},
    )
    metadata_row_dropout: float = field(
        default=0.25,
        metadata={"help": "Training only: probability that a whole metadata row is replaced by 'nothing recorded'."},
    )


@dataclass
class DataArguments:
    """Which lesion set, which columns, how to split and balance it."""

    dataset: str | None = field(
        default=None,
        metadata={"help": "imagefolder directory with metadata.csv, a CSV file (with --images_dir), or a Hub dataset "
                          "id. Default: the embedded synthetic demo set (generated on first use)."},
    )
    images_dir: str | None = field(default=None, metadata={"help": "Image folder for a CSV --dataset."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected: dx, label, diagnosis)."})
    numeric_columns: list[str] | None = field(default=None, metadata={"help": "Numeric metadata (detected: age)."})
    categorical_columns: list[str] | None = field(
        default=None, metadata={"help": "Categorical metadata (detected: sex, localization / anatom_site_general)."}
    )
    group_column: str | None = field(default=None, metadata={"help": "Grouping for splits (detected: lesion_id)."})
    validation_size: float = field(default=0.15, metadata={"help": "Validation fraction (when no split column)."})
    test_size: float = field(default=0.15, metadata={"help": "Test fraction (when no split column)."})
    split_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the train / validation / test split (default: --seed). Fix it to compare training "
                          "seeds on one split; runs on the same split reuse cached backbone features."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Stratified subsample for quick runs."})
    balancing: str = field(
        default="class_weights",
        metadata={"help": "none, oversample, undersample, class_weights, weighted_sampler, augment or smote "
                          "(smote: metadata-only models)."},
    )
    categorical_missing: str = field(
        default="most_frequent", metadata={"help": "Missing categories: most_frequent (the study) or unknown."}
    )


@dataclass
class SkinFusionTrainingArguments(TrainingArguments):
    """`TrainingArguments` with SkinFusion's defaults and its fine-tuning schedule."""

    output_dir: str = field(default=DEFAULT_OUTPUT_DIR, metadata={"help": "Where the model and checkpoints go."})
    num_train_epochs: float = field(default=10, metadata={"help": "Total epochs (frozen + unfrozen)."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch size per device."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of the metadata MLP and the head."})
    backbone_learning_rate: float = field(
        default=2e-4, metadata={"help": "Learning rate of the backbone once unfrozen (lower than the head's)."}
    )
    freeze_epochs: int = field(default=6, metadata={"help": "Epochs with a frozen backbone before unfreezing it."})
    unfreeze_last_blocks: int = field(
        default=0, metadata={"help": "After freeze_epochs, train only the last N backbone blocks (stages; 0 = all). "
                                     "With --cache_image_features, the maps entering those N stages are cached."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without a better balanced accuracy."}
    )
    resume: bool = field(
        default=True, metadata={"help": "Resume from the last complete checkpoint in output_dir, if there is one."}
    )
    cache_image_features: bool = field(
        default=False,
        metadata={"help": "Run the frozen backbone once per image and train only the metadata MLP and head on its "
                          "cached pooled features (seconds per epoch instead of minutes). Needs freeze_epochs >= "
                          "num_train_epochs, or --unfreeze_last_blocks N: then the maps entering the last N stages "
                          "are cached and those stages train on them too (minutes per epoch instead of tens). "
                          "Pooled features allow --balancing smote for image and fusion models. The saved model "
                          "is complete (backbone included). Metadata-only models have nothing to cache."},
    )
    cache_train_views: list[str] = field(
        default_factory=lambda: ["original"],
        metadata={"help": "With --cache_image_features: views of each training image cached as extra training rows "
                          f"(names of skin_fusion.data.views.VIEWS: {', '.join(VIEWS)}); "
                          "validation and test use the original only."},
    )
    calibrate: bool = field(default=True, metadata={"help": "Fit a temperature on the validation split."})
    compare_image_only: bool = field(
        default=True,
        metadata={"help": "After a fusion run, train the image-only model the same way on the same split (saved in "
                          "output_dir/image-only) and report it beside the fusion model with and without metadata."},
    )
    report_to: None | str | list[str] = field(
        default="tensorboard",
        metadata={"help": "Where the Trainer logs its loss and validation curves: tensorboard (offline, in "
                          "output_dir/runs; view with `tensorboard --logdir OUTPUT_DIR/runs`), none, or any "
                          "integration transformers knows."},
    )
    tune_decisions: bool = field(
        default=True,
        metadata={"help": "Fit per-class decision offsets on the validation split (post-hoc logit adjustment for "
                          "balanced accuracy); probabilities stay calibrated."},
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: epoch, steps or no."})
    save_strategy: str | None = field(
        default=None,
        metadata={"help": "When to checkpoint: epoch, steps or no; by default as eval_strategy, so the best "
                          "evaluation is kept and a killed run resumes from the last one."},
    )
    save_steps: float | None = field(
        default=None, metadata={"help": "Steps (or fraction of the run) between checkpoints; by default eval_steps."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the best is kept too)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best checkpoint's weights."})
    metric_for_best_model: str | None = field(default="balanced_accuracy", metadata={"help": "Model selection."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    warmup_steps: float = field(default=0, metadata={"help": "Linear warm-up steps."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Decoding workers (0 = main process)."})

    def __post_init__(self) -> None:
        # Checkpoints follow the evaluations unless told otherwise.
        self.save_strategy = self.eval_strategy if self.save_strategy is None else self.save_strategy
        self.save_steps = self.eval_steps if self.save_steps is None else self.save_steps
        super().__post_init__()


def explicit_argument_names(argv: list[str]) -> set[str]:
    """Names given on the command line (`--name value` or `--name=value`)."""
    return {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}


def named_preset(parser: HfArgumentParser, argv: list[str], given: dict[str, Any] | None) -> str:
    """The preset named on the command line (or in the JSON file), else `ModelArguments.preset`'s default; raises if
    it is unknown."""
    if given is not None:
        preset = given.get("preset", ModelArguments.preset)
    else:
        preset = parser.parse_known_args(argv)[0].preset
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is unknown; use one of {list(PRESETS)}.")
    return preset


def parse_training_arguments(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, SkinFusionTrainingArguments]:
    """Parse the command line (or one JSON file) over the chosen preset's values: what is given overrides them, and
    the merged arguments are validated once (e.g. `--preset ham10000 --save_steps 0.25` works)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, DataArguments, SkinFusionTrainingArguments))
    from_json = len(argv) == 1 and argv[0].endswith(".json")
    given = json.loads(Path(argv[0]).read_text()) if from_json else None
    explicit = set(given) if from_json else explicit_argument_names(argv)
    preset = PRESETS[named_preset(parser, argv, given)]
    if "use_cpu" not in explicit and not torch.cuda.is_available():
        # Without it, processes started by torchrun / `accelerate launch --multi_gpu` on a machine with no GPU would
        # not form a (gloo) process group: each would train alone on the whole data set. It must be known when the
        # arguments are built, since TrainingArguments sets up the devices then.
        given, argv = ({**given, "use_cpu": True}, argv) if from_json else (given, [*argv, "--use_cpu", "True"])
    if from_json:
        model_args, data_args, training_args = parser.parse_dict({**preset, **given})
    else:
        parser.set_defaults(**preset)
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args
