"""Finding the checkpoint a killed or crashed run resumes from, and removing them once the run is complete."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from ..files import TRAINER_STATE_FILE

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_complete_checkpoint(path: Path) -> bool:
    """Trainer writes its state file last: a checkpoint without a readable one was cut off mid-save."""
    try:
        json.loads((path / TRAINER_STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` folder in `output_dir`, skipping (and naming) any cut-off one."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    checkpoints = sorted(
        (p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)),
        key=lambda p: int(_CHECKPOINT.match(p.name).group(1)), reverse=True,
    )
    for checkpoint in checkpoints:
        if is_complete_checkpoint(checkpoint):
            return str(checkpoint)
        logger.warning("Skipping %s: it was cut off while being saved (no readable %s).", checkpoint,
                       TRAINER_STATE_FILE)
    return None


def remove_checkpoints(output_dir: str | Path) -> None:
    """Delete the `checkpoint-N` folders of a finished run: the final model sits in `output_dir` itself, and a
    checkpoint left there would make the next run in the same folder resume from it instead of training."""
    for checkpoint in Path(output_dir).glob("checkpoint-*"):
        if checkpoint.is_dir() and _CHECKPOINT.match(checkpoint.name):
            shutil.rmtree(checkpoint)
