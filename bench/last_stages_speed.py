"""What fine-tuning a backbone's last stages costs per training image: on pixels against on cached feature maps.

    python bench/last_stages_speed.py [--backbone tf_efficientnet_lite0] [--image_size 224] [--batch 32] [--threads 2]

Per training image (random weights and inputs; speed does not depend on their values), median of interleaved rounds:
  - frozen forward: the whole backbone in inference mode (what caching costs, once per image and view);
  - full fine-tuning: forward and backward through the whole backbone;
  - last N stages on pixels: the whole forward, the backward through the last N stages only (`--unfreeze_last_blocks
    N` without a cache);
  - last N stages on cached maps: forward and backward through the last N stages from the maps entering them
    (`--cache_image_features True --unfreeze_last_blocks N`).
Writes bench/results/last_stages_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from app_latency import interleaved_medians
from machine_info import machine_info

from skin_fusion.modeling.backbones import early_stage_maps, late_stage_features
from skin_fusion.threads import configure_torch_threads

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    configure_torch_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.backbone, pretrained=False, num_classes=0)
    pixels = torch.randn(args.batch, 3, args.image_size, args.image_size)
    stages = len(model.blocks)

    def frozen_forward() -> None:
        with torch.inference_mode():
            model.eval()(pixels)

    def train_step(last: int | None, cached_maps: torch.Tensor | None = None) -> Callable[[], None]:
        trained = set() if last is None else {f"blocks.{i}." for i in range(stages - last, stages)} | {
            "conv_head.", "bn2."}

        def step() -> None:
            model.train()
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(last is None or any(name.startswith(prefix) for prefix in trained))
            model.zero_grad(set_to_none=True)
            if cached_maps is not None:
                late_stage_features(model, cached_maps, stages - last).sum().backward()
            else:
                model(pixels).sum().backward()
        return step

    steps: dict[str, Callable[[], object]] = {"frozen forward": frozen_forward, "full fine-tuning": train_step(None)}
    for last in (1, 2):
        with torch.no_grad():  # not inference mode: the maps enter a graph that is differentiated
            maps = early_stage_maps(model.eval(), pixels, stages - last)
        steps[f"last {last} stage(s) on pixels"] = train_step(last)
        steps[f"last {last} stage(s) on cached maps {tuple(maps.shape[1:])}"] = train_step(last, maps)
    speeds = {name: args.batch / (ms / 1000) for name, ms in interleaved_medians(steps, args.rounds, warmup=1).items()}
    info = machine_info()
    baseline = speeds["full fine-tuning"]
    lines = [f"{args.backbone} at {args.image_size} px, batch {args.batch}, median of {args.rounds} interleaved "
             f"rounds; {info['cpu']} ({info['logical_cpus']} logical CPUs), {info['torch_threads']} torch threads, "
             f"torch {info['torch']}; load average {info['load_average_1min']} at the end.", "",
             "| step | training images / s | ÷ full fine-tuning |", "|---|---|---|"]
    lines += [f"| {name} | {speed:.1f} | {speed / baseline:.1f}× |" for name, speed in speeds.items()]
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "last_stages_speed.json").write_text(json.dumps(
        {"machine": info, "arguments": vars(args), "images_per_second": speeds}, indent=2) + "\n")
    title = "# Fine-tuning the last stages: pixels against cached maps\n\n"
    (RESULTS / "last_stages_speed.md").write_text(title + table)


if __name__ == "__main__":
    main()
