"""Heads on cached features: train.py's Trainer path against a plain PyTorch loop on the same arrays.

    python bench/head_training_speed.py [--features ham10000-tf_efficientnet_lite0-224] [--epochs 10] [--rounds 3]

Both train the same fusion model's metadata MLP and head (its backbone is never run) on the HAM10000 features of
`bench/recipe_screen.py extract`, with the same batch size, epochs, AdamW learning rate and a validation pass after
every epoch that keeps the best weights:
  - trainer: `SkinFusionTrainer` exactly as `run_training` builds it for `--cache_image_features True`
    (`trainer_arguments`, `build_trainer`: `CachedInputs`, the metric module, best weights kept in memory);
  - plain: a for-loop over shuffled index batches, `model(**batch).loss.backward()`, `optimizer.step()`.
Each round times both in a shuffled order, first on the CPU as found (the share of it other processes kept busy is
measured and reported), then with a second process keeping one more core busy.
Torch threads follow `skin_fusion.threads.configure_torch_threads` (the cores other work leaves free) in both.
Target: trainer <= 2x plain, quiet and busy. Writes bench/results/head_training_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
FEATURES = BENCH.parent / "outputs" / "features"
EPOCH_BATCH = 64


def arrays(folder: Path) -> tuple[dict, object, dict, dict]:
    """Train / validation inputs (features, encoded metadata, labels) and the fitted processor."""
    from recipe_screen import load_arrays

    facts, processor, train, validation, _ = load_arrays(folder, ("original",))

    def inputs(split) -> dict[str, np.ndarray]:
        return {"image_features": split.features, "metadata": split.metadata, "labels": split.labels}

    return facts, processor, inputs(train), inputs(validation)


def fusion_model(facts: dict, processor):
    from skin_fusion import SkinFusionConfig, SkinFusionForImageClassification

    torch.manual_seed(0)
    return SkinFusionForImageClassification(SkinFusionConfig(
        backbone=facts["backbone"], image_size=facts["image_size"], id2label=dict(enumerate(facts["label_names"])),
        metadata_row_dropout=0.25, metadata_dropout=0.1,
        missing_metadata=processor.encode_metadata([{}])[0].tolist(), **processor.metadata_schema()))


def time_trainer(facts, processor, train, validation, epochs: int) -> float:
    from skin_fusion.data.feature_cache import CachedInputs
    from skin_fusion.training.run import build_trainer, trainer_arguments
    from skin_fusion.training.arguments import SkinFusionTrainingArguments

    model = fusion_model(facts, processor)
    with tempfile.TemporaryDirectory() as output_dir:
        args = SkinFusionTrainingArguments(
            output_dir=output_dir, num_train_epochs=epochs, freeze_epochs=epochs,
            per_device_train_batch_size=EPOCH_BATCH,
            per_device_eval_batch_size=1024, report_to="none", disable_tqdm=True, logging_steps=50, use_cpu=True,
            cache_image_features=True)
        trainer = build_trainer(model, trainer_arguments(args, model.config, cached=True), CachedInputs(train),
                                CachedInputs(validation), processor, facts["label_names"], cached=True)
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def time_plain(facts, processor, train, validation, epochs: int) -> float:
    from skin_fusion.evaluation.metrics import balanced_accuracy

    model = fusion_model(facts, processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    columns = {key: torch.from_numpy(value if key == "labels" else value.astype(np.float32))
               for key, value in train.items()}
    held_out = {key: torch.from_numpy(value.astype(np.float32)) for key, value in validation.items() if key != "labels"}
    started = time.perf_counter()
    best, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        for rows in torch.randperm(len(columns["labels"])).split(EPOCH_BATCH):
            loss = model(**{key: column[rows] for key, column in columns.items()}).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            predicted = model(**held_out).logits.argmax(1).numpy()
        score = balanced_accuracy(validation["labels"], predicted)
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default="ham10000-tf_efficientnet_lite0-224")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()

    from machine_info import machine_info

    from skin_fusion.threads import configure_torch_threads, cpu_busy

    facts, processor, train, validation = arrays(FEATURES / args.features)
    results = {"machine": machine_info(), "epochs": args.epochs, "batch_size": EPOCH_BATCH,
               "train_rows": int(len(train["labels"])), "conditions": {}}
    for condition in ("as found", "plus one busy core"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition != "quiet" else None
        try:
            busy_before = cpu_busy(1.0)
            threads = configure_torch_threads()
            times: dict[str, list[float]] = {"trainer": [], "plain": []}
            for _ in range(args.rounds):
                for name in random.sample(list(times), 2):
                    timer = time_trainer if name == "trainer" else time_plain
                    times[name].append(timer(facts, processor, train, validation, args.epochs))
        finally:
            if busy:
                busy.kill()
        medians = {name: statistics.median(values) for name, values in times.items()}
        results["conditions"][condition] = {"torch_threads": threads, "cpu_busy_before": round(busy_before, 3),
                                            "seconds": times, "median_seconds": medians,
                                            "trainer_over_plain": medians["trainer"] / medians["plain"]}
        print(condition, json.dumps(results["conditions"][condition]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "head_training_speed.json").write_text(json.dumps(results, indent=2))
    lines = [f"Heads on cached HAM10000 features ({results['train_rows']} training rows, {args.epochs} epochs, batch "
             f"{EPOCH_BATCH}, validation after every epoch); medians of {args.rounds} rounds. Machine: "
             f"{results['machine']['cpu']}, {results['machine']['logical_cpus']} logical CPUs.", "",
             "| condition | CPUs busy before | torch threads | trainer (s) | plain loop (s) | trainer / plain |",
             "|---|---|---|---|---|---|"]
    for condition, row in results["conditions"].items():
        lines.append(f"| {condition} | {row['cpu_busy_before']:.0%} | {row['torch_threads']} | "
                     f"{row['median_seconds']['trainer']:.1f} | "
                     f"{row['median_seconds']['plain']:.1f} | {row['trainer_over_plain']:.2f}x |")
    (args.out / "head_training_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if max(row["trainer_over_plain"] for row in results["conditions"].values()) > 2.0:
        sys.exit(1)


if __name__ == "__main__":
    main()
