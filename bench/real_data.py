"""SkinFusion on real data, on this CPU, within a stated wall-time budget: fusion, image-only and metadata-only models.

    python bench/real_data.py [--data_dir ../shared/data] [--datasets ham10000 ham10000_bkl_mel_nv isic2017 isic-seed3]
        [--budget_minutes 60] [--backbone auto|tf_efficientnet_lite0|lite1|lite2] [--image_size N] [--epochs N]
        [--runs_dir DIR] [--out bench/results]

Every model starts from the offline ImageNet EfficientNet-Lite weights (`backbone_weights="lite"`), keeps the
backbone frozen and trains the metadata MLP and the head on cached backbone features (`--cache_image_features True`,
see `skin_fusion/data/feature_cache.py`); each run is one `run_training` call with train.py's flags, so it is calibrated
on the validation split, evaluated on the test split and saved as a complete model (under --runs_dir, outside the
repository: HAM10000 weights are non-commercial).

Steps, all inside the budget:
  1. Backbone probe (with --backbone auto): Lite0 at 224, Lite1 at 240 and Lite2 at 260 (their native sizes), image
     only, on a stratified subsample of HAM10000; it measures feature throughput and test balanced accuracy. The
     backbone with the best probe balanced accuracy whose projected feature extraction for every data set takes at
     most half of the remaining budget is used for everything else.
  2. For each data set: fusion, image-only and metadata-only models, then the floor on the same split: a
     class-balanced logistic regression on the same cached features (image features; image features + encoded
     metadata; encoded metadata), standardised on train, C chosen on validation balanced accuracy from `FLOOR_C`.
     A model "beats the floor" when its test balanced accuracy and macro AUC both exceed those of the floor on its
     features (fusion: image + metadata).
  3. If HAM10000's fusion or image model does not beat its floor, further tries (SMOTE, a wider head, flip views of
     the training images) while the budget lasts; all are reported.
Writes bench/results/real_data.json and real_data.md and prints the table. A run or floor already in real_data.json
with the same train.py flags (and C grid) is reused, not trained again, so a command stopped by its budget continues
where it stopped when run again; the results then list the wall time of each invocation (delete real_data.json to
start over). NOTES.md's floor (measured on a different split, HAM10000 80/20) is shown as a reference only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from skin_fusion.data.views import FLIPS_AND_HALF_TURN, VIEWS
from skin_fusion.evaluation.metrics import SCALAR_KEYS
from skin_fusion.reports.formatting import markdown_table, number
from skin_fusion.reports.machine import command_line, machine_facts, utc_now

REPO = Path(__file__).resolve().parents[1]

logger = logging.getLogger("real_data")

DEFAULT_DATA = REPO.parent / "shared" / "data"
DATASETS = ("ham10000", "ham10000_bkl_mel_nv", "isic2017", "isic-seed3")
MODALITIES = ("fusion", "image", "metadata")
# Lite backbones at their native resolutions (timm's pretrained configs).
BACKBONES = {"tf_efficientnet_lite0": 224, "tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}
PROBE_SAMPLES = 1500
# Training of the heads on cached features: cheap, so many epochs with early stopping on validation balanced accuracy.
HEAD_FLAGS = ("--per_device_train_batch_size", "64", "--per_device_eval_batch_size", "64", "--learning_rate", "1e-3",
              "--early_stopping_patience", "6", "--report_to", "none", "--disable_tqdm", "True",
              "--logging_steps", "1000", "--save_total_limit", "1", "--balancing", "class_weights")
# Floor on our own split: class-balanced logistic regression on the features a model sees, C chosen on validation.
FLOOR_C = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)  # wide enough that the chosen C is inside it
FLOOR_MAX_ITER = 2000
TEST_METRICS = SCALAR_KEYS  # as TrainingReport.test_metrics
FLOOR_VARIANT = "floor on this split (logistic regression, same features)"
FLOOR_INPUTS = {"fusion": ("image_features", "metadata"), "image": ("image_features",), "metadata": ("metadata",)}
# What the task's published anchors and this machine's earlier floor (NOTES.md) say; `None` where no number exists.
# Frozen Lite0 features at 224 + class-balanced logistic regression: (data set, model, balanced acc., AUC, protocol).
NOTES_FLOOR = [
    ("ham10000", "metadata", 0.32, 0.75, "HAM10000 80/20 by lesion_id, not this split"),
    ("ham10000", "image", 0.588, 0.893, "HAM10000 80/20 by lesion_id, not this split"),
    ("ham10000", "fusion", 0.630, 0.907, "HAM10000 80/20 by lesion_id, not this split"),
    ("isic2017", "image", None, 0.808, "official test; AUC = mean of the melanoma and seborrheic-keratosis AUCs"),
]
ANCHORS = [
    ("ham10000", "EfficientNet-B0, lesion-grouped split, fine-tuned on a GPU at full resolution", 0.796, 0.934),
    ("ham10000_bkl_mel_nv", "ResNet-18 on bkl / mel / nv", 0.776, None),
]
# Tries for HAM10000 when a model misses the floor, in order of cost (flip views need three more extractions).
TRIES = [
    ("smote", ("--balancing", "smote")),
    ("head 512, dropout 0.5", ("--head_hidden_sizes", "512", "--dropout", "0.5")),
    ("flip views", ("--cache_train_views", *FLIPS_AND_HALF_TURN)),
]


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA, help="Folder holding the shared data sets.")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="Data sets to run.")
    parser.add_argument("--budget_minutes", type=float, default=60.0, help="Wall-time budget for everything.")
    parser.add_argument("--backbone", choices=["auto", *BACKBONES], default="auto",
                        help="Lite backbone; auto picks one with the probe (step 1).")
    parser.add_argument("--image_size", type=int, default=None, help="Input size (default: the backbone's native).")
    parser.add_argument("--epochs", type=int, default=40, help="Maximum epochs of each head (early stopping ends it).")
    parser.add_argument("--no_tries", action="store_true", help="Skip step 3 even if a model misses the floor.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the splits and of every run.")
    parser.add_argument("--runs_dir", type=Path, default=Path("/tmp/skin_fusion_real_data"),
                        help="Where the trained models go (outside the repository: HAM10000 is non-commercial).")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="Where the results go.")
    return parser.parse_args(argv)


def bkl_mel_nv_csv(data_dir: Path, runs_dir: Path) -> Path:
    """HAM10000's rows of bkl, mel and nv as a CSV whose file names point into the shared folder (no image copied)."""
    frame = pd.read_csv(data_dir / "ham10000" / "metadata.csv")
    path = runs_dir / "ham10000_bkl_mel_nv.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame[frame["dx"].isin(["bkl", "mel", "nv"])].to_csv(path, index=False)
    return path


def dataset_flags(name: str, data_dir: Path, runs_dir: Path) -> list[str]:
    """train.py's data flags: HAM10000 70/10/20 grouped by lesion_id; the ISIC sets keep their official splits."""
    ham_split = ["--validation_size", "0.1", "--test_size", "0.2"]
    if name == "ham10000":
        return ["--dataset", str(data_dir / "ham10000"), *ham_split]
    if name == "ham10000_bkl_mel_nv":
        return ["--dataset", str(bkl_mel_nv_csv(data_dir, runs_dir)), "--images_dir", str(data_dir / "ham10000"),
                *ham_split]
    return ["--dataset", str(data_dir / name)]


def run_argv(data: list[str], modality: str, backbone: str, image_size: int, epochs: int, seed: int,
             output_dir: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [*data, "--modality", modality, "--backbone", backbone, "--image_size", str(image_size),
            "--backbone_weights", "lite", "--num_train_epochs", str(epochs), "--freeze_epochs", str(epochs),
            "--cache_image_features", "True", "--seed", str(seed), "--output_dir", str(output_dir), "--resume", "False",
            *HEAD_FLAGS, *extra]


def train(argv: list[str], finished: dict[tuple[str, ...], dict[str, Any]]) -> dict[str, Any]:
    """One run_training call (its folder emptied first), or the same run from an earlier invocation; its facts."""
    import shutil

    if tuple(argv) in finished:
        logger.info("Reusing the earlier result of this run")
        return finished[tuple(argv)]
    from skin_fusion.training.arguments import parse_training_arguments
    from skin_fusion.training.run import run_training

    output_dir = Path(argv[argv.index("--output_dir") + 1])
    shutil.rmtree(output_dir, ignore_errors=True)
    started = time.perf_counter()
    report = run_training(*parse_training_arguments(argv))
    wall = time.perf_counter() - started
    return {"test_metrics": report.test_metrics, "test_recall": report.test_recall, "test_auc": report.test_auc,
            "feature_extraction_seconds": report.feature_extraction_seconds,
            "train_runtime_seconds": report.train_runtime_seconds, "train_examples": report.train_examples,
            "optimizer_steps": report.optimizer_steps, "temperature": report.temperature, "wall_seconds": wall,
            "argv": argv}


def image_count(name: str, data_dir: Path, runs_dir: Path) -> int:
    if name == "ham10000_bkl_mel_nv":
        return len(pd.read_csv(bkl_mel_nv_csv(data_dir, runs_dir)))
    return len(pd.read_csv(data_dir / name / "metadata.csv"))


def probe_backbones(options: argparse.Namespace, deadline: float,
                    finished: dict[tuple[str, ...], dict[str, Any]]) -> list[dict[str, Any]]:
    """Step 1: image-only runs of each Lite backbone on a HAM10000 subsample; throughput and balanced accuracy."""
    data = [*dataset_flags("ham10000", options.data_dir, options.runs_dir), "--max_samples", str(PROBE_SAMPLES)]
    rows = []
    for backbone, size in BACKBONES.items():
        if time.monotonic() > deadline:
            break
        logger.info("Probe: %s at %d", backbone, size)
        run = train(run_argv(data, "image", backbone, size, options.epochs, options.seed,
                             options.runs_dir / "probe" / backbone), finished)
        rows.append({"backbone": backbone, "image_size": size, **run,
                     "images_per_second": PROBE_SAMPLES / max(run["feature_extraction_seconds"], 1e-9)})
    return rows


def choose_backbone(probe: list[dict[str, Any]], images: int, seconds_left: float) -> tuple[str, int, str]:
    """The probe's best balanced accuracy whose extraction of `images` fits half of the remaining time."""
    fitting = [row for row in probe if images / row["images_per_second"] <= seconds_left / 2]
    if not fitting:
        return "tf_efficientnet_lite0", 224, "no probed backbone fits half the remaining budget: Lite0 at 224"
    best = max(fitting, key=lambda row: row["test_metrics"]["balanced_accuracy"])
    return best["backbone"], best["image_size"], (
        f"best probe balanced accuracy among backbones whose projected extraction of {images} images fits half of the "
        f"remaining {seconds_left / 60:.0f} min"
    )


def split_arrays(argv: list[str]) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Cached image features, encoded metadata and labels of each split of a run's data, built as train.py builds
    them (same split, same metadata encoder fitted on train, features from the `datasets` cache); and the labels."""
    from skin_fusion.data.feature_cache import add_image_features, cached_inputs
    from skin_fusion.modeling.modeling_skin_fusion import SkinFusionForImageClassification
    from skin_fusion.training.arguments import parse_training_arguments
    from skin_fusion.training.run import build_processor_and_config, load_training_data
    from skin_fusion.weights.backbone_weights import load_backbone_weights

    model_args, data_args, args = parse_training_arguments(argv)
    lesions, _ = load_training_data(data_args, args.seed)
    processor, config = build_processor_and_config(lesions, model_args, data_args)
    model = SkinFusionForImageClassification(config)
    load_backbone_weights(model)
    arrays = {}
    for split in ("train", "validation", "test"):
        with_features = add_image_features(lesions.splits[split], model.skin_fusion.backbone, processor,
                                           batch_size=args.per_device_eval_batch_size, desc=f"{split} features")
        arrays[split] = cached_inputs(with_features, processor, uses_image=True, uses_metadata=True)
    return arrays, list(lesions.label_names)


def logistic_floor(arrays: dict[str, dict[str, np.ndarray]], label_names: list[str], inputs: tuple[str, ...],
                   grid: tuple[float, ...]) -> dict[str, Any]:
    """Class-balanced logistic regression on the standardised `inputs` columns, C with the best validation balanced
    accuracy (the smallest C on a tie); its test metrics, computed like a run's."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from skin_fusion.evaluation.subgroups import balanced_accuracy, evaluate_probabilities

    def matrix(split: str) -> np.ndarray:
        return np.concatenate([arrays[split][name] for name in inputs], axis=1)

    scaler = StandardScaler().fit(matrix("train"))
    features = {split: scaler.transform(matrix(split)) for split in arrays}
    labels = {split: arrays[split]["labels"] for split in arrays}
    started = time.perf_counter()
    fits = {c: LogisticRegression(C=c, class_weight="balanced", max_iter=FLOOR_MAX_ITER).fit(features["train"],
                                                                                           labels["train"])
            for c in grid}
    fit_seconds = time.perf_counter() - started
    validation = {c: balanced_accuracy(labels["validation"], fit.predict(features["validation"]))
                  for c, fit in fits.items()}
    best = max(grid, key=lambda c: validation[c])
    # A class missing from train has no column in predict_proba: it gets probability 0.
    probabilities = np.zeros((len(labels["test"]), len(label_names)))
    probabilities[:, fits[best].classes_] = fits[best].predict_proba(features["test"])
    results = evaluate_probabilities(probabilities, labels["test"], label_names)
    return {
        "inputs": list(inputs), "C": best, "C_grid": list(grid),
        "validation_balanced_accuracy": {str(c): value for c, value in validation.items()},
        "converged": bool(fits[best].n_iter_.max() < FLOOR_MAX_ITER),
        "test_metrics": {key: float(results[key]) for key in TEST_METRICS},
        "test_recall": dict(zip(label_names, map(float, results["recall"]), strict=True)),
        "test_auc": dict(zip(label_names, map(float, results["roc_auc"]), strict=True)),
        "fit_seconds": fit_seconds,
    }


def floors_on_split(dataset: str, argv: list[str], grid: tuple[float, ...],
                    finished: dict[tuple[Any, ...], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The floor of each modality on `argv`'s split and cached features, or the same floors from an earlier run."""
    key = (*argv, *map(str, grid))
    if key in finished:
        logger.info("Reusing the earlier floor of %s", dataset)
        return finished[key]
    started = time.perf_counter()
    arrays, label_names = split_arrays(argv)
    read_seconds = time.perf_counter() - started
    logger.info("Floor: %s (features read in %.1f s; train %s)", dataset, read_seconds, arrays["train"]["labels"].shape)
    return [{"dataset": dataset, "modality": modality, "variant": FLOOR_VARIANT, "argv": argv,
             "feature_read_seconds": read_seconds, **logistic_floor(arrays, label_names, inputs, grid)}
            for modality, inputs in FLOOR_INPUTS.items()]


def beats_floor(run: dict[str, Any], floors: list[dict[str, Any]]) -> bool | None:
    """Whether the run's test balanced accuracy and macro AUC both exceed the floor on its data set and features."""
    floor = next((f for f in floors if (f["dataset"], f["modality"]) == (run["dataset"], run["modality"])), None)
    if floor is None:
        return None
    metrics, bar = run["test_metrics"], floor["test_metrics"]
    return bool(metrics["balanced_accuracy"] > bar["balanced_accuracy"] and metrics["macro_auc"] > bar["macro_auc"])


def earlier_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"runs": [], "probe": [], "floors": [], "invocations": []}


def run_all(options: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    earlier = earlier_results(options.out / "real_data.json")
    finished = {tuple(run["argv"]): run for run in earlier["runs"] + earlier["probe"]}
    finished_floors: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for floor in earlier.get("floors", []):
        finished_floors.setdefault((*floor["argv"], *map(str, floor["C_grid"])), []).append(floor)
    deadline = started + options.budget_minutes * 60
    machine = machine_facts()
    options.runs_dir.mkdir(parents=True, exist_ok=True)
    probe: list[dict[str, Any]] = []
    if options.backbone == "auto":
        probe = probe_backbones(options, deadline, finished)
        images = sum(image_count(name, options.data_dir, options.runs_dir) for name in options.datasets)
        backbone, image_size, reason = choose_backbone(probe, images, deadline - time.monotonic())
    else:
        backbone, image_size, reason = options.backbone, BACKBONES[options.backbone], "given by --backbone"
    image_size = options.image_size or image_size
    logger.info("Backbone %s at %d px (%s)", backbone, image_size, reason)

    runs: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    skipped: list[str] = []
    for dataset in options.datasets:
        data = dataset_flags(dataset, options.data_dir, options.runs_dir)
        for modality in MODALITIES:
            if time.monotonic() > deadline:
                skipped.append(f"{dataset} {modality}")
                continue
            logger.info("Run: %s %s", dataset, modality)
            run = train(run_argv(data, modality, backbone, image_size, options.epochs, options.seed,
                                 options.runs_dir / dataset / modality), finished)
            runs.append({"dataset": dataset, "modality": modality, "variant": "default", **run})
        if time.monotonic() > deadline:
            skipped.append(f"{dataset} floor")
            continue
        # The fusion run's data flags: the same split, metadata encoder and cached features as every run above.
        floors += floors_on_split(dataset, run_argv(data, "fusion", backbone, image_size, options.epochs, options.seed,
                                                    options.runs_dir / dataset / "floor"), FLOOR_C, finished_floors)
    if "ham10000" in options.datasets and not options.no_tries:
        data = dataset_flags("ham10000", options.data_dir, options.runs_dir)
        missing = [run["modality"] for run in runs if run["dataset"] == "ham10000"
                   and run["modality"] != "metadata" and beats_floor(run, floors) is False]
        first = next((run for run in runs if run["dataset"] == "ham10000" and run["modality"] == "fusion"), None)
        per_image = first["feature_extraction_seconds"] / image_count("ham10000", options.data_dir,
                                                                      options.runs_dir) if first else 0.0
        for variant, flags in TRIES:
            new_views = len(set(flags) & set(VIEWS) - {"original"})
            # Flip views extract the training split again per view (about 70% of the images each).
            extraction = new_views * 0.7 * image_count("ham10000", options.data_dir, options.runs_dir) * per_image
            for modality in missing:
                if time.monotonic() + extraction > deadline:
                    skipped.append(f"ham10000 {modality} ({variant})")
                    continue
                extraction = 0.0  # the second modality reads the views from the cache
                logger.info("Try: ham10000 %s with %s", modality, variant)
                slug = variant.replace(" ", "_").replace(",", "")
                run = train(run_argv(data, modality, backbone, image_size, options.epochs, options.seed,
                                     options.runs_dir / "ham10000" / f"{modality}_{slug}", flags), finished)
                runs.append({"dataset": "ham10000", "modality": modality, "variant": variant, **run})
    for run in runs:
        run["beats_floor"] = beats_floor(run, floors)
    command = f"python bench/real_data.py {command_line(argv)}".strip()
    invocations = [*earlier.get("invocations", []), {
        "command": command, "started": machine["started"], "wall_seconds": time.monotonic() - started,
        "load_average_1min_at_start": machine["load_average_1min_at_start"]}]
    return {
        "command": command,
        "budget_minutes": options.budget_minutes,
        "invocations": invocations,
        "total_wall_seconds": sum(invocation["wall_seconds"] for invocation in invocations),
        "backbone": backbone, "image_size": image_size, "backbone_choice": reason,
        "probe": probe, "runs": runs, "floors": floors, "skipped": skipped,
        "notes_floor": [{"dataset": d, "modality": m, "balanced_accuracy": b, "macro_auc": a, "protocol": protocol}
                        for d, m, b, a, protocol in NOTES_FLOOR],
        "anchors": [{"dataset": d, "model": m, "balanced_accuracy": b, "macro_auc": a} for d, m, b, a in ANCHORS],
        "machine": machine, "written": utc_now(),
    }


def recall_text(recall: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in recall.items())


def render_markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# SkinFusion on real data (CPU, cached frozen-backbone features)",
        "",
        f"Written by `{results['command']}`. Budget {results['budget_minutes']:g} min of wall time per invocation; "
        f"measured {results['total_wall_seconds'] / 60:.1f} min in all ("
        + "; ".join(f"`{i['command']}` {i['wall_seconds'] / 60:.1f} min, started {i['started']}, load average "
                    f"{i['load_average_1min_at_start']}" for i in results["invocations"])
        + f"). Backbone `{results['backbone']}` at "
        f"{results['image_size']} px with offline ImageNet Lite weights, frozen; the metadata MLP and the head train "
        "on cached pooled features (class-weighted loss, early stopping on validation balanced accuracy), then a "
        "temperature is fitted on validation. Backbone choice: " + results["backbone_choice"] + ".",
        "",
        ("Splits: HAM10000 70/10/20 grouped by `lesion_id` (no lesion in two splits); ISIC 2017 its official "
        "train/validation/test (test rows have no age or sex); isic-seed3 its official test (48 images), validation "
        "carved from train. bkl/mel/nv: the HAM10000 rows of those three classes, split the same way."),
        "",
        "## Results (test split)",
        "",
    ]
    rows = []
    for dataset in dict.fromkeys(run["dataset"] for run in results["runs"] + results["floors"]):
        for run in (run for run in results["runs"] if run["dataset"] == dataset):
            metrics = run["test_metrics"]
            floor = {None: "—", True: "yes", False: "**no**"}[run["beats_floor"]]
            rows.append([dataset, run["modality"], run["variant"], number(metrics["balanced_accuracy"]),
                         number(metrics["macro_auc"]), recall_text(run["test_recall"]), floor,
                         f"{run['feature_extraction_seconds']:.0f} s", f"{run['train_runtime_seconds']:.0f} s"])
        for floor in (floor for floor in results["floors"] if floor["dataset"] == dataset):
            metrics = floor["test_metrics"]
            rows.append([dataset, floor["modality"], f"{floor['variant']}, C={floor['C']:g}",
                         number(metrics["balanced_accuracy"]), number(metrics["macro_auc"]),
                         recall_text(floor["test_recall"]), "—", f"{floor['feature_read_seconds']:.0f} s",
                         f"{floor['fit_seconds']:.0f} s"])
    lines.append(markdown_table(["data set", "model", "variant", "balanced acc.", "macro AUC", "recall per class",
                                 "beats floor", "features", "training"], rows))
    grid = ", ".join(f"{c:g}" for c in FLOOR_C)
    lines += ["", ("Features: time to extract (or read from the `datasets` cache) the backbone features of every "
              "split. Training: the Trainer's run on cached features; for a floor row, fitting the logistic "
              "regressions of the whole C grid."), "",
              ("Floor on this split: scikit-learn `LogisticRegression(class_weight=\"balanced\")` on exactly the "
               "cached features and split of the runs above (fusion: image features + the encoded metadata; image: "
               "image features; metadata: the encoded metadata), standardised on train, C chosen by validation "
               f"balanced accuracy from {grid}, scored on test like the runs (no temperature). Beats floor: the "
               "run's test balanced accuracy and macro AUC are both above its modality's floor on the same split."),
              "", "## Beside ours", ""]
    reference = [[a["dataset"], a["model"] + " (published)", number(a["balanced_accuracy"]), number(a["macro_auc"])]
                 for a in results["anchors"]]
    reference += [[f["dataset"], f"reference only: NOTES.md floor, frozen Lite0 224 + logistic regression, "
                   f"{f['modality']} ({f['protocol']})", number(f["balanced_accuracy"]), number(f["macro_auc"])]
                  for f in results["notes_floor"]]
    lines.append(markdown_table(["data set", "model", "balanced acc.", "macro AUC"], reference))
    lines += ["", ("The NOTES.md HAM10000 floor was measured on an 80/20 split by `lesion_id` (more training images, a "
              "different test set), so it is not compared with the rows above; its ISIC 2017 AUC is the mean of the "
              "melanoma and seborrheic-keratosis one-vs-rest AUCs (a different average from our three-class macro "
              "AUC).")]
    if results["probe"]:
        lines += ["", f"## Backbone probe (image only, HAM10000 subsample of {PROBE_SAMPLES})", ""]
        lines.append(markdown_table(
            ["backbone", "size", "images/s (features)", "balanced acc.", "macro AUC"],
            [[p["backbone"], str(p["image_size"]), f"{p['images_per_second']:.1f}",
              number(p["test_metrics"]["balanced_accuracy"]), number(p["test_metrics"]["macro_auc"])]
             for p in results["probe"]]))
    if results["skipped"]:
        lines += ["", "Not run (budget spent): " + ", ".join(results["skipped"]) + "."]
    lines += ["", (f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, "
              f"{machine['gpu'] or 'no GPU'}; torch {machine['torch']}; 1-minute load average "
              f"{machine['load_average_1min_at_start']} at the start (shared machine); started {machine['started']}, "
              f"written {results['written']}."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    argv = sys.argv[1:] if argv is None else argv
    options = parse_arguments(argv)
    missing = sorted({"ham10000" if name.startswith("ham10000") else name for name in options.datasets}
                     - {path.name for path in options.data_dir.glob("*") if path.is_dir()})
    if missing:
        raise SystemExit(f"error: no {', '.join(missing)} folder in {options.data_dir}. Pass --data_dir with the "
                         "shared data sets (see ../shared/data/README.md) or choose others with --datasets.")
    results = run_all(options, argv)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "real_data.json").write_text(json.dumps(results, indent=2))
    markdown = render_markdown(results)
    (options.out / "real_data.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
