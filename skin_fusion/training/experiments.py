"""The original study's comparison in one command: every baseline and a small fusion sweep on one data set.

    python -m skin_fusion.training.experiments [--dataset DATA] --out DIR [--budget quick|full] [--image_size N]
        [--epochs N] [--resnet resnet18|resnet10t] [--sweep one_at_a_time|grid|none] [--only NAME ...] [--runs_dir DIR]
        [--list] [TRAIN.PY FLAGS ...]

Every run is one in-process `run_training` call whose arguments are train.py's own flags (parsed by
`parse_training_arguments`), on the same data set, split and seed, written to RUNS_DIR/NAME (default DIR/runs/NAME).
Flags this command does not know are train.py flags given to every run, after the run's own (so they win).

A run whose `training_report.json` exists is not trained again, so an interrupted comparison resumes (a run cut off
mid-training resumes from its last checkpoint). The tables are always rebuilt from those reports: DIR/results.json,
DIR/results.md and DIR/comparison.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..files import TRAINING_REPORT_FILE
from ..reports.formatting import markdown_table, number, seconds
from ..reports.machine import command_line, machine_facts, utc_now

logger = logging.getLogger(__name__)

RECORD_NAME = "experiment.json"  # the run's exact train.py argv and its wall time, beside the report

# Image size and epochs per budget. The metadata MLP costs seconds an epoch, so it gets more epochs than the image
# models (its validation balanced accuracy plateaus within about 10 on isic-seed3).
BUDGETS: dict[str, dict[str, int]] = {
    "quick": {"image_size": 96, "epochs": 3, "freeze_epochs": 1, "metadata_epochs": 10},
    "full": {"image_size": 128, "epochs": 6, "freeze_epochs": 2, "metadata_epochs": 30},
}
RESNETS = ("resnet18", "resnet10t")
# Flags every run shares beyond data, size and epochs: quiet logs, no trackers.
COMMON_FLAGS = ("--report_to", "none", "--disable_tqdm", "True", "--logging_steps", "50")
# A random backbone is neither frozen nor slowed down: it learns at the head's rate (train.py's default 2e-3).
FROM_SCRATCH_FLAGS = ("--backbone_weights", "none", "--backbone_learning_rate", "2e-3")
LITE_FLAGS = ("--backbone", "tf_efficientnet_lite0", "--backbone_weights", "lite")

# The fusion sweep: the first value of each factor is train.py's default (the fusion baseline, the sweep's reference).
SWEEP_FACTORS: dict[str, tuple[Any, ...]] = {
    "learning_rate": ((2e-3, 2e-4), (5e-4, 5e-5)),  # (head, backbone): the backbone keeps a tenth of the head's rate
    "dropout": (0.3, 0.5),
    "balancing": ("class_weights", "none", "oversample"),
}
SWEEP_MODES = ("one_at_a_time", "grid", "none")


@dataclass(frozen=True)
class RunSpec:
    """One run of the comparison: its name (its folder) and the train.py flags that make it this run."""

    name: str
    modality: str
    flags: tuple[str, ...]
    groups: tuple[str, ...]  # "baseline", "sweep" or both (the fusion baseline is the sweep's reference)
    pretrained: bool = False  # a pretrained backbone starts frozen for the budget's freeze_epochs


def sweep_flags(learning_rate: tuple[float, float], dropout: float, balancing: str) -> tuple[str, ...]:
    head, backbone = learning_rate
    return ("--learning_rate", f"{head:g}", "--backbone_learning_rate", f"{backbone:g}", "--dropout", f"{dropout:g}",
            "--balancing", balancing)


def sweep_points(mode: str) -> list[dict[str, Any]]:
    """Fusion settings to try: the reference plus each other value of one factor at a time, or the full grid."""
    reference = {factor: values[0] for factor, values in SWEEP_FACTORS.items()}
    if mode == "none":
        return [reference]
    if mode == "grid":
        return [dict(zip(SWEEP_FACTORS, values)) for values in itertools.product(*SWEEP_FACTORS.values())]
    return [reference] + [
        {**reference, factor: value} for factor, values in SWEEP_FACTORS.items() for value in values[1:]
    ]


def sweep_name(point: dict[str, Any]) -> str:
    return f"fusion_lr{point['learning_rate'][0]:g}_dropout{point['dropout']:g}_{point['balancing']}"


def comparison_plan(resnet: str = "resnet18", sweep: str = "one_at_a_time") -> list[RunSpec]:
    """The study's five models, then the fusion sweep (its reference point is the fusion baseline itself)."""
    if resnet not in RESNETS:
        raise ValueError(f"--resnet {resnet!r} is not offered; use one of {RESNETS}.")
    if sweep not in SWEEP_MODES:
        raise ValueError(f"--sweep {sweep!r} is unknown; use one of {SWEEP_MODES}.")
    points = sweep_points(sweep)
    reference_groups = ("baseline", "sweep") if sweep != "none" else ("baseline",)
    plan = [
        RunSpec("metadata_mlp", "metadata", (), ("baseline",)),
        RunSpec("small_cnn", "image", ("--backbone", "skin_fusion_small_cnn", *FROM_SCRATCH_FLAGS), ("baseline",)),
        RunSpec(resnet, "image", ("--backbone", resnet, *FROM_SCRATCH_FLAGS), ("baseline",)),
        RunSpec("efficientnet_lite0", "image", LITE_FLAGS, ("baseline",), pretrained=True),
        RunSpec("fusion_lite0", "fusion", (*LITE_FLAGS, *sweep_flags(**points[0])), reference_groups, pretrained=True),
    ]
    plan += [RunSpec(sweep_name(point), "fusion", (*LITE_FLAGS, *sweep_flags(**point)), ("sweep",), pretrained=True)
             for point in points[1:]]
    return plan


def run_argv(spec: RunSpec, run_dir: Path, dataset: str | None, budget: dict[str, int], seed: int,
             extra: list[str]) -> list[str]:
    """train.py's argv for one run: shared settings, then the run's own flags, then the user's extra flags."""
    epochs = budget["metadata_epochs"] if spec.modality == "metadata" else budget["epochs"]
    frozen = budget["freeze_epochs"] if spec.pretrained else 0
    shared = ["--output_dir", str(run_dir), "--seed", str(seed), "--image_size", str(budget["image_size"]),
              "--num_train_epochs", str(epochs), "--freeze_epochs", str(frozen), *COMMON_FLAGS]
    if dataset is not None:
        shared = ["--dataset", dataset, *shared]
    return [*shared, "--modality", spec.modality, *spec.flags, *extra]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def run_once(argv: list[str], run_dir: Path) -> None:
    """Train the run unless its report exists; refuses a run folder made with other flags."""
    record_path = run_dir / RECORD_NAME
    if record_path.exists() and read_json(record_path)["argv"] != argv:
        raise ValueError(
            f"{run_dir} was made with other train.py flags ({read_json(record_path)['argv']}) than this comparison "
            f"asks for ({argv}). Pass another --out / --runs_dir, or delete {run_dir} to run it again."
        )
    if (run_dir / TRAINING_REPORT_FILE).exists():
        if not record_path.exists():
            raise ValueError(f"{run_dir} holds a {TRAINING_REPORT_FILE} this command did not write; delete "
                             f"{run_dir} or pass another --runs_dir.")
        logger.info("Skipping %s: %s exists.", run_dir.name, TRAINING_REPORT_FILE)
        return

    from .arguments import parse_training_arguments
    from .run import run_training

    run_dir.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps({"argv": argv, "wall_seconds": None}, indent=2))
    logger.info("Training %s: train.py %s", run_dir.name, " ".join(argv))
    started = time.perf_counter()
    run_training(*parse_training_arguments(argv))
    wall_seconds = time.perf_counter() - started
    record_path.write_text(json.dumps({"argv": argv, "wall_seconds": wall_seconds}, indent=2))


def weights_description(modality: str, backbone: str, weights: str) -> str:
    if modality == "metadata":
        return "—"
    if weights == "lite":
        return "ImageNet (offline Lite package)"
    if weights == "none" and backbone.startswith("resnet"):
        return "none: from scratch (no offline ResNet weights here)"
    if weights == "none":
        return "none: from scratch"
    return weights


def model_description(modality: str, backbone: str) -> str:
    if modality == "metadata":
        return "metadata-only MLP"
    if modality == "image":
        return f"{backbone} (image only)"
    return f"{backbone} + metadata (fusion)"


def result_row(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """One run's facts: its settings as train.py parsed them, its test metrics exactly as its report holds them."""
    from .arguments import parse_training_arguments

    report = read_json(run_dir / TRAINING_REPORT_FILE)
    record = read_json(run_dir / RECORD_NAME)
    model_args, data_args, training_args = parse_training_arguments(record["argv"])
    uses_image = model_args.modality != "metadata"
    return {
        "name": spec.name,
        "groups": list(spec.groups),
        "model": model_description(model_args.modality, model_args.backbone),
        "modality": model_args.modality,
        "backbone": model_args.backbone if uses_image else None,
        "backbone_weights": model_args.backbone_weights if uses_image else None,
        "weights": weights_description(model_args.modality, model_args.backbone, model_args.backbone_weights),
        "image_size": model_args.image_size if uses_image else None,
        "epochs": training_args.num_train_epochs,
        "freeze_epochs": training_args.freeze_epochs if uses_image else 0,
        "learning_rate": training_args.learning_rate,
        "backbone_learning_rate": training_args.backbone_learning_rate if uses_image else None,
        "dropout": model_args.dropout,
        "balancing": data_args.balancing,
        "batch_size": training_args.per_device_train_batch_size,
        "seed": training_args.seed,
        "test_metrics": report["test_metrics"],
        "temperature": report["temperature"],
        "optimizer_steps": report["optimizer_steps"],
        "train_examples": report["train_examples"],
        "train_runtime_seconds": report["train_runtime_seconds"],
        "wall_seconds": record["wall_seconds"],
        "run_dir": str(run_dir),
        "argv": record["argv"],
    }


def data_facts(argv: list[str]) -> dict[str, Any]:
    """Split sizes and test-set class counts of the data set every run used (same source, seed and split)."""
    from .arguments import parse_training_arguments
    from .run import load_training_data

    _, data_args, training_args = parse_training_arguments(argv)
    lesions, synthetic = load_training_data(data_args, training_args.seed)
    test_labels = np.asarray(lesions.splits["test"]["label"])
    return {
        "source": lesions.source,
        "synthetic": synthetic,
        "label_names": lesions.label_names,
        "split_sizes": {name: len(split) for name, split in lesions.splits.items()},
        "test_counts": {name: int((test_labels == i).sum()) for i, name in enumerate(lesions.label_names)},
        "group_column": lesions.group_column,
    }


def epochs_text(row: dict[str, Any]) -> str:
    return f"{row['epochs']:g}" + (f" ({row['freeze_epochs']} frozen)" if row["freeze_epochs"] else "")


def metric_cells(row: dict[str, Any]) -> list[str]:
    metrics = row["test_metrics"]
    return [number(metrics["balanced_accuracy"]), number(metrics["macro_auc"]), number(metrics["macro_f1"]),
            number(metrics["ece"]), seconds(row["wall_seconds"])]


def dataset_name(dataset: str | None, data: dict[str, Any]) -> str:
    return f"the synthetic demo set ({Path(data['source']).name})" if dataset is None else Path(dataset).name


def render_markdown(results: dict[str, Any]) -> str:
    """results.md: the models table, the sweep table, the data, the budget and the machine."""
    runs, data, machine, settings = results["runs"], results["data"], results["machine"], results["settings"]
    baselines = [row for row in runs if "baseline" in row["groups"]]
    sweep = [row for row in runs if "sweep" in row["groups"]]
    data_name = dataset_name(settings["dataset"], data)
    sizes = ", ".join(f"{name} {size}" for name, size in data["split_sizes"].items())
    counts = ", ".join(f"{name} {count}" for name, count in data["test_counts"].items())
    source = data_name if settings["dataset"] is None else f"`{settings['dataset']}`"
    kind = " (synthetic images)" if data["synthetic"] and settings["dataset"] is not None else ""
    grouping = (f", grouped by {data['group_column']} so no lesion crosses splits" if data["group_column"]
                else "; the data have no lesion or patient id to group by")
    lines = [
        f"# SkinFusion comparison on {data_name}",
        "",
        f"Written by `python -m skin_fusion.training.experiments {command_line(results['command'])}`; every number "
        f"below is copied from the run's own `{TRAINING_REPORT_FILE}`.",
        "",
        f"Data: {source}{kind}, classes {', '.join(data['label_names'])}. The same split for every run "
        f"(seed {settings['seed']}{grouping}): {sizes} images. Test classes: {counts}.",
        "",
        "Test metrics after temperature scaling on the validation split (ECE is the calibrated one). Time is the run's "
        "wall time: data loading, training, calibration, test evaluation and saving (for a run resumed after an "
        "interruption, its last session only).",
        "",
        "## Models",
        "",
        markdown_table(
            ["model", "modality", "backbone", "weights", "image size", "epochs", "balanced acc", "macro AUC",
             "macro F1", "ECE", "time"],
            [[row["model"], row["modality"], row["backbone"] or "—", row["weights"],
              str(row["image_size"]) if row["image_size"] else "—", epochs_text(row), *metric_cells(row)]
             for row in baselines],
        ),
        "",
    ]
    if sweep:
        lines += [
            "## Fusion sweep",
            "",
            f"{sweep[0]['model']}, weights {sweep[0]['weights']}, {sweep[0]['image_size']} px, epochs "
            f"{epochs_text(sweep[0])}; {settings['sweep'].replace('_', ' ')} around train.py's defaults (the "
            "reference row, which is the fusion model above). The table describes; no setting was chosen on the test "
            "split." + (f" Only {len(sweep)} of the design's {settings['sweep_points']} points were run (`--only`)."
                        if len(sweep) < settings["sweep_points"] else ""),
            "",
            markdown_table(
                ["run", "learning rate (head / backbone)", "dropout", "balancing", "balanced acc", "macro AUC",
                 "macro F1", "ECE", "time"],
                [[row["name"] + (" (reference)" if "baseline" in row["groups"] else ""),
                  f"{row['learning_rate']:g} / {row['backbone_learning_rate']:g}", f"{row['dropout']:g}",
                  row["balancing"], *metric_cells(row)] for row in sweep],
            ),
            "",
        ]
    else:
        lines += ["No fusion sweep in this comparison (`--sweep none`).", ""]
    total = sum(row["wall_seconds"] or 0.0 for row in runs)
    lines += [
        "## Budget",
        "",
        f"Budget `{settings['budget']}` with this command's overrides: image size {settings['image_size']} px, "
        f"{settings['epochs']} epochs for image "
        f"models ({settings['freeze_epochs']} with a frozen backbone for pretrained ones; from-scratch backbones are "
        f"never frozen), {settings['metadata_epochs']} for the metadata MLP. {len(runs)} runs, "
        f"{total / 60:.1f} minutes of wall time in total.",
        "",
    ]
    if settings["note"]:
        lines += [settings["note"], ""]
    lines += [
        "## Machine",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, "
        f"{machine['gpu'] or 'no GPU'}; torch {machine['torch']}, Python {machine['python']}; "
        f"1-minute load average {machine['load_average_1min_at_start']} when this command started (the machine is "
        f"shared, so times vary); command started {machine['started']}, tables written {results['written']}.",
        "",
        "![balanced accuracy and macro AUC per run](comparison.png)",
        "",
    ]
    return "\n".join(lines)


def plot_comparison(runs: list[dict[str, Any]], num_classes: int, title: str, path: Path) -> Path:
    """Bars of balanced accuracy and macro AUC per run, with the chance level of each."""
    names = [row["name"] for row in runs]
    positions = np.arange(len(runs))
    width = 0.4
    figure = Figure(figsize=(max(6.0, 0.9 * len(runs) + 2), 4.8))
    axes = figure.subplots()
    for offset, metric, label, colour in ((-width / 2, "balanced_accuracy", "balanced accuracy", "tab:blue"),
                                          (width / 2, "macro_auc", "macro AUC", "tab:orange")):
        values = [row["test_metrics"][metric] for row in runs]
        bars = axes.bar(positions + offset, np.nan_to_num(values), width, label=label, color=colour)
        axes.bar_label(bars, labels=[number(value, 2) for value in values], fontsize=7, padding=1)
    axes.axhline(1 / num_classes, color="tab:blue", linestyle=":", linewidth=1, label="chance (balanced accuracy)")
    axes.axhline(0.5, color="tab:orange", linestyle=":", linewidth=1, label="chance (AUC)")
    first_sweep_only = next((i for i, row in enumerate(runs) if row["groups"] == ["sweep"]), None)
    if first_sweep_only is not None:
        axes.axvline(first_sweep_only - 0.5, color="grey", linewidth=0.8)
        title += " (fusion sweep right of the grey line)"
    axes.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0, 1.22)
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_ylabel("test score")
    axes.legend(fontsize=7, loc="upper center", ncol=4, frameon=False)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This command's options, and the remaining train.py flags for every run."""
    parser = argparse.ArgumentParser(
        prog="python -m skin_fusion.training.experiments", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Any other --flag is a train.py flag given to every run (see python train.py --help).",
    )
    parser.add_argument("--dataset", default=None, help="Lesion data set (train.py --dataset); default: synthetic.")
    parser.add_argument("--out", required=True, type=Path, help="Folder for results.json, results.md, comparison.png.")
    parser.add_argument("--runs_dir", type=Path, default=None, help="Folder for the run folders (default OUT/runs).")
    parser.add_argument("--budget", choices=list(BUDGETS), default="quick", help="Image size and epochs preset.")
    parser.add_argument("--image_size", type=int, default=None, help="Overrides the budget's image size.")
    parser.add_argument("--epochs", type=int, default=None, help="Overrides the budget's epochs for image models.")
    parser.add_argument("--freeze_epochs", type=int, default=None,
                        help="Overrides the budget's frozen epochs of pretrained backbones.")
    parser.add_argument("--metadata_epochs", type=int, default=None, help="Overrides the metadata MLP's epochs.")
    parser.add_argument("--resnet", choices=RESNETS, default="resnet18", help="The ResNet baseline (from scratch).")
    parser.add_argument("--sweep", choices=SWEEP_MODES, default="one_at_a_time", help="The fusion sweep's design.")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="Run only these runs (see --list).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the split and of every run.")
    parser.add_argument("--note", default="", help="A sentence for results.md (e.g. what was left out and why).")
    parser.add_argument("--list", action="store_true", help="Print the runs and their train.py flags; train nothing.")
    return parser.parse_known_args(argv)


def select_runs(plan: list[RunSpec], only: list[str] | None) -> list[RunSpec]:
    if only is None:
        return plan
    unknown = sorted(set(only) - {spec.name for spec in plan})
    if unknown:
        raise ValueError(f"--only names unknown runs {unknown}; this comparison has {[s.name for s in plan]}.")
    return [spec for spec in plan if spec.name in only]


def run_comparison(argv: list[str]) -> dict[str, Any]:
    """Train every missing run, then write results.json, results.md and comparison.png; returns the results."""
    from .arguments import parse_training_arguments

    options, extra = parse_arguments(argv)
    budget = {name: getattr(options, name) if getattr(options, name) is not None else value
              for name, value in BUDGETS[options.budget].items()}
    runs_dir = options.runs_dir or options.out / "runs"
    plan = select_runs(comparison_plan(options.resnet, options.sweep), options.only)
    argvs = {spec.name: run_argv(spec, runs_dir / spec.name, options.dataset, budget, options.seed, extra)
             for spec in plan}
    for spec in plan:  # a bad flag fails now, not after an hour of training
        parse_training_arguments(argvs[spec.name])
    if options.list:
        for spec in plan:
            print(f"{spec.name}: train.py {' '.join(argvs[spec.name])}")
        return {}

    machine = machine_facts()
    for index, spec in enumerate(plan, start=1):
        logger.info("Run %d/%d: %s", index, len(plan), spec.name)
        run_once(argvs[spec.name], runs_dir / spec.name)
    runs = [result_row(spec, runs_dir / spec.name) for spec in plan]
    data = data_facts(argvs[plan[0].name])
    results = {
        "command": argv,
        "settings": {"dataset": options.dataset, "budget": options.budget, **budget, "resnet": options.resnet,
                     "sweep": options.sweep, "sweep_points": len(sweep_points(options.sweep)), "only": options.only,
                     "seed": options.seed, "extra_train_flags": extra, "note": options.note},
        "data": data,
        "machine": machine,
        "total_wall_seconds": sum(row["wall_seconds"] or 0.0 for row in runs),
        "written": utc_now(),
        "runs": runs,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "results.json").write_text(json.dumps(results, indent=2))
    (options.out / "results.md").write_text(render_markdown(results))
    plot_comparison(runs, len(data["label_names"]), f"SkinFusion comparison on {dataset_name(options.dataset, data)}",
                    options.out / "comparison.png")
    logger.info("Wrote %s", options.out / "results.md")
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    run_comparison(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
