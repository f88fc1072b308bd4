"""Training throughput of the real pipeline against a bare PyTorch loop on pre-transformed tensors.

    python bench/training_throughput.py                          # HAM10000 JPEGs, Lite0 at 224, batch 16
    python bench/training_throughput.py --workers 0 1 --rounds 6 --steps 4

Variants, all with the same model (fusion, `tf_efficientnet_lite0` with its offline Lite weights at 224 px,
backbone unfrozen), batch size and torch threads:
  - pipeline, N workers: what `train.py` runs — `load_lesion_dataset` on the JPEGs, the processor's training
    transform applied lazily (decode, random crop, flips, rotation, colour jitter, normalise), the metadata encoder,
    `default_data_collator` and `SkinFusionTrainer` train steps (AdamW with two learning rates, gradient clipping,
    scheduler), built by the library's own functions with train.py's arguments and `--dataloader_num_workers N`;
  - bare: `torch.optim.AdamW` and forward / backward / step over a few batches decoded and transformed beforehand.
The shared 2-core CPU is noisy, so every round runs each variant once (a block of steps, in a shuffled order) and the
ratios compare medians of step times from the same rounds. Each pipeline block is one `trainer.train()` call; its first
steps (worker start-up, prefetch filling) are not timed, so the times are the steady state of an epoch. Target: the
pipeline with train.py's default `dataloader_num_workers` at >= 0.9x the bare loop's images/s (the data pipeline is
not the bottleneck). Exits with status 1 when it is missed. Writes bench/results/training_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from machine_info import machine_info
from transformers import PrinterCallback, TrainerCallback, default_data_collator, set_seed

from skin_fusion.data.loading import LesionDataset
from skin_fusion.data.model_inputs import training_split
from skin_fusion.modeling.modeling_skin_fusion import SkinFusionForImageClassification
from skin_fusion.threads import configure_torch_threads, cpu_busy
from skin_fusion.training.arguments import (
    DataArguments,
    ModelArguments,
    SkinFusionTrainingArguments,
    parse_training_arguments,
)
from skin_fusion.training.run import build_processor_and_config, load_training_data
from skin_fusion.training.trainer import SkinFusionTrainer
from skin_fusion.weights.backbone_weights import load_backbone_weights

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

RESULTS = BENCH / "results"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ham10000"
MIN_RATIO = 0.9
BARE = "bare loop"


def training_arguments(
    data: str | None, output_dir: str, extra: list[str]
) -> tuple[ModelArguments, DataArguments, SkinFusionTrainingArguments]:
    """train.py's arguments for a benchmark run: no evaluation, no checkpoints, no reporting, plus `extra`."""
    argv = ["--output_dir", output_dir, "--report_to", "none", "--disable_tqdm", "True", "--eval_strategy", "no",
            "--save_strategy", "no", "--load_best_model_at_end", "False", "--calibrate", "False", *extra]
    return parse_training_arguments([*argv, "--dataset", data] if data else argv)


def pipeline_trainer(
    lesions: LesionDataset, model: SkinFusionForImageClassification, model_args: ModelArguments,
    data_args: DataArguments, args: SkinFusionTrainingArguments,
) -> SkinFusionTrainer:
    """The Trainer `run_training` builds for `model` (without evaluation data, callbacks or metrics)."""
    processor, config = build_processor_and_config(lesions, model_args, data_args)
    processor.check_matches(model.config)
    # The two settings run_training makes before building its Trainer.
    args.remove_unused_columns = False
    args.dataloader_pin_memory = torch.cuda.is_available()
    train, _ = training_split(lesions, processor, config, data_args.balancing, args.seed)
    return SkinFusionTrainer(
        model=model, args=args, train_dataset=train, processing_class=processor, data_collator=default_data_collator,
        backbone_learning_rate=args.backbone_learning_rate, unfreeze_last_blocks=args.unfreeze_last_blocks,
    )


class StepTimes(TrainerCallback):
    """Seconds of each optimizer step of a `train()` call, from one step's end to the next (batch fetch included),
    and of its data wait: from the previous step's end to this step's start, where the Trainer fetches the batch (in
    the main process with 0 workers, from the workers' queue otherwise). The first step is measured from the start of
    training, so it holds the data loader's start-up."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.data_waits: list[float] = []
        self._last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.times, self.data_waits, self._last = [], [], time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.data_waits.append(time.perf_counter() - self._last)

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def pipeline_block(trainer: SkinFusionTrainer, timer: StepTimes, steps: int) -> tuple[list[float], list[float]]:
    trainer.args.max_steps = steps
    trainer.train()
    return list(timer.times), list(timer.data_waits)


def bare_block(
    model: SkinFusionForImageClassification, optimizer: torch.optim.Optimizer, batches: list[dict], steps: int
) -> tuple[list[float], list[float]]:
    times = []
    model.train()
    for step in range(steps):
        start = time.perf_counter()
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return times, [0.0] * steps  # its batches are ready


def pretransformed_batches(trainer: SkinFusionTrainer, batch_size: int, count: int) -> list[dict]:
    """`count` batches of the pipeline's own training inputs, decoded, augmented and collated once, up front."""
    train = trainer.train_dataset
    batches = []
    for index in range(count):
        rows = train[index * batch_size:(index + 1) * batch_size]
        batches.append(default_data_collator([{key: value[i] for key, value in rows.items()}
                                              for i in range(batch_size)]))
    return batches


def bench(args: argparse.Namespace) -> dict[str, object]:
    data = args.data if Path(args.data).is_dir() else None  # None: the embedded synthetic set
    model_flags = ["--backbone", args.backbone, "--image_size", str(args.image_size), "--freeze_epochs", "0",
                   "--per_device_train_batch_size", str(args.batch_size)]
    with tempfile.TemporaryDirectory(prefix="skin_fusion_throughput_") as output_dir:
        model_args, data_args, _ = training_arguments(data, output_dir, model_flags)
        started = time.perf_counter()
        lesions, synthetic = load_training_data(data_args, seed=42)
        load_s = time.perf_counter() - started
        set_seed(42)
        _, config = build_processor_and_config(lesions, model_args, data_args)
        model = SkinFusionForImageClassification(config)
        provenance = load_backbone_weights(model)

        trainers: dict[str, tuple[SkinFusionTrainer, StepTimes]] = {}
        for workers in args.workers:
            flags = [*model_flags, "--dataloader_num_workers", str(workers)]
            if workers > 0 and args.prefetch_factor:
                flags += ["--dataloader_prefetch_factor", str(args.prefetch_factor)]
            model_args, data_args, training_args = training_arguments(data, output_dir, flags)
            timer = StepTimes()
            trainer = pipeline_trainer(lesions, copy.deepcopy(model), model_args, data_args, training_args)
            trainer.add_callback(timer)
            trainer.remove_callback(PrinterCallback)  # its end-of-training line per block
            trainers[f"pipeline, {workers} worker{'s' if workers != 1 else ''}"] = (trainer, timer)
        default_workers = SkinFusionTrainingArguments.__dataclass_fields__["dataloader_num_workers"].default
        default_name = next(name for name, (t, _) in trainers.items()
                            if t.args.dataloader_num_workers == default_workers)
        first_trainer = next(iter(trainers.values()))[0]
        batches = pretransformed_batches(first_trainer, args.batch_size, args.bare_batches)
        bare_model = copy.deepcopy(model)
        optimizer = torch.optim.AdamW(bare_model.parameters(), lr=first_trainer.args.learning_rate,
                                      weight_decay=first_trainer.args.weight_decay)

        def block(name: str, steps: int) -> tuple[list[float], list[float]]:
            if name == BARE:
                return bare_block(bare_model, optimizer, batches, steps)
            return pipeline_block(*trainers[name], steps)

        names = [*trainers, BARE]
        for name in names:
            block(name, args.warmup)
        shuffler = random.Random(0)
        times: dict[str, list[float]] = {name: [] for name in names}
        waits: dict[str, list[float]] = {name: [] for name in names}
        first_step: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            shuffler.shuffle(names)
            for name in names:
                block_times, block_waits = block(name, args.block_warmup + args.steps)
                first_step[name].append(block_times[0])
                times[name] += block_times[args.block_warmup:]
                waits[name] += block_waits[args.block_warmup:]
    return {
        "data": data or "embedded synthetic set", "synthetic": synthetic, "load_s": load_s, "weights": provenance,
        "train_images": len(lesions.splits["train"]), "default_variant": default_name,
        "default_workers": default_workers, "step_s": times, "data_wait_s": waits,
        "first_step_of_block_s": first_step, **summarise(times, waits, first_step, args.batch_size),
    }


def summarise(
    times: dict[str, list[float]], waits: dict[str, list[float]], first_step: dict[str, list[float]], batch_size: int
) -> dict[str, object]:
    medians = {name: statistics.median(values) for name, values in times.items()}
    bests = {name: min(values) for name, values in times.items()}
    return {
        "median_step_s": medians,
        "iqr_step_s": {name: [q[0], q[2]] for name, q in
                       ((name, statistics.quantiles(values, n=4)) for name, values in times.items())},
        "best_step_s": bests,
        "images_per_s": {name: batch_size / t for name, t in medians.items()},
        "median_data_wait_s": {name: statistics.median(values) for name, values in waits.items()},
        "data_wait_share": {name: sum(waits[name]) / sum(times[name]) for name in times},
        "median_first_step_s": {name: statistics.median(values) for name, values in first_step.items()},
        "ratio_to_bare": {
            "median": {name: medians[BARE] / t for name, t in medians.items() if name != BARE},
            "best": {name: bests[BARE] / t for name, t in bests.items() if name != BARE},
        },
    }


def markdown(results: dict[str, object], info: dict[str, object], args: argparse.Namespace) -> str:
    default = results["default_variant"]
    lines = [
        (f"`{args.backbone}` fusion model at {args.image_size} px ({results['weights']}), backbone unfrozen, batch "
        f"{args.batch_size}, {info['torch_threads']} torch threads; data: {results['data']} "
        f"({results['train_images']:,} training images, loaded in {results['load_s']:.1f} s). {info['date']}; "
        f"{info['cpu']} ({info['logical_cpus']} logical CPUs, shared); torch {info['torch']}, transformers "
        f"{info['transformers']}, datasets {info['datasets']}. {args.rounds} interleaved rounds (shuffled order) after "
        f"{args.warmup} warm-up steps per variant; each round runs {args.block_warmup} untimed + {args.steps} timed "
        f"steps of each variant ({args.rounds * args.steps} timed steps each). Other processes kept "
        f"{info['cpu_busy_before']:.0%} of the CPUs busy just before the run; load average "
        f"{info['load_average_1min']} at the end."),
        "",
        ("| variant | step median (s) | interquartile range (s) | best (s) | images / s (median) | vs bare, medians "
         "| vs bare, bests | data wait per step, median (s) | data wait, share of step time "
         "| first step of a block (s) |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, median in results["median_step_s"].items():
        q = results["iqr_step_s"][name]
        ratio = results["ratio_to_bare"]["median"].get(name)
        best_ratio = results["ratio_to_bare"]["best"].get(name)
        label = f"{name} (train.py default)" if name == default else name
        lines.append(
            f"| {label} | {median:.2f} | {q[0]:.2f}–{q[1]:.2f} | {results['best_step_s'][name]:.2f} "
            f"| {results['images_per_s'][name]:.2f} | {'' if ratio is None else f'{ratio:.3f}'} "
            f"| {'' if best_ratio is None else f'{best_ratio:.3f}'} | {results['median_data_wait_s'][name]:.3f} "
            f"| {results['data_wait_share'][name]:.1%} | {results['median_first_step_s'][name]:.2f} |"
        )
    lines += ["", "| target (on medians) | measured | met |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {'yes' if met else '**NO**'} |" for target, measured, met in targets(results)]
    return "\n".join(lines) + "\n"


def targets(results: dict[str, object]) -> list[tuple[str, str, bool]]:
    default = results["default_variant"]
    ratio = results["ratio_to_bare"]["median"][default]
    return [(f"{default} (train.py's default) images/s ≥ {MIN_RATIO} × bare loop's", f"{ratio:.3f}",
             ratio >= MIN_RATIO)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="lesion imagefolder; when absent, the embedded synthetic set (written on first use)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1],
                        help="dataloader_num_workers of the pipeline variants")
    parser.add_argument("--prefetch_factor", type=int, default=None, help="batches each worker loads ahead")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: configure_torch_threads, as train.py: all cores)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    parser.add_argument("--block_warmup", type=int, default=1, help="untimed steps at the start of each block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before the rounds")
    parser.add_argument("--bare_batches", type=int, default=4, help="pre-transformed batches the bare loop cycles")
    parser.add_argument("--output", default="training_throughput", help="result file stem in bench/results/")
    args = parser.parse_args()
    if args.rounds * args.steps < 15:
        parser.error("--rounds × --steps must be at least 15 timed steps per variant.")
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        configure_torch_threads()
    busy_before = cpu_busy()
    results = bench(args)
    info = {**machine_info(), "cpu_busy_before": round(busy_before, 3)}
    table = markdown(results, info, args)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    checks = [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(results)]
    (RESULTS / f"{args.output}.json").write_text(json.dumps(
        {"machine": info, "arguments": vars(args), "results": results, "targets": checks}, indent=2) + "\n")
    (RESULTS / f"{args.output}.md").write_text("# Training throughput\n\n" + table)
    if not all(check["met"] for check in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
