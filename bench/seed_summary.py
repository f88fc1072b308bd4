"""Mean ± standard deviation of several training runs' test figures, three ways (metadata as recorded, nothing
recorded, image-only twin), from the `training_report.json` each run wrote.

    python bench/seed_summary.py RUN_DIR [RUN_DIR ...] --out docs/experiments/NAME/seeds

A run's image-only figures come from its report (a fusion run that trained its twin) or from
`RUN_DIR/image-only/training_report.json` (a twin trained by its own command). Writes OUT.json (every run) and
OUT.md (the table).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from skin_fusion.files import CARD_FACTS_FILE, TRAINING_REPORT_FILE

WAYS = {"test_metrics": "age, sex and site as recorded", "test_metrics_without_metadata": "nothing recorded",
        "image_only_test_metrics": "image-only twin"}
METRICS = ("balanced_accuracy", "macro_auc", "ece")


def run_figures(run_dir: Path) -> dict[str, Any]:
    """One run's three test readings, its seed and wall time."""
    report = json.loads((run_dir / TRAINING_REPORT_FILE).read_text())
    twin_report = run_dir / "image-only" / TRAINING_REPORT_FILE
    if report.get("image_only_test_metrics") is None and twin_report.is_file():
        report["image_only_test_metrics"] = json.loads(twin_report.read_text())["test_metrics"]
    facts_file = run_dir / CARD_FACTS_FILE
    seed = json.loads(facts_file.read_text())["training"]["seed"] if facts_file.is_file() else None
    return {"run": run_dir.name, "seed": seed, "train_runtime_seconds": report["train_runtime_seconds"],
            "feature_extraction_seconds": report["feature_extraction_seconds"],
            **{way: report.get(way) for way in WAYS}}


def mean_sd(values: list[float]) -> str:
    """`mean ± sd` to three decimals (the sd of a single value is not shown)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown(runs: list[dict[str, Any]]) -> str:
    """The mean ± sd table over `runs`, then one row per run."""
    lines = [f"Test split, {len(runs)} runs (seeds {', '.join(str(run['seed']) for run in runs)}): mean ± standard "
             "deviation.", "", "| inputs | balanced accuracy | macro AUC | ECE | runs |", "|---|---|---|---|---|"]
    for way, title in WAYS.items():
        present = [run[way] for run in runs if run.get(way)]
        if present:
            lines.append(f"| {title} | " + " | ".join(mean_sd([p[m] for p in present]) for m in METRICS)
                         + f" | {len(present)} |")
    lines += ["", "| run | seed | recorded BACC | nothing recorded BACC | image-only BACC | head training |",
              "|---|---|---|---|---|---|"]
    for run in runs:
        cells = [f"{run[way]['balanced_accuracy']:.3f}" if run.get(way) else "—" for way in WAYS]
        lines.append(f"| {run['run']} | {run['seed']} | " + " | ".join(cells)
                     + f" | {run['train_runtime_seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output directories of train.py runs")
    parser.add_argument("--out", type=Path, required=True, help="path stem of the .json and .md written")
    args = parser.parse_args()
    runs = [run_figures(run_dir) for run_dir in args.runs]
    table = markdown(runs)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(runs, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
