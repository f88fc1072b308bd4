"""Training: arguments and presets, the run, the Trainer subclass and its schedule, calibration, checkpoints, Hub."""
