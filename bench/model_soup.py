"""Soups of training runs against the runs alone, on the lesion-grouped test split they were scored on.

    python -m bench.model_soup RUN_DIR [RUN_DIR ...] [--sizes 3 6] [--data ../shared/data/ham10000] [--split_seed 42]
        [--out bench/results/model_soup]

A soup (`skin_fusion.training.soup`) averages the runs' backbones and keeps their heads side by side: one model, one
backbone forward. Every combination of each of `--sizes` runs is souped (default: all runs, one soup); each soup's
temperature and decision offsets are fitted on validation as train.py fits one run's. Test balanced accuracy, macro
AUC and ECE of every run alone (its saved calibration) and of every soup, with the metadata as recorded and with
nothing recorded, from the original image (what the app serves by default). The runs must share their frozen early
stages (runs of one preset do): those run once per image through the library's feature cache. Writes OUT.json and
OUT.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from bench.machine_info import machine_info
from bench.seed_summary import mean_sd
from bench.test_time_flips import add_run_arguments, cached_split, load_saved_runs, model_probabilities
from skin_fusion import SkinFusionForImageClassification, SkinFusionProcessor
from skin_fusion.data.feature_cache import withhold_metadata
from skin_fusion.evaluation.metrics import balanced_accuracy, expected_calibration_error
from skin_fusion.modeling.modeling_skin_fusion import predicted_classes
from skin_fusion.threads import configure_torch_threads
from skin_fusion.training.calibration import fit_on_validation
from skin_fusion.training.soup import soup_of

WAYS = ("recorded", "nothing recorded")


def figures(probabilities: np.ndarray, labels: np.ndarray, offsets: list[float] | None) -> dict[str, float]:
    """Balanced accuracy of the decisions after `offsets`, macro AUC and ECE of the probabilities."""
    decided = predicted_classes(torch.from_numpy(np.log(probabilities)), offsets).numpy()
    return {"balanced_accuracy": balanced_accuracy(labels, decided),
            "macro_auc": float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")),
            "ece": float(expected_calibration_error(probabilities, labels))}


def calibrate(model: SkinFusionForImageClassification, validation: dict[str, np.ndarray], stage: int,
              train_labels: np.ndarray, num_classes: int) -> None:
    """Fit `model`'s temperature and decision offsets on the cached validation rows, as train.py does."""
    model.config.temperature, model.config.decision_offsets = 1.0, None
    log_probabilities = np.log(model_probabilities(model, validation, stage))
    fitted = fit_on_validation(log_probabilities, validation["labels"], train_labels, num_classes)
    model.config.temperature, model.config.decision_offsets = fitted.temperature, fitted.decision_offsets


def model_readings(model: SkinFusionForImageClassification, inputs: dict[str, dict[str, np.ndarray]], stage: int,
                   processor: SkinFusionProcessor) -> dict[str, Any]:
    """Validation balanced accuracy and the test figures both ways, with the model's own calibration."""
    validation = model_probabilities(model, inputs["validation"], stage)
    test = {"recorded": inputs["test"], "nothing recorded": withhold_metadata(inputs["test"], processor)}
    offsets = model.config.decision_offsets
    return {"validation_balanced_accuracy": figures(validation, inputs["validation"]["labels"],
                                                    offsets)["balanced_accuracy"],
            **{way: figures(model_probabilities(model, rows, stage), rows["labels"], offsets)
               for way, rows in test.items()}}


def summary_rows(results: list[dict[str, Any]], kind: str) -> list[str]:
    """The mean ± sd row of the results of one `kind` (run alone, soup of N)."""
    group = [r for r in results if r["kind"] == kind]
    cells = [mean_sd([r["validation_balanced_accuracy"] for r in group])]
    for way in WAYS:
        cells += [mean_sd([r[way][metric] for r in group]) for metric in ("balanced_accuracy", "macro_auc")]
    cells.append(mean_sd([r["recorded"]["ece"] for r in group]))
    return [f"| {kind} | {len(group)} | " + " | ".join(cells) + " |"]


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    """Mean ± sd of the runs alone and of the soups, then every row."""
    header = ("| {} | {} | validation BACC | recorded BACC | recorded macro AUC | nothing recorded BACC | "
              "nothing recorded macro AUC | ECE, recorded |")
    lines = [f"Test split (original image, one forward); {machine['cpu']}, {machine['logical_cpus']} CPUs, torch "
             f"{machine['torch']}, {machine['date']}; {machine['seconds']:.0f} s.", "",
             header.format("model", "models"), "|---|---|---|---|---|---|---|---|"]
    for kind in dict.fromkeys(r["kind"] for r in results):
        lines += summary_rows(results, kind)
    lines += ["", header.format("model", "kind"), "|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = [f"{r['validation_balanced_accuracy']:.3f}"] + [
            f"{r[way][metric]:.3f}" for way in WAYS for metric in ("balanced_accuracy", "macro_auc")]
        lines.append(f"| {r['name']} | {r['kind']} | " + " | ".join(cells) + f" | {r['recorded']['ece']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, "model_soup")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="runs per soup; every combination of each size is souped (default: all runs, one soup)")
    args = parser.parse_args()
    configure_torch_threads()
    started = time.perf_counter()

    saved = load_saved_runs(args)
    lesions, models, processor, stage = saved.lesions, saved.models, saved.processor, saved.stage
    inputs = {split: cached_split(saved, split) for split in ("validation", "test")}
    train_labels = np.asarray(lesions.splits["train"]["label"])

    results = []
    for run, model in zip(args.runs, models):
        results.append({"name": run.name, "kind": "run alone", **model_readings(model, inputs, stage, processor)})
        print(json.dumps(results[-1]), flush=True)
    sizes = args.sizes or [len(models)]
    for members in (m for size in sizes for m in itertools.combinations(range(len(models)), size)):
        soup = soup_of([models[i] for i in members])
        calibrate(soup, inputs["validation"], stage, train_labels, len(lesions.label_names))
        name = "soup of " + ", ".join(args.runs[i].name for i in members)
        results.append({"name": name, "kind": f"soup of {len(members)}",
                        **model_readings(soup, inputs, stage, processor)})
        print(json.dumps(results[-1]), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(), "seconds": round(time.perf_counter() - started, 1), "shared_stages": stage}
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    args.out.with_suffix(".md").write_text(markdown(results, machine))
    print(markdown(results, machine))


if __name__ == "__main__":
    main()
