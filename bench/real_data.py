"""SkinFusion on real data, on this CPU, within a stated wall-time budget: fusion, image-only and metadata-only models.

    python bench/real_data.py [--data_dir ../shared/data] [--datasets ham10000 ham10000_bkl_mel_nv isic2017 isic-seed3]
        [--budget_minutes 60] [--backbone auto|tf_efficientnet_lite0|lite1|lite2] [--image_size N] [--epochs N]
        [--runs_dir DIR] [--out bench/results]

Every model starts from the offline ImageNet EfficientNet-Lite weights (`backbone_weights="lite"`), keeps the
backbone frozen and trains the metadata MLP and the head on cached backbone features (`--cache_image_features True`,
see `skin_fusion/feature_cache.py`); each run is one `run_training` call with train.py's flags, so it is calibrated
on the validation split, evaluated on the test split and saved as a complete model (under --runs_dir, outside the
repository: HAM10000 weights are non-commercial).

Steps, all inside the budget:
  1. Backbone probe (with --backbone auto): Lite0 at 224, Lite1 at 240 and Lite2 at 260 (their native sizes), image
     only, on a stratified subsample of HAM10000; it measures feature throughput and test balanced accuracy. The
     backbone with the best probe balanced accuracy whose projected feature extraction for every data set takes at
     most half of the remaining budget is used for everything else.
  2. For each data set: fusion, image-only and metadata-only models.
  3. If HAM10000's fusion or image model does not beat the frozen-feature logistic-regression floor of NOTES.md,
     further tries (SMOTE, a wider head, flip views of the training images) while the budget lasts; all are reported.
Writes bench/results/real_data.json and real_data.md and prints the table. A run already in real_data.json with the
same train.py flags is reused, not trained again, so a command stopped by its budget continues where it stopped when
run again; the results then list the wall time of each invocation (delete real_data.json to start over).
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

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from skin_fusion.experiments import command_line, machine_facts, markdown_table, number, utc_now

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
# What the task's published anchors and this machine's floor (NOTES.md) say; `None` where no number exists.
FLOOR = {  # frozen Lite0 features at 224 + class-balanced logistic regression, HAM10000 80/20 by lesion_id
    ("ham10000", "metadata"): (0.32, 0.75), ("ham10000", "image"): (0.588, 0.893),
    ("ham10000", "fusion"): (0.630, 0.907), ("isic2017", "image"): (None, 0.808),  # ISIC 2017: mean AUC mel & sk
}
ANCHORS = [
    ("ham10000", "EfficientNet-B0, lesion-grouped split, fine-tuned on a GPU at full resolution", 0.796, 0.934),
    ("ham10000_bkl_mel_nv", "ResNet-18 on bkl / mel / nv", 0.776, None),
]
# Tries for HAM10000 when a model misses the floor, in order of cost (flip views need three more extractions).
TRIES = [
    ("smote", ("--balancing", "smote")),
    ("head 512, dropout 0.5", ("--head_hidden_sizes", "512", "--dropout", "0.5")),
    ("flip views", ("--cache_train_views", "original", "hflip", "vflip", "rot180")),
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
    from skin_fusion.training import run_training
    from skin_fusion.training_args import parse_training_arguments

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


def beats_floor(run: dict[str, Any], dataset: str, modality: str) -> bool | None:
    floor = FLOOR.get((dataset, modality))
    if floor is None:
        return None
    balanced, auc = floor
    metrics = run["test_metrics"]
    return (balanced is None or metrics["balanced_accuracy"] > balanced) and (auc is None or metrics["macro_auc"] > auc)


def earlier_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"runs": [], "probe": [], "invocations": []}


def run_all(options: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    earlier = earlier_results(options.out / "real_data.json")
    finished = {tuple(run["argv"]): run for run in earlier["runs"] + earlier["probe"]}
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
    if "ham10000" in options.datasets and not options.no_tries:
        data = dataset_flags("ham10000", options.data_dir, options.runs_dir)
        missing = [run["modality"] for run in runs if run["dataset"] == "ham10000"
                   and run["modality"] != "metadata" and beats_floor(run, "ham10000", run["modality"]) is False]
        first = next((run for run in runs if run["dataset"] == "ham10000" and run["modality"] == "fusion"), None)
        per_image = first["feature_extraction_seconds"] / image_count("ham10000", options.data_dir,
                                                                      options.runs_dir) if first else 0.0
        for variant, flags in TRIES:
            new_views = flags.count("hflip") + flags.count("vflip") + flags.count("rot180")
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
        run["beats_floor"] = beats_floor(run, run["dataset"], run["modality"])
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
        "probe": probe, "runs": runs, "skipped": skipped,
        "floor": [{"dataset": d, "modality": m, "balanced_accuracy": b, "macro_auc": a} for (d, m), (b, a) in
                  FLOOR.items()],
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
    for run in results["runs"]:
        metrics = run["test_metrics"]
        floor = {None: "—", True: "yes", False: "**no**"}[run["beats_floor"]]
        rows.append([run["dataset"], run["modality"], run["variant"], number(metrics["balanced_accuracy"]),
                     number(metrics["macro_auc"]), recall_text(run["test_recall"]), floor,
                     f"{run['feature_extraction_seconds']:.0f} s", f"{run['train_runtime_seconds']:.0f} s"])
    lines.append(markdown_table(["data set", "model", "variant", "balanced acc.", "macro AUC", "recall per class",
                                 "beats floor", "features", "training"], rows))
    lines += ["", ("Features: time to extract (or read from the `datasets` cache) the backbone features of every "
              "split. Training: the Trainer's run on cached features."), "", "## Beside ours", ""]
    reference = [[a["dataset"], a["model"] + " (published)", number(a["balanced_accuracy"]), number(a["macro_auc"])]
                 for a in results["anchors"]]
    reference += [[f["dataset"], f"floor: frozen Lite0 224 + logistic regression, {f['modality']} (NOTES.md)",
                   number(f["balanced_accuracy"]), number(f["macro_auc"])] for f in results["floor"]]
    lines.append(markdown_table(["data set", "model", "balanced acc.", "macro AUC"], reference))
    lines += ["", ("ISIC 2017's floor is the mean of the melanoma and seborrheic-keratosis one-vs-rest AUCs (a "
              "different average from our three-class macro AUC).")]
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
    results = run_all(options, argv)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "real_data.json").write_text(json.dumps(results, indent=2))
    markdown = render_markdown(results)
    (options.out / "real_data.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
