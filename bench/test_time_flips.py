"""Test-time views, decision rules and an ensemble of trained HAM10000 models, on the lesion-grouped test split they
were scored on.

    python -m bench.test_time_flips RUN_DIR [RUN_DIR ...] [--data ../shared/data/ham10000] [--split_seed 42]
        [--view_sets original original+hflip training-views all-views] [--out bench/results/test_time_flips]

For every saved model: test balanced accuracy, macro AUC and ECE with its saved temperature and decision offsets
(fitted by train.py on validation, single view, metadata as recorded: what the app applies to every request), from the
original image alone and from the probabilities averaged over a set of its views (`VIEW_SETS`: by default the original
and its horizontal flip, which the app's test-time augmentation averages; also the four training views and all eight
views), with the metadata as recorded and with nothing recorded.
Beside the saved rule: per-class offsets fitted on validation by coordinate ascent on balanced accuracy (the saved
rule has one strength for all classes). With several fusion models, their ensemble too (probabilities averaged, then
calibrated and adjusted on validation as train.py does for one model).

The models must share their frozen early stages (the preset's runs do): those run once per image and view through
the library's feature cache, and each model's own later stages run on the cached maps. Every run must have been
trained on the split given here: its card_facts.json is checked as the soup command checks it (split seed, sizes, and
the digests of the rows and images; the data set's name only for runs saved before digests). Writes OUT.json and
OUT.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import log_softmax, softmax
from sklearn.metrics import roc_auc_score

from bench.machine_info import machine_info
from bench.seed_summary import mean_sd
from skin_fusion import SkinFusionForImageClassification, SkinFusionProcessor
from skin_fusion.data.feature_cache import FEATURE_MAPS_COLUMN, add_image_features, cached_inputs, withhold_metadata
from skin_fusion.data.loading import LesionDataset, load_lesion_dataset
from skin_fusion.data.views import FLIPS_AND_HALF_TURN, VIEWS
from skin_fusion.evaluation.metrics import balanced_accuracy, expected_calibration_error
from skin_fusion.files import CARD_FACTS_FILE
from skin_fusion.modeling.modeling_skin_fusion import predicted_classes
from skin_fusion.reports.model_card import load_card_facts
from skin_fusion.threads import configure_torch_threads
from skin_fusion.training.calibration import fit_on_validation
from skin_fusion.training.soup import check_same_split, check_split_matches
from skin_fusion.weights.backbone_weights import load_backbone_weights

REPO = Path(__file__).resolve().parents[1]
# Views whose probabilities are averaged: the image alone, with its mirror image (the app's test-time augmentation),
# the ham10000 preset's four training views, and all eight.
VIEW_SETS = {"original": ("original",), "original+hflip": ("original", "hflip"),
             "training-views": FLIPS_AND_HALF_TURN, "all-views": tuple(VIEWS)}
DEFAULT_VIEW_SETS = ["original", "original+hflip"]
OFFSET_STEPS = np.arange(-3.0, 3.01, 0.25)
BATCH_SIZE = 128

Probabilities = dict[tuple[bool, str], np.ndarray]  # (metadata recorded?, view) -> test probabilities


def first_trained_stage(models: list[SkinFusionForImageClassification],
                        reference: SkinFusionForImageClassification) -> int:
    """The first backbone stage whose weights differ from the ImageNet `reference` in any of `models`; raises if a
    stem differs (nothing could be shared)."""
    def same(module: torch.nn.Module, other: torch.nn.Module) -> bool:
        return all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), other.state_dict().values()))

    fresh, stages = reference.skin_fusion.backbone, []
    for model in models:
        backbone = model.skin_fusion.backbone
        if not same(backbone.conv_stem, fresh.conv_stem):
            raise ValueError(f"{model.name_or_path}: its stem was trained, so no stage can be shared; this bench "
                             "compares models whose early stages stayed frozen (e.g. --preset ham10000 runs).")
        frozen = [same(block, fresh_block) for block, fresh_block in zip(backbone.blocks, fresh.blocks)]
        stages.append(frozen.index(False) if False in frozen else len(frozen))
    return min(stages)


def add_run_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """Saved runs, the data set and split they were trained on, and the output stem (`bench/results/OUT`)."""
    parser.add_argument("runs", nargs="+", type=Path, help="saved model folders trained on the same split")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ham10000")
    parser.add_argument("--split_seed", type=int, default=42)
    parser.add_argument("--validation_size", type=float, default=0.1)
    parser.add_argument("--test_size", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / out)


@dataclass
class SavedRuns:
    """Saved runs that share their frozen early stages, loaded with their split."""

    lesions: LesionDataset
    models: list[SkinFusionForImageClassification]
    processor: SkinFusionProcessor
    reference: SkinFusionForImageClassification  # the ImageNet model whose early stages every run kept
    stage: int  # the first stage any run trained: the cached maps enter it


def load_saved_runs(args: argparse.Namespace) -> SavedRuns:
    """The runs of `args` (see `add_run_arguments`), checked against their split."""
    facts = [load_card_facts(run / CARD_FACTS_FILE) for run in args.runs]
    check_same_split(args.runs, facts)
    recorded = next((f for f in facts if f.split_digests is not None), facts[0])
    if recorded.training.get("split_seed") != args.split_seed:
        raise ValueError(f"The runs were trained on split seed {recorded.training.get('split_seed')}, not "
                         f"{args.split_seed}: pass theirs with --split_seed, or their test figures here would include "
                         "images they trained on.")
    lesions = load_lesion_dataset(str(args.data), validation_size=args.validation_size, test_size=args.test_size,
                                  seed=args.split_seed)
    check_split_matches(lesions, recorded, str(args.data))
    models = [SkinFusionForImageClassification.from_pretrained(run).eval() for run in args.runs]
    reference = SkinFusionForImageClassification(models[0].config)
    load_backbone_weights(reference)
    # The metadata encoder comes from a run that reads metadata, if any (an image-only run's processor has none).
    encoding_run = next((run for run, model in zip(args.runs, models) if model.config.uses_metadata), args.runs[0])
    return SavedRuns(lesions, models, SkinFusionProcessor.from_pretrained(encoding_run), reference,
                     first_trained_stage(models, reference))


def cached_split(runs: SavedRuns, split: str, view: str = "original") -> dict[str, np.ndarray]:
    """A split's maps entering `runs.stage` (from the feature cache), encoded metadata and labels."""
    maps = add_image_features(runs.lesions.splits[split], runs.reference.skin_fusion.backbone, runs.processor,
                              view=view, stage=runs.stage)
    return cached_inputs(maps, runs.processor, True, runs.processor.encoder is not None)


def fit_per_class_offsets(log_probabilities: np.ndarray, labels: np.ndarray, start: np.ndarray,
                          rounds: int = 3) -> np.ndarray:
    """Offsets moved one class at a time to `start[c] + step` for each step of `OFFSET_STEPS`, keeping a move only
    when it raises balanced accuracy on (`log_probabilities`, `labels`)."""
    log_probabilities = torch.from_numpy(log_probabilities)

    def score(offsets: np.ndarray) -> float:
        return balanced_accuracy(labels, predicted_classes(log_probabilities, offsets.tolist()).numpy())

    offsets = np.asarray(start, dtype=np.float64).copy()
    best = score(offsets)
    for _ in range(rounds):
        for c in range(len(offsets)):
            for step in OFFSET_STEPS:
                candidate = offsets.copy()
                candidate[c] = start[c] + step
                if (candidate_score := score(candidate)) > best:
                    offsets, best = candidate, candidate_score
    return offsets


def model_probabilities(model: SkinFusionForImageClassification, rows: dict[str, np.ndarray],
                        stage: int) -> np.ndarray:
    """Calibrated class probabilities of `model` on cached `rows` (maps entering `stage`, encoded metadata)."""
    model.skin_fusion.feature_map_stage = stage

    def metadata(start: int) -> torch.Tensor | None:
        if not model.config.uses_metadata:
            return None
        return torch.from_numpy(rows["metadata"][start:start + BATCH_SIZE]).float()

    with torch.inference_mode():
        logits = [model(feature_maps=torch.from_numpy(rows[FEATURE_MAPS_COLUMN][s:s + BATCH_SIZE]).float(),
                        metadata=metadata(s)).logits
                  for s in range(0, len(rows["labels"]), BATCH_SIZE)]
    return torch.cat(logits).softmax(-1).double().numpy()


def readings(test: Probabilities, labels: np.ndarray, offsets: np.ndarray, per_class: np.ndarray) -> dict[str, Any]:
    """Test figures for each metadata way and view set present in `test`."""
    def decided(p: np.ndarray, rule: np.ndarray) -> np.ndarray:
        return predicted_classes(torch.from_numpy(np.log(p)), rule.tolist()).numpy()

    figures = {}
    for recorded in (True, False):
        if (recorded, "original") not in test:
            continue
        way = "recorded" if recorded else "nothing recorded"
        for view_set, views in VIEW_SETS.items():
            if not all((recorded, view) in test for view in views):
                continue
            p = np.mean([test[recorded, view] for view in views], axis=0)
            figures[f"{way}, {view_set}"] = {
                "balanced_accuracy": balanced_accuracy(labels, decided(p, offsets)),
                "macro_auc": float(roc_auc_score(labels, p, multi_class="ovr", average="macro")),
                "ece": float(expected_calibration_error(p, labels)),
                "balanced_accuracy_per_class_offsets": balanced_accuracy(labels, decided(p, per_class)),
            }
    return figures


def ensemble_readings(fusion: list[tuple[np.ndarray, Probabilities]], labels: dict[str, np.ndarray],
                      train_labels: np.ndarray) -> dict[str, Any]:
    """The fusion models' averaged probabilities, calibrated and adjusted on validation as train.py does one model."""
    log_validation = np.log(np.mean([validation for validation, _ in fusion], axis=0))
    fitted = fit_on_validation(log_validation, labels["validation"], train_labels, log_validation.shape[1])
    temperature, offsets = fitted.temperature, np.asarray(fitted.decision_offsets)
    per_class = fit_per_class_offsets(log_softmax(log_validation / temperature, axis=1), labels["validation"], offsets)
    test = {key: softmax(np.log(np.mean([t[key] for _, t in fusion], axis=0)) / temperature, axis=1)
            for key in fusion[0][1]}
    return readings(test, labels["test"], offsets, per_class)


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    """Mean ± sd per modality and way, then every run."""
    lines = [f"Test split; {machine['cpu']}, {machine['logical_cpus']} CPUs, torch {machine['torch']}, "
             f"{machine['date']}; {machine['seconds']:.0f} s.", "",
             "| model | inputs | views | balanced accuracy | macro AUC | ECE | BACC, per-class offsets | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for modality in dict.fromkeys(r["modality"] for r in results):
        group = [r for r in results if r["modality"] == modality]
        for key in [k for k, v in group[0].items() if isinstance(v, dict)]:
            way, views = key.split(", ", 1)
            inputs = way if modality != "image" else "image only"
            figures = [r[key] for r in group]
            lines.append(f"| {modality} | {inputs} | {views} | " + " | ".join(
                mean_sd([f[m] for f in figures]) for m in ("balanced_accuracy", "macro_auc", "ece",
                                                           "balanced_accuracy_per_class_offsets"))
                + f" | {len(group)} |")
    keys = [f"{way}, {views}" for way in ("recorded", "nothing recorded") for views in VIEW_SETS
            if any(f"{way}, {views}" in r for r in results)]
    lines += ["", "Balanced accuracy of every run:", "", "| run | " + " | ".join(keys) + " |",
              "|---|" + "---|" * len(keys)]
    for r in results:
        lines.append(f"| {r['run']} | " + " | ".join(f"{r[k]['balanced_accuracy']:.3f}" if k in r else "—"
                                                     for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, "test_time_flips")
    parser.add_argument("--view_sets", nargs="+", choices=list(VIEW_SETS), default=DEFAULT_VIEW_SETS,
                        help="test-time view sets whose views to extract (each view of the test split once); "
                             "every view set whose views were extracted is scored, so all-views scores them all")
    args = parser.parse_args()
    configure_torch_threads()
    started = time.perf_counter()

    saved = load_saved_runs(args)
    lesions, models, processor, stage = saved.lesions, saved.models, saved.processor, saved.stage
    views = list(dict.fromkeys(["original", *(view for name in args.view_sets for view in VIEW_SETS[name])]))
    inputs = {("validation", "original"): cached_split(saved, "validation"),
              **{("test", view): cached_split(saved, "test", view) for view in views}}
    labels = {split: inputs[split, "original"]["labels"] for split in ("validation", "test")}

    results, fusion = [], []
    for run, model in zip(args.runs, models):
        offsets = np.asarray(model.config.decision_offsets or [0.0] * model.config.num_labels)
        validation = model_probabilities(model, inputs["validation", "original"], stage)
        per_class = fit_per_class_offsets(np.log(validation), labels["validation"], offsets)
        test = {(recorded, view): model_probabilities(
                    model, inputs["test", view] if recorded else withhold_metadata(inputs["test", view], processor),
                    stage)
                for recorded in ((True, False) if model.config.uses_metadata else (True,))
                for view in views}
        name = f"{run.parent.name}/{run.name}" if run.name == "image-only" else run.name
        results.append({"run": name, "modality": model.config.modality,
                        **readings(test, labels["test"], offsets, per_class)})
        if model.config.modality == "fusion":
            fusion.append((validation, test))
        print(name, json.dumps(results[-1]), flush=True)
    if len(fusion) > 1:
        results.append({"run": f"ensemble of {len(fusion)}", "modality": "fusion ensemble",
                        **ensemble_readings(fusion, labels, np.asarray(lesions.splits["train"]["label"]))})

    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(), "seconds": round(time.perf_counter() - started, 1), "shared_stages": stage}
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "runs": results}, indent=2))
    args.out.with_suffix(".md").write_text(markdown(results, machine))


if __name__ == "__main__":
    main()
