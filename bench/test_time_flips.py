"""Test-time flips and decision rules of trained HAM10000 models, on the lesion-grouped test split they were scored on.

    python bench/test_time_flips.py RUN_DIR [RUN_DIR ...] [--data ../shared/data/ham10000] [--split_seed 42]
        [--out bench/results/test_time_flips]

For every saved model: test balanced accuracy, macro AUC and ECE with its saved temperature and decision offsets,
from the original image alone and from the probabilities averaged over the original and its horizontal flip (what the
app's test-time augmentation does, over two views instead of eight), with the metadata as recorded and with nothing
recorded. Then one decision rule beside the saved one: per-class offsets fitted on validation by coordinate ascent on
balanced accuracy (the saved rule has one strength for all classes). With several fusion models, their ensemble too
(probabilities averaged, then calibrated and adjusted on validation as train.py does for one model).

The models must share their frozen early stages (the preset's runs do): those run once per image and view through
the library's feature cache, and each model's own later stages run on the cached maps. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.seed_summary import mean_sd

REPO = Path(__file__).resolve().parents[1]
VIEW_SETS = {"original": ("original",), "original + hflip": ("original", "hflip")}
OFFSET_GRID = np.arange(-3.0, 3.01, 0.25)


def first_trained_stage(models: list, reference) -> int:
    """The first backbone stage whose weights differ from the ImageNet `reference` in any of `models`; raises if the
    stem differs (nothing could be shared)."""
    stages = []
    for model in models:
        backbone, fresh = model.skin_fusion.backbone, reference.skin_fusion.backbone
        same = [all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), fresh_block.state_dict().values()))
                for block, fresh_block in zip(backbone.blocks, fresh.blocks)]
        if not all(torch.equal(a, b) for a, b in zip(backbone.conv_stem.state_dict().values(),
                                                     fresh.conv_stem.state_dict().values())):
            raise ValueError(f"{model.name_or_path}: its stem was trained, so no stage can be shared; this bench "
                             "compares models whose early stages stayed frozen (e.g. --preset ham10000 runs).")
        stages.append(same.index(False) if False in same else len(same))
    return min(stages)


def fit_per_class_offsets(log_probabilities: np.ndarray, labels: np.ndarray, start: list[float],
                          rounds: int = 3) -> np.ndarray:
    """Offsets moved one class at a time over `OFFSET_GRID` around `start`, keeping each move that raises balanced
    accuracy on (`log_probabilities`, `labels`)."""
    from skin_fusion.evaluation.metrics import balanced_accuracy

    start = np.asarray(start, dtype=np.float64)
    offsets = start.copy()
    for _ in range(rounds):
        for c in range(len(offsets)):
            candidates = [np.concatenate([offsets[:c], [start[c] + step], offsets[c + 1:]]) for step in OFFSET_GRID]
            scores = [balanced_accuracy(labels, (log_probabilities + o).argmax(1)) for o in candidates]
            offsets = candidates[int(np.argmax(scores))]
    return offsets


def main() -> None:
    from skin_fusion import SkinFusionForImageClassification, SkinFusionProcessor
    from skin_fusion.data.feature_cache import FEATURE_MAPS_COLUMN, add_image_features, cached_inputs, withhold_metadata
    from skin_fusion.data.loading import load_lesion_dataset
    from skin_fusion.evaluation.metrics import balanced_accuracy, expected_calibration_error
    from skin_fusion.threads import configure_torch_threads
    from skin_fusion.training.calibration import fit_decision_offsets, fit_temperature
    from skin_fusion.weights.backbone_weights import load_backbone_weights
    from scipy.special import log_softmax, softmax
    from sklearn.metrics import roc_auc_score

    from bench.machine_info import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="saved model folders trained on the same split")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ham10000")
    parser.add_argument("--split_seed", type=int, default=42)
    parser.add_argument("--validation_size", type=float, default=0.1)
    parser.add_argument("--test_size", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "test_time_flips")
    args = parser.parse_args()
    configure_torch_threads()
    started = time.perf_counter()

    lesions = load_lesion_dataset(str(args.data), validation_size=args.validation_size, test_size=args.test_size,
                                  seed=args.split_seed)
    models = [SkinFusionForImageClassification.from_pretrained(run).eval() for run in args.runs]
    processor = SkinFusionProcessor.from_pretrained(args.runs[0])
    reference = SkinFusionForImageClassification(models[0].config)
    load_backbone_weights(reference)
    stage = first_trained_stage(models, reference)
    inputs = {(split, view): cached_inputs(add_image_features(lesions.splits[split], reference.skin_fusion.backbone,
                                                              processor, view=view, stage=stage), processor, True, True)
              for split in ("validation", "test") for view in ("original", "hflip")}

    def probabilities(model, split: str, view: str, recorded: bool) -> np.ndarray:
        rows = inputs[split, view] if recorded else withhold_metadata(inputs[split, view], processor)
        model.skin_fusion.feature_map_stage = stage
        with torch.inference_mode():
            logits = [model(feature_maps=torch.from_numpy(rows[FEATURE_MAPS_COLUMN][s:s + 128]).float(),
                            metadata=torch.from_numpy(rows["metadata"][s:s + 128]).float()).logits
                      for s in range(0, len(rows["labels"]), 128)]
        return torch.cat(logits).softmax(-1).double().numpy()

    labels = {split: inputs[split, "original"]["labels"] for split in ("validation", "test")}

    def readings(test: dict[tuple[bool, str], np.ndarray], offsets: np.ndarray, per_class: np.ndarray) -> dict:
        """Test figures for each metadata way and view set, from the probabilities of every (recorded, view)."""
        figures = {}
        for recorded in (True, False):
            if (recorded, "original") not in test:
                continue
            way = "recorded" if recorded else "nothing recorded"
            for view_set, views in VIEW_SETS.items():
                p = np.mean([test[recorded, view] for view in views], axis=0)
                figures[f"{way}, {view_set}"] = {
                    "balanced_accuracy": balanced_accuracy(labels["test"], (np.log(p) + offsets).argmax(1)),
                    "macro_auc": float(roc_auc_score(labels["test"], p, multi_class="ovr", average="macro")),
                    "ece": float(expected_calibration_error(p, labels["test"])),
                    "balanced_accuracy_per_class_offsets": balanced_accuracy(
                        labels["test"], (np.log(p) + per_class).argmax(1)),
                }
        return figures

    results, fusion = [], []
    for run, model in zip(args.runs, models):
        offsets = np.asarray(model.config.decision_offsets or [0.0] * model.config.num_labels)
        validation = probabilities(model, "validation", "original", True)
        per_class = fit_per_class_offsets(np.log(validation), labels["validation"], offsets)
        ways = (True, False) if model.config.uses_metadata else (True,)
        test = {(recorded, view): probabilities(model, "test", view, recorded)
                for recorded in ways for view in ("original", "hflip")}
        name = f"{run.parent.name}/{run.name}" if run.name == "image-only" else run.name
        results.append({"run": name, "modality": model.config.modality, **readings(test, offsets, per_class)})
        if model.config.modality == "fusion":
            fusion.append((validation, test))
        print(name, json.dumps(results[-1]), flush=True)
    if len(fusion) > 1:
        # The fusion models' averaged probabilities, calibrated and adjusted on validation as train.py does one model.
        log_validation = np.log(np.mean([validation for validation, _ in fusion], axis=0))
        temperature = fit_temperature(log_validation, labels["validation"])
        prior = np.bincount(np.asarray(lesions.splits["train"]["label"]), minlength=len(lesions.label_names)) + 1.0
        offsets, _ = fit_decision_offsets(log_validation / temperature, labels["validation"], prior)
        calibrated = log_softmax(log_validation / temperature, axis=1)
        per_class = fit_per_class_offsets(calibrated, labels["validation"], offsets)
        test = {key: softmax(np.log(np.mean([t[key] for _, t in fusion], axis=0)) / temperature, axis=1)
                for key in fusion[0][1]}
        results.append({"run": f"ensemble of {len(fusion)}", "modality": "fusion ensemble",
                        **readings(test, np.asarray(offsets), per_class)})

    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(), "seconds": round(time.perf_counter() - started, 1), "shared_stages": stage}
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "runs": results}, indent=2))
    args.out.with_suffix(".md").write_text(markdown(results, machine))


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
            figures = [r[key] for r in group]
            inputs = way if modality != "image" else "image only"
            lines.append(f"| {modality} | {inputs} | {views} | " + " | ".join(
                mean_sd([f[m] for f in figures]) for m in ("balanced_accuracy", "macro_auc", "ece",
                                                        "balanced_accuracy_per_class_offsets")) + f" | {len(group)} |")
    keys = [f"{way}, {views}" for way in ("recorded", "nothing recorded") for views in VIEW_SETS]
    lines += ["", "Balanced accuracy of every run:", "", "| run | " + " | ".join(keys) + " |",
              "|---|" + "---|" * len(keys)]
    for r in results:
        lines.append(f"| {r['run']} | " + " | ".join(f"{r[k]['balanced_accuracy']:.3f}" if k in r else "—"
                                                     for k in keys) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
