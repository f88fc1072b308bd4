"""Train a SkinFusion model: `python train.py` (quick CPU demo) or `accelerate launch train.py [--options]`.

With no arguments it trains on the embedded synthetic demo set and saves a servable model to outputs/skin-fusion,
where `python app.py` looks. `python train.py --help` lists every option; a single JSON file works too.
"""

import logging
import sys

import skin_fusion  # noqa: F401  (registers SkinFusion with the Auto classes)
from skin_fusion.training.arguments import parse_training_arguments
from skin_fusion.training.run import describe_run, run_training


def main() -> int:
    model_args, data_args, training_args = parse_training_arguments()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    print(describe_run(model_args, data_args, training_args), flush=True)
    report = run_training(model_args, data_args, training_args)
    if training_args.should_save:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in report.test_metrics.items())
        print(f"Saved to {report.output_dir} (test: {metrics}; temperature {report.temperature:.3f}).")
        print(f"Serve it with: python app.py --model {report.output_dir}")
    return 1 if report.push_error else 0


if __name__ == "__main__":
    sys.exit(main())
