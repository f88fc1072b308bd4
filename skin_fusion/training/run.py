"""One training run, end to end: data -> processor -> model -> Trainer -> calibration -> evaluation -> card -> save.

`train.py` parses the arguments and calls `run_training`; so can any other code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import PartialState
from scipy.special import softmax
from transformers import EarlyStoppingCallback, set_seed

from ..data.balancing import class_weights, describe_balancing, sample_weights
from ..data.feature_cache import collate_inputs, split_digests
from ..data.known_datasets import hub_license_of
from ..data.loading import LesionDataset, load_lesion_dataset
from ..data.model_inputs import cached_feature_splits, metadata_frame, training_split, with_model_inputs
from ..data.synthetic import ensure_default_dataset, is_complete
from ..data.views import check_views
from ..evaluation.metrics import SCALAR_KEYS, build_compute_metrics
from ..evaluation.plots import plot_test_results, plot_training_curves
from ..evaluation.subgroups import MIN_SUBGROUP_SIZE, evaluate_probabilities, subgroup_metrics
from ..files import CARD_FACTS_FILE, TRAINING_CURVES_FILE, TRAINING_REPORT_FILE
from ..modeling.backbones import check_stage_split
from ..modeling.configuration_skin_fusion import SkinFusionConfig
from ..modeling.metadata_encoding import MetadataEncoder
from ..modeling.modeling_skin_fusion import SkinFusionForImageClassification, predicted_classes
from ..modeling.processing_skin_fusion import SkinFusionProcessor
from ..reports.model_card import ModelCardFacts, render_model_card, save_card_facts
from ..threads import configure_torch_threads
from ..weights.backbone_weights import load_backbone_weights
from .arguments import DataArguments, ModelArguments, SkinFusionTrainingArguments
from .calibration import fit_on_validation
from .checkpoints import last_complete_checkpoint, remove_checkpoints
from .hub import push_model_directory
from .trainer import BackboneFreezeCallback, BestWeightsInMemoryCallback, SkinFusionTrainer

logger = logging.getLogger(__name__)


@dataclass
class TrainingReport:
    """What a finished run reports (also written to `training_report.json` in the output directory)."""

    output_dir: str
    preset: str
    test_metrics: dict[str, float]
    temperature: float
    # Test metrics of the same model when no metadata at all is recorded (every field "not recorded").
    test_metrics_without_metadata: dict[str, float] | None
    decision_strength: float  # tau of the post-hoc logit adjustment (0: the most probable class is the decision)
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    optimizer_steps: int
    train_examples: int
    world_size: int
    train_runtime_seconds: float
    feature_extraction_seconds: float = 0.0  # backbone features cached before training (--cache_image_features)
    image_only_test_metrics: dict[str, float] | None = None  # the image-only twin (--compare_image_only)
    test_recall: dict[str, float] = field(default_factory=dict)
    test_auc: dict[str, float] = field(default_factory=dict)
    pushed_to: str | None = None
    push_error: str | None = None


def describe_run(model_args: ModelArguments, data_args: DataArguments, args: SkinFusionTrainingArguments) -> str:
    """One line that says which preset and settings ran."""
    data = data_args.dataset or "the embedded synthetic demo set"
    return (
        f"Preset '{model_args.preset}': {model_args.modality} model, backbone {model_args.backbone} at "
        f"{model_args.image_size} px ({model_args.backbone_weights} weights), {args.num_train_epochs:g} epochs "
        f"({args.freeze_epochs} frozen), balancing '{data_args.balancing}', data: {data}"
        + (", on cached backbone features." if args.cache_image_features and model_args.modality != "metadata" else ".")
    )


def check_feature_caching(modality: str, args: SkinFusionTrainingArguments) -> bool:
    """Whether this run trains on cached backbone features; raises if it asks to while the backbone would learn."""
    if not args.cache_image_features or modality == "metadata":
        return False
    if args.freeze_epochs < args.num_train_epochs and args.unfreeze_last_blocks == 0:
        raise ValueError(
            f"--cache_image_features True needs a backbone frozen for the whole run, but freeze_epochs="
            f"{args.freeze_epochs} < num_train_epochs={args.num_train_epochs:g}: cached features would go stale once "
            f"the backbone learns. Pass --freeze_epochs {int(np.ceil(args.num_train_epochs))} (or more); or "
            "--unfreeze_last_blocks N to cache the maps of the earlier stages and train the last N on them; or drop "
            "--cache_image_features to fine-tune the backbone on pixels."
        )
    check_views(args.cache_train_views)
    return True


def trains_last_stages(args: SkinFusionTrainingArguments) -> bool:
    """Whether the backbone's last `unfreeze_last_blocks` stages learn in this run (else it stays frozen throughout)."""
    return args.unfreeze_last_blocks > 0 and args.freeze_epochs < args.num_train_epochs


def keeps_best_weights_in_memory(args: SkinFusionTrainingArguments, cached: bool) -> bool:
    """Whether this run keeps its best weights in memory and writes no checkpoint."""
    # Heads on cached pooled features: an epoch takes under a second, less than a checkpoint of the whole model. A run
    # whose last stages learn on cached maps takes tens of minutes: it checkpoints like a run on pixels, to resume.
    return cached and not trains_last_stages(args)


def feature_map_stage(model: SkinFusionForImageClassification, args: SkinFusionTrainingArguments) -> int | None:
    """The backbone stage whose input maps a cached run stores (its last `unfreeze_last_blocks` stages train on
    them), or `None` when the cache holds pooled features. Raises if the backbone cannot be cut there."""
    if not trains_last_stages(args):
        return None
    backbone = model.skin_fusion.backbone
    stage = len(getattr(backbone, "blocks", ())) - args.unfreeze_last_blocks
    check_stage_split(backbone, stage)
    return stage


def load_training_data(data_args: DataArguments, seed: int) -> tuple[LesionDataset, bool]:
    """The lesion set named by `data_args` (the embedded synthetic set by default); also says if it is synthetic."""
    # The main process generates and caches first; the others then read what it wrote.
    with PartialState().main_process_first():
        source = data_args.dataset or str(ensure_default_dataset())
        lesions = load_lesion_dataset(
            source, label_column=data_args.label_column, numeric_columns=data_args.numeric_columns,
            categorical_columns=data_args.categorical_columns, group_column=data_args.group_column,
            images_dir=data_args.images_dir, validation_size=data_args.validation_size, test_size=data_args.test_size,
            seed=seed, max_samples=data_args.max_samples,
        )
    return lesions, Path(source).is_dir() and is_complete(source)


def build_processor_and_config(
    lesions: LesionDataset, model_args: ModelArguments, data_args: DataArguments
) -> tuple[SkinFusionProcessor, SkinFusionConfig]:
    """Fit the metadata encoder on the training split only, and describe the model that matches it."""
    encoder = None
    if model_args.modality != "image":
        columns = lesions.numeric_columns + lesions.categorical_columns
        encoder = MetadataEncoder.fit(
            metadata_frame(lesions.splits["train"], columns), lesions.numeric_columns, lesions.categorical_columns,
            categorical_missing=data_args.categorical_missing,
        )
    processor = SkinFusionProcessor.for_backbone(model_args.backbone, model_args.image_size, metadata_encoder=encoder)
    weights = None
    if data_args.balancing == "class_weights":
        weights = class_weights(np.asarray(lesions.splits["train"]["label"]), len(lesions.label_names))
    config = SkinFusionConfig(
        backbone=model_args.backbone, image_size=model_args.image_size, backbone_weights=model_args.backbone_weights,
        backbone_weights_file=model_args.backbone_weights_file, modality=model_args.modality,
        metadata_hidden_sizes=model_args.metadata_hidden_sizes, head_hidden_sizes=model_args.head_hidden_sizes,
        dropout=model_args.dropout, id2label=dict(enumerate(lesions.label_names)),
        class_weights=[float(w) for w in weights] if weights is not None else None,
        label_smoothing=model_args.label_smoothing, metadata_dropout=model_args.metadata_dropout,
        metadata_row_dropout=model_args.metadata_row_dropout,
        missing_metadata=processor.encode_metadata([{}])[0].tolist() if encoder is not None else None,
        **processor.metadata_schema(),
    )
    return processor, config


def trainer_arguments(
    args: SkinFusionTrainingArguments, config: SkinFusionConfig, cached: bool
) -> SkinFusionTrainingArguments:
    """The arguments the Trainer gets: a copy of the caller's, adjusted to this run (the caller's stay as given)."""
    changes: dict[str, Any] = {
        # Our transforms read raw columns (image, metadata) that the model's forward does not name: keep them.
        "remove_unused_columns": False,
        "dataloader_pin_memory": torch.cuda.is_available(),
        # Trainer would create the Hub repository before training and push every checkpoint; we push once, after
        # the local save is complete, so an unreachable Hub can never cost a trained model.
        "push_to_hub": False,
    }
    if config.uses_image and args.freeze_epochs > 0 and args.world_size > 1:
        changes["ddp_find_unused_parameters"] = True  # the frozen backbone gets no gradient in the first epochs
    if keeps_best_weights_in_memory(args, cached):
        changes.update(save_strategy="no", load_best_model_at_end=False)  # BestWeightsInMemoryCallback instead
    return dataclasses.replace(args, **changes)


def build_trainer(
    model: SkinFusionForImageClassification, args: SkinFusionTrainingArguments, train: Any, validation: Any,
    processor: SkinFusionProcessor, label_names: list[str], cached: bool,
    train_sample_weights: np.ndarray | None = None,
) -> SkinFusionTrainer:
    """The Trainer of one run, with its callbacks: backbone freezing, early stopping, and for heads on cached pooled
    features the best weights kept in memory. `args` are the run's (see `trainer_arguments`)."""
    callbacks: list[Any] = []
    if model.config.uses_image and args.freeze_epochs > 0:
        callbacks.append(BackboneFreezeCallback(args.freeze_epochs))
    if keeps_best_weights_in_memory(args, cached):
        callbacks.append(BestWeightsInMemoryCallback())
    if args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
    return SkinFusionTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=validation, processing_class=processor,
        data_collator=collate_inputs, compute_metrics=build_compute_metrics(label_names), callbacks=callbacks,
        backbone_learning_rate=args.backbone_learning_rate, unfreeze_last_blocks=args.unfreeze_last_blocks,
        sample_weights=train_sample_weights,
    )


def predict_logits(trainer: SkinFusionTrainer, split: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Logits (already divided by the model's temperature) and labels of a whole split, from every process."""
    output = trainer.predict(split)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return np.asarray(logits, dtype=np.float64), np.asarray(output.label_ids)


def run_training(
    model_args: ModelArguments, data_args: DataArguments, args: SkinFusionTrainingArguments
) -> TrainingReport:
    """Train, calibrate, evaluate and save one SkinFusion model; resumes from the last checkpoint if there is one."""
    configure_torch_threads()
    set_seed(args.seed)  # before the model is built: its head's initialisation must repeat run to run
    cached = check_feature_caching(model_args.modality, args)
    logger.info(describe_run(model_args, data_args, args))
    split_seed = args.seed if data_args.split_seed is None else data_args.split_seed
    lesions, synthetic = load_training_data(data_args, split_seed)
    processor, config = build_processor_and_config(lesions, model_args, data_args)
    model = SkinFusionForImageClassification(config)
    provenance = load_backbone_weights(model)

    push_to_hub = args.push_to_hub
    args = trainer_arguments(args, config, cached)
    last_checkpoint = last_complete_checkpoint(args.output_dir)  # checked before the features are extracted
    if last_checkpoint and not args.resume:
        raise ValueError(
            f"{args.output_dir} holds checkpoints (the newest: {last_checkpoint}) and --resume is False. Pass another "
            "--output_dir, or delete those checkpoints to start over; nothing was overwritten."
        )

    started = time.perf_counter()
    if cached:
        model.skin_fusion.feature_map_stage = feature_map_stage(model, args)
        train, train_labels, validation, test, test_without_metadata = cached_feature_splits(
            lesions, processor, model, data_args.balancing, args.cache_train_views, args.per_device_eval_batch_size,
            args.seed, model.skin_fusion.feature_map_stage)
    else:
        train, train_labels = training_split(lesions, processor, config, data_args.balancing, args.seed)
        validation = with_model_inputs(lesions.splits["validation"], processor, config, training=False)
        test = with_model_inputs(lesions.splits["test"], processor, config, training=False)
        test_without_metadata = with_model_inputs(lesions.splits["test"], processor, config, training=False,
                                                  withhold_metadata=True) if config.uses_metadata else None
    extraction_seconds = time.perf_counter() - started if cached else 0.0
    trainer = build_trainer(model, args, train, validation, processor, lesions.label_names, cached,
                            sample_weights(train_labels) if data_args.balancing == "weighted_sampler" else None)
    if last_checkpoint:
        logger.info("Resuming from %s", last_checkpoint)
    started = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=last_checkpoint)
    runtime = time.perf_counter() - started
    model = trainer.model

    # Calibration: one temperature fitted on the validation split (the model's logits are divided by it). Decisions:
    # the arg-max after a post-hoc logit adjustment fitted on validation for balanced accuracy; the class-weighted
    # loss alone leaves rare classes under-predicted. The probabilities stay calibrated.
    validation_logits, validation_labels = predict_logits(trainer, validation)
    fitted = fit_on_validation(validation_logits, validation_labels, np.asarray(lesions.splits["train"]["label"]),
                               len(lesions.label_names), args.calibrate, args.tune_decisions)
    model.config.temperature, model.config.decision_offsets = fitted.temperature, fitted.decision_offsets
    offsets = model.config.decision_offsets

    test_logits, test_labels = predict_logits(trainer, test)
    probabilities = softmax(test_logits, axis=1)
    results = evaluate_probabilities(probabilities, test_labels, lesions.label_names, offsets)
    test_metrics = {k: float(results[k]) for k in SCALAR_KEYS}
    without_metadata = None
    if test_without_metadata is not None:
        logits_without_metadata, _ = predict_logits(trainer, test_without_metadata)
        without_metadata = {k: float(v) for k, v in evaluate_probabilities(
            softmax(logits_without_metadata, axis=1), test_labels, lesions.label_names, offsets).items()
            if k in SCALAR_KEYS}
    report = TrainingReport(
        output_dir=args.output_dir, preset=model_args.preset, test_metrics=test_metrics,
        test_metrics_without_metadata=without_metadata, decision_strength=fitted.decision_strength,
        temperature=fitted.temperature, ece_before=fitted.ece_before, ece_after=fitted.ece_after,
        nll_before=fitted.nll_before, nll_after=fitted.nll_after,
        optimizer_steps=train_output.global_step,
        train_examples=len(train_labels), world_size=max(args.world_size, 1), train_runtime_seconds=runtime,
        feature_extraction_seconds=extraction_seconds,
        test_recall=dict(zip(lesions.label_names, map(float, results["recall"]), strict=True)),
        test_auc=dict(zip(lesions.label_names, map(float, results["roc_auc"]), strict=True)),
    )
    trainer.save_model(args.output_dir)  # weights, config (with the temperature) and processor
    if args.compare_image_only and config.modality == "fusion":
        report.image_only_test_metrics = train_image_only_twin(model_args, data_args, args).test_metrics
    if trainer.is_world_process_zero():
        output_dir = Path(args.output_dir)
        trainer.save_state()  # trainer_state.json: the log history the curves are drawn from (a soup draws its runs')
        curves = plot_training_curves({f"seed {args.seed}": trainer.state.log_history},
                                      output_dir / TRAINING_CURVES_FILE)
        metadata_columns = lesions.numeric_columns + lesions.categorical_columns
        subgroups = subgroup_metrics(
            metadata_frame(lesions.splits["test"], metadata_columns), probabilities, test_labels, metadata_columns,
            predicted=predicted_classes(torch.from_numpy(test_logits), offsets).numpy(),
        )
        plot_test_results(results, probabilities, test_labels, lesions.label_names, output_dir)
        facts = card_facts(lesions, synthetic, model, model_args, data_args, args, results, test_metrics, subgroups,
                           report, provenance, curves is not None)
        render_model_card(facts).save(output_dir / "README.md")
        save_card_facts(facts, output_dir / CARD_FACTS_FILE)
        if push_to_hub:
            report.pushed_to, report.push_error = push_safely(output_dir, args.hub_model_id or output_dir.name, args)
        (output_dir / TRAINING_REPORT_FILE).write_text(json.dumps(asdict(report), indent=2))
        remove_checkpoints(output_dir)
    return report


def train_image_only_twin(
    model_args: ModelArguments, data_args: DataArguments, args: SkinFusionTrainingArguments
) -> TrainingReport:
    """The same run with the image only (same split, seed and schedule), saved in `output_dir/image-only`: the
    baseline that a fusion model with nothing recorded must match."""
    twin_args = dataclasses.replace(args, output_dir=str(Path(args.output_dir) / "image-only"),
                                    compare_image_only=False, push_to_hub=False)
    return run_training(dataclasses.replace(model_args, modality="image"), data_args, twin_args)


def push_safely(output_dir: Path, repo_id: str, args: SkinFusionTrainingArguments) -> tuple[str | None, str | None]:
    """Push after the local save; a failure is reported, never raised: the saved model is the run's result."""
    try:
        return push_model_directory(output_dir, repo_id, private=bool(args.hub_private_repo),
                                    token=args.hub_token), None
    except RuntimeError as error:
        logger.error("%s", error)
        return None, str(error)


def card_facts(
    lesions: LesionDataset, synthetic: bool, model: SkinFusionForImageClassification, model_args: ModelArguments,
    data_args: DataArguments, args: SkinFusionTrainingArguments, results: dict[str, Any],
    test_metrics: dict[str, float], subgroups: list[dict[str, Any]], report: TrainingReport, provenance: str,
    curves: bool = False,
) -> ModelCardFacts:
    """Everything the model card states, taken from this run."""
    import timm

    source = lesions.source
    is_hub_id = not Path(source).exists() and "/" in source
    dataset_name = "SkinFusion synthetic demo set" if synthetic else Path(source).name or source
    license_name = "apache-2.0" if synthetic else hub_license_of(source)
    train_labels = np.asarray(lesions.splits["train"]["label"])
    pretrained = timm.models.get_pretrained_cfg(model.config.backbone) if model.config.uses_image else None
    return ModelCardFacts(
        model_name=f"SkinFusion {model.config.modality} ({model.config.backbone})",
        repo_or_path=args.hub_model_id or args.output_dir, label_names=lesions.label_names,
        backbone=model.config.backbone, image_size=model.config.image_size, modality=model.config.modality,
        metadata_columns=lesions.numeric_columns + lesions.categorical_columns if model.config.uses_metadata else [],
        dataset_name=dataset_name, dataset_source=data_args.dataset or source, synthetic=synthetic,
        license=license_name,
        test_metrics=test_metrics, test_results=results, subgroups=subgroups, temperature=report.temperature,
        ece_before=report.ece_before, ece_after=report.ece_after, nll_before=report.nll_before,
        nll_after=report.nll_after, split_sizes={name: len(split) for name, split in lesions.splits.items()},
        split_digests=split_digests(lesions.splits),
        train_counts={name: int((train_labels == i).sum()) for i, name in enumerate(lesions.label_names)},
        group_column=lesions.group_column, hub_dataset=source if is_hub_id else None,
        test_metrics_without_metadata=report.test_metrics_without_metadata,
        image_only_test_metrics=report.image_only_test_metrics, decision_strength=report.decision_strength,
        curves=curves,
        base_model=pretrained.hf_hub_id if pretrained is not None and model_args.backbone_weights in ("hub", "lite")
        else None,
        training={
            "backbone_weights": provenance, "metadata_hidden_sizes": model.config.metadata_hidden_sizes,
            "head_hidden_sizes": model.config.head_hidden_sizes, "dropout": model.config.dropout,
            "balancing": describe_balancing(data_args.balancing), "epochs": f"{args.num_train_epochs:g}",
            "batch_size": args.per_device_train_batch_size * max(args.world_size, 1),
            "freeze_epochs": args.freeze_epochs if model.config.uses_image else 0,
            "unfreeze_last_blocks": args.unfreeze_last_blocks, "backbone_learning_rate": args.backbone_learning_rate,
            "learning_rate": args.learning_rate, "weight_decay": args.weight_decay, "seed": args.seed,
            "split_seed": args.seed if data_args.split_seed is None else data_args.split_seed,
            "cached_views": ", ".join(args.cache_train_views)
            if args.cache_image_features and model.config.uses_image else None,
            "label_smoothing": model.config.label_smoothing,
            "metadata_dropout": model.config.metadata_dropout if model.config.uses_metadata else 0.0,
            "metadata_row_dropout": model.config.metadata_row_dropout if model.config.uses_metadata else 0.0,
            "optimizer_steps": report.optimizer_steps, "train_runtime": f"{report.train_runtime_seconds:.0f} s",
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                       f"{'GPU' if torch.cuda.is_available() else 'CPU'}, {max(args.world_size, 1)} process(es)",
            "min_subgroup": MIN_SUBGROUP_SIZE,
        },
    )
