"""A "soup" of training runs: one SkinFusion model whose backbone is the average of the runs' backbones and whose
heads are all of the runs' heads, side by side, their logits averaged.

Runs of one recipe that differ only in their seed fine-tune the same pretrained backbone a short way, so their
backbone weights can be averaged (Wortsman et al., "Model soups", ICML 2022). Their heads start from different random
initialisations and cannot: their hidden units are not aligned. Instead every head is kept, stacked into one wider
head of the same architecture (block-diagonal weights), whose output is the mean of the heads' calibrated logits. The
result is an ordinary `SkinFusionForImageClassification` (wider hidden sizes in its config), saved and served like
any other at the cost of one backbone forward; fit its temperature and decision offsets on validation again.

    python -m skin_fusion.training.soup --runs RUN_DIR RUN_DIR [RUN_DIR ...] --output_dir DIR [--image_only DIR]

Soups the saved runs (train.py output folders of one recipe and split), calibrates the soup on their validation
split, scores it on their test split with the metadata as recorded and with nothing recorded, and saves it with its
card, plots and report, as train.py saves one run. With `--image_only`, the card's table adds the test figures of an
image-only model of the same split (the same seeds trained with `--modality image` and souped), the soup's twin.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from torch import nn
from transformers import HfArgumentParser

from ..data.feature_cache import add_image_features, cached_inputs, split_digests, withhold_metadata
from ..data.loading import LesionDataset, load_lesion_dataset
from ..data.model_inputs import metadata_frame
from ..evaluation.metrics import SCALAR_KEYS
from ..evaluation.plots import plot_test_results, plot_training_curves
from ..evaluation.subgroups import evaluate_probabilities, subgroup_metrics
from ..files import CARD_FACTS_FILE, SOUP_REPORT_FILE, TRAINER_STATE_FILE, TRAINING_CURVES_FILE
from ..modeling.configuration_skin_fusion import SkinFusionConfig
from ..modeling.modeling_skin_fusion import SkinFusionForImageClassification, predicted_classes
from ..modeling.processing_skin_fusion import SkinFusionProcessor
from ..reports.model_card import (ModelCardFacts, image_only_figures, load_card_facts, render_model_card,
                                  save_card_facts, split_differences)
from ..threads import configure_torch_threads
from .calibration import fit_on_validation

# Config fields that must agree for runs to be souped (the seed and the fitted calibration may differ).
ARCHITECTURE_FIELDS = ("backbone", "image_size", "modality", "metadata_hidden_sizes", "head_hidden_sizes",
                       "numeric_features", "categorical_features", "missing_metadata", "id2label",
                       "backbone_weights", "backbone_weights_file")
# Training facts that may differ between the runs of one recipe.
PER_RUN_FACTS = ("seed", "optimizer_steps", "train_runtime", "machine")


def check_soup_ingredients(models: list[SkinFusionForImageClassification]) -> None:
    """Raise unless there are at least two models of one architecture, labels and metadata encoding."""
    if len(models) < 2:
        raise ValueError(f"A soup needs at least two trained runs; got {len(models)}. Pass several run folders of "
                         "one recipe (e.g. --seed 42, 43 and 44).")
    first = models[0].config.to_dict()
    if models[0].config.uses_image and models[0].config.backbone_weights == "none":
        raise ValueError("These runs' backbones started from their own random weights (backbone_weights='none'): "
                         "averaging them would mix unrelated features. Soup runs that fine-tuned the same pretrained "
                         "weights (e.g. --backbone_weights lite).")
    for model in models[1:]:
        other = model.config.to_dict()
        differing = [name for name in ARCHITECTURE_FIELDS if first.get(name) != other.get(name)]
        if differing:
            raise ValueError(f"{model.name_or_path} differs from {models[0].name_or_path} in {', '.join(differing)}: "
                             "only runs of one recipe (same backbone and its starting weights, widths, classes and "
                             "metadata encoding; different seeds) can be souped.")


def averaged_state(modules: list[nn.Module]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the modules' floating-point weights and buffers (others, such as batch norms' step
    counts: the first module's). Batch-norm statistics are averaged too, not estimated again; the mean is taken in
    float64, so weights equal in every module (frozen stages) stay exactly as they were."""
    states = [module.state_dict() for module in modules]
    return {name: torch.stack([state[name].double() for state in states]).mean(0).to(value.dtype)
            if value.is_floating_point() else value.clone()
            for name, value in states[0].items()}


def stacked_linear(layers: list[nn.Linear], shared_inputs: int) -> nn.Linear:
    """One linear layer computing every layer of `layers` side by side.

    Its input is `shared_inputs` columns every layer reads, then each layer's own columns in turn; its output is
    each layer's output in turn (block-diagonal outside the shared columns).
    """
    own_inputs = [layer.in_features - shared_inputs for layer in layers]
    stacked = nn.Linear(shared_inputs + sum(own_inputs), sum(layer.out_features for layer in layers))
    with torch.no_grad():
        stacked.weight.zero_()
        row, column = 0, shared_inputs
        for layer, width in zip(layers, own_inputs):
            rows = slice(row, row + layer.out_features)
            stacked.weight[rows, :shared_inputs] = layer.weight[:, :shared_inputs]
            stacked.weight[rows, column:column + width] = layer.weight[:, shared_inputs:]
            stacked.bias[rows] = layer.bias
            row, column = row + layer.out_features, column + width
    return stacked


def averaged_output_linear(layers: list[nn.Linear], scales: list[float], shared_inputs: int) -> nn.Linear:
    """One linear layer whose output is the mean of `scale * layer(input)` over `layers`; its input is laid out as
    in `stacked_linear` (`shared_inputs` columns every layer reads, then each layer's own columns in turn)."""
    weights = [layer.weight * scale / len(layers) for layer, scale in zip(layers, scales)]
    merged = nn.Linear(shared_inputs + sum(layer.in_features - shared_inputs for layer in layers),
                       layers[0].out_features)
    with torch.no_grad():
        merged.weight.copy_(torch.cat([sum(w[:, :shared_inputs] for w in weights)] + [w[:, shared_inputs:]
                                                                                       for w in weights], 1))
        merged.bias.copy_(sum(layer.bias * scale for layer, scale in zip(layers, scales)) / len(layers))
    return merged


def linear_layers(stack: nn.Module) -> list[nn.Linear]:
    """The linear layers of `stack`, in order."""
    return [module for module in stack.modules() if isinstance(module, nn.Linear)]


def load_side_by_side(target: nn.Module, sources: list[nn.Module], first_shared_inputs: int) -> None:
    """Load every linear layer of `target` with the same-depth layers of `sources` side by side (`stacked_linear`):
    the first reads `first_shared_inputs` shared columns, the later ones their own source's outputs only."""
    per_source = [linear_layers(source) for source in sources]
    for depth, layer in enumerate(linear_layers(target)):
        shared_inputs = first_shared_inputs if depth == 0 else 0
        side_by_side = stacked_linear([layers[depth] for layers in per_source], shared_inputs)
        layer.load_state_dict(side_by_side.state_dict())


def soup_config(config: SkinFusionConfig, ingredients: int) -> SkinFusionConfig:
    """`config` with every hidden width multiplied by the number of ingredients, and calibration reset."""
    settings = config.to_dict()
    settings.update(
        metadata_hidden_sizes=[width * ingredients for width in config.metadata_hidden_sizes],
        head_hidden_sizes=[width * ingredients for width in config.head_hidden_sizes],
        temperature=1.0, decision_offsets=None,
    )
    return SkinFusionConfig.from_dict(settings)


def soup_of(models: list[SkinFusionForImageClassification]) -> SkinFusionForImageClassification:
    """The models' backbones averaged and their heads side by side (see the module docstring); its logits equal the
    mean of the heads' logits (each divided by its model's temperature) on the averaged backbone's features."""
    check_soup_ingredients(models)
    soup = SkinFusionForImageClassification(soup_config(models[0].config, len(models))).eval()
    encoders = [model.skin_fusion for model in models]
    if soup.skin_fusion.backbone is not None:
        soup.skin_fusion.backbone.load_state_dict(averaged_state([encoder.backbone for encoder in encoders]))
    image_width = soup.skin_fusion.image_features_dim
    if soup.skin_fusion.metadata_mlp is not None:
        load_side_by_side(soup.skin_fusion.metadata_mlp, [encoder.metadata_mlp for encoder in encoders],
                          models[0].config.metadata_dim)
    load_side_by_side(soup.head, [model.head for model in models], image_width)
    classifiers = [linear_layers(model.classifier)[0] for model in models]
    # Without a hidden head layer the classifier reads the fused features: the image's shared, each metadata MLP's own.
    shared = 0 if soup.config.head_hidden_sizes else image_width
    scales = [1.0 / model.config.temperature for model in models]
    soup.classifier[-1].load_state_dict(averaged_output_linear(classifiers, scales, shared).state_dict())
    return soup


@dataclass
class SoupArguments:
    """Which runs to soup, where to save the soup, and the split they were trained on."""

    runs: list[str] = field(metadata={"help": "Saved runs of one recipe and split (train.py output folders), e.g. "
                                              "the same preset trained with --seed 42, 43 and 44."})
    output_dir: str = field(metadata={"help": "Where the soup is saved (model, processor, card, plots, report)."})
    validation_size: float = field(metadata={"help": "The runs' --validation_size (0.1 for --preset ham10000)."})
    test_size: float = field(metadata={"help": "The runs' --test_size (0.2 for --preset ham10000)."})
    dataset: str | None = field(default=None, metadata={"help": "The runs' data set (default: as their cards say)."})
    batch_size: int = field(default=64, metadata={"help": "Images per backbone call when scoring."})
    image_only: str | None = field(
        default=None,
        metadata={"help": "An image-only model of the runs' recipe and split (their seeds trained with --modality "
                          "image, souped): its test figures go on the card beside the soup's with / without metadata."},
    )


def check_same_recipe(runs: list[Path], facts: list[ModelCardFacts], output_dir: Path) -> SkinFusionProcessor:
    """The runs' processor; raises unless the runs are distinct runs (not soups) of one recipe, with one processor,
    and `output_dir` is none of them and holds no model yet."""
    if len(set(map(Path.resolve, runs))) < len(runs) or output_dir.resolve() in map(Path.resolve, runs):
        raise ValueError("Pass each run once, and an --output_dir that is none of the runs.")
    if (output_dir / "config.json").exists():
        raise FileExistsError(f"{output_dir} already holds a model; pass a new --output_dir (nothing was written).")
    # Soups first: a soup's facts differ from a run's (its seeds), which would otherwise be reported as another recipe.
    for run, run_facts in zip(runs, facts):
        if "soup_seeds" in run_facts.training:
            raise ValueError(f"{run} is a soup already (seeds {run_facts.training['soup_seeds']}); pass the runs it "
                             "was made of.")
    recipes = [{key: value for key, value in f.training.items() if key not in PER_RUN_FACTS} for f in facts]
    for run, recipe in zip(runs[1:], recipes[1:]):
        differing = sorted(key for key in recipe.keys() | recipes[0].keys() if recipe.get(key) != recipes[0].get(key))
        if differing:
            raise ValueError(f"{run} was trained differently from {runs[0]} ({', '.join(differing)}): soup runs of "
                             "one recipe that differ only in their --seed.")
    processors = [SkinFusionProcessor.from_pretrained(run) for run in runs]
    for run, processor in zip(runs[1:], processors[1:]):
        if processor.to_dict() != processors[0].to_dict():
            raise ValueError(f"{run}'s processor (image transform or metadata encoding) differs from {runs[0]}'s: "
                             "soup runs trained on one split, whose processors were fitted on the same rows.")
    return processors[0]


def check_same_split(runs: list[Path], facts: list[ModelCardFacts]) -> None:
    """Raise unless every run was trained on the same data set and split (`split_differences`)."""
    for run, other in zip(runs[1:], facts[1:]):
        if differences := split_differences(facts[0], other):
            raise ValueError(f"{run} was trained on another split than {runs[0]} ({'; '.join(differences)}): soup runs "
                             "of one split only (the same --dataset, --split_seed, --validation_size and --test_size).")


def check_split_matches(lesions: LesionDataset, facts: ModelCardFacts, data: str) -> None:
    """Raise unless `lesions` (loaded from `data`) is the split `facts` records: its classes, its sizes and, when the
    run recorded them, every split's rows (metadata, image file names and bytes)."""
    sizes = {name: len(split) for name, split in lesions.splits.items()}
    if lesions.label_names != facts.label_names:
        raise ValueError(f"{data} has the classes {lesions.label_names}, the runs {facts.label_names}: pass the data "
                         "set they were trained on with --dataset.")
    if sizes != facts.split_sizes:
        raise ValueError(f"The validation and test sizes given split {data} into {sizes}, but the runs were trained "
                         f"on {facts.split_sizes}: pass the runs' --validation_size and --test_size, or they would be "
                         "scored on images they trained on.")
    if facts.split_digests is not None:
        differing = [name for name, digest in split_digests(lesions.splits).items()
                     if digest != facts.split_digests.get(name)]
        if differing:
            raise ValueError(f"The {' and '.join(differing)} rows of {data} differ from those the runs were trained "
                             "on (same sizes; other rows, metadata, image bytes or renamed image files): pass the "
                             "data set they were trained on with --dataset, unchanged.")


def load_split(args: SoupArguments, facts: list[ModelCardFacts]) -> LesionDataset:
    """The runs' data set split as they were trained on it (see `check_split_matches`), checked against the first run
    that recorded its rows' digests."""
    recorded = next((f for f in facts if f.split_digests is not None), facts[0])
    data = args.dataset or recorded.dataset_source
    lesions = load_lesion_dataset(data, validation_size=args.validation_size, test_size=args.test_size,
                                  seed=recorded.training["split_seed"])
    check_split_matches(lesions, recorded, data)
    return lesions


def soup_logits(soup: SkinFusionForImageClassification, inputs: dict[str, np.ndarray],
                batch_size: int = 256) -> np.ndarray:
    """The soup's logits on cached pooled image features and encoded metadata."""
    with torch.inference_mode():
        return torch.cat([soup(
            image_features=torch.from_numpy(inputs["image_features"][s:s + batch_size])
            if "image_features" in inputs else None,
            metadata=torch.from_numpy(inputs["metadata"][s:s + batch_size]) if "metadata" in inputs else None,
        ).logits for s in range(0, len(inputs["labels"]), batch_size)]).double().numpy()


def draw_runs_curves(runs: list[Path], seeds: list[int], path: Path) -> list[int]:
    """The training curves of every run on one plot at `path`, from their saved Trainer state; runs saved before
    train.py kept that state have only their own plot, and the first run's is copied. Returns the seeds drawn."""
    states = [run / TRAINER_STATE_FILE for run in runs]
    if all(state.is_file() for state in states):
        histories = {f"seed {seed}": json.loads(state.read_text())["log_history"] for seed, state in zip(seeds, states)}
        return seeds if plot_training_curves(histories, path) else []
    if (runs[0] / TRAINING_CURVES_FILE).is_file():
        shutil.copyfile(runs[0] / TRAINING_CURVES_FILE, path)
        return seeds[:1]
    return []


def save_soup(args: SoupArguments) -> dict[str, Any]:
    """Soup, calibrate, score and save `args.runs` (see the module docstring); returns the soup's report."""
    configure_torch_threads()
    started = time.perf_counter()
    runs = [Path(run) for run in args.runs]
    missing = [str(run) for run in runs if not (run / CARD_FACTS_FILE).is_file()]
    if missing:
        raise FileNotFoundError(f"No {CARD_FACTS_FILE} in {', '.join(missing)}: pass folders written by train.py.")
    facts = [load_card_facts(run / CARD_FACTS_FILE) for run in runs]
    processor = check_same_recipe(runs, facts, Path(args.output_dir))
    check_same_split(runs, facts)
    image_only = image_only_figures(facts[0], Path(args.image_only)) if args.image_only else None
    soup = soup_of([SkinFusionForImageClassification.from_pretrained(run).eval() for run in runs])
    lesions = load_split(args, facts)
    inputs = {split: cached_inputs(add_image_features(lesions.splits[split], soup.skin_fusion.backbone, processor,
                                                      batch_size=args.batch_size)
                                   if soup.config.uses_image else lesions.splits[split],
                                   processor, soup.config.uses_image, soup.config.uses_metadata)
              for split in ("validation", "test")}

    validation_logits, validation_labels = soup_logits(soup, inputs["validation"]), inputs["validation"]["labels"]
    fitted = fit_on_validation(validation_logits, validation_labels, np.asarray(lesions.splits["train"]["label"]),
                               len(lesions.label_names))
    soup.config.temperature, soup.config.decision_offsets = fitted.temperature, fitted.decision_offsets
    offsets = fitted.decision_offsets

    test = inputs["test"]
    test_logits = soup_logits(soup, test)
    probabilities = softmax(test_logits, axis=1)
    results = evaluate_probabilities(probabilities, test["labels"], lesions.label_names, offsets)
    test_metrics = {key: float(results[key]) for key in SCALAR_KEYS}
    without_metadata = None
    if soup.config.uses_metadata:
        without_metadata = {key: float(value) for key, value in evaluate_probabilities(
            softmax(soup_logits(soup, withhold_metadata(test, processor)), axis=1), test["labels"], lesions.label_names,
            offsets).items() if key in SCALAR_KEYS}

    output_dir = Path(args.output_dir)
    soup.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    columns = lesions.numeric_columns + lesions.categorical_columns
    decided = predicted_classes(torch.from_numpy(test_logits), offsets).numpy()
    plot_test_results(results, probabilities, test["labels"], lesions.label_names, output_dir)
    seeds = [f.training["seed"] for f in facts]
    curve_seeds = draw_runs_curves(runs, seeds, output_dir / TRAINING_CURVES_FILE)
    soup_facts = dataclasses.replace(
        facts[0], model_name=f"{facts[0].model_name}, soup of {len(runs)} runs", repo_or_path=str(output_dir),
        test_metrics=test_metrics, test_results=results, temperature=fitted.temperature,
        subgroups=subgroup_metrics(metadata_frame(lesions.splits["test"], columns), probabilities, test["labels"],
                                   columns, predicted=decided),
        ece_before=fitted.ece_before, ece_after=fitted.ece_after, nll_before=fitted.nll_before,
        nll_after=fitted.nll_after, test_metrics_without_metadata=without_metadata, image_only_test_metrics=image_only,
        # The rows scored here, once load_split has checked them against a run's digests; unchecked rows (no run
        # recorded any) would vouch for whatever --dataset held.
        split_digests=split_digests(lesions.splits) if any(f.split_digests is not None for f in facts) else None,
        decision_strength=fitted.decision_strength,
        curves=bool(curve_seeds),
        training={**facts[0].training, "seed": None, "soup_seeds": seeds, "curve_seeds": curve_seeds,
                  "metadata_hidden_sizes": soup.config.metadata_hidden_sizes,
                  "head_hidden_sizes": soup.config.head_hidden_sizes,
                  "optimizer_steps": sum(f.training["optimizer_steps"] for f in facts),
                  "train_runtime": " + ".join(f.training["train_runtime"] for f in facts)},
    )
    render_model_card(soup_facts).save(output_dir / "README.md")
    save_card_facts(soup_facts, output_dir / CARD_FACTS_FILE)
    report = {"output_dir": str(output_dir), "runs": [str(run) for run in runs], "seeds": seeds,
              "test_metrics": test_metrics, "test_metrics_without_metadata": without_metadata,
              "image_only_test_metrics": image_only, "temperature": fitted.temperature,
              "decision_strength": fitted.decision_strength,
              "runs_test_metrics": [f.test_metrics for f in facts],
              "runs_test_metrics_without_metadata": [f.test_metrics_without_metadata for f in facts],
              "soup_seconds": round(time.perf_counter() - started, 1)}
    (output_dir / SOUP_REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    """Soup saved runs from the command line; prints the soup's test figures."""
    (args,) = HfArgumentParser(SoupArguments).parse_args_into_dataclasses(args=argv)
    report = save_soup(args)
    print(json.dumps({key: report[key] for key in ("test_metrics", "test_metrics_without_metadata",
                                                   "image_only_test_metrics")}, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # refused input: the message, no traceback
        sys.exit(f"skin_fusion.training.soup: {error}")
