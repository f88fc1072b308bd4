"""Views of a square image: the eight symmetries of the square, by name.

A lesion has no canonical orientation, so each view is another valid look at it: extra training rows whose frozen
early-stage features are cached (`--cache_train_views`), the app's test-time augmentation (`TEST_TIME_VIEWS`,
averaged), and the view sets that bench/test_time_flips.py scores on the test split. One home, so that what the app
averages is what the bench measured.
"""

from __future__ import annotations

import torch

# name -> (flipped left to right first?, quarter turns counter-clockwise after it). In this order, view 0 is the image
# itself; "vflip" (top to bottom) is the left-right flip turned by half a turn.
VIEWS: dict[str, tuple[bool, int]] = {
    "original": (False, 0), "rot90": (False, 1), "rot180": (False, 2), "rot270": (False, 3),
    "hflip": (True, 0), "hflip_rot90": (True, 1), "vflip": (True, 2), "hflip_rot270": (True, 3),
}
# The ham10000 preset's training views: the image, its two flips and its half turn.
FLIPS_AND_HALF_TURN = ("original", "hflip", "vflip", "rot180")
# The app's test-time augmentation. On the HAM10000 test split (bench/results/test_time_views_*.md: the shipped soup,
# three image-only runs and their soup) averaging these two gave a balanced accuracy at least that of the image alone
# in every reading, and a better one than all eight views in five of six, with a lower calibration error in all six
# (the temperature and offsets are fitted on one view), at a quarter of the eight views' cost.
TEST_TIME_VIEWS = ("original", "hflip")
TEST_TIME_DESCRIPTION = "the image and its mirror image"


def check_views(views: list[str]) -> list[str]:
    """Return `views` if every name is known and none repeats; otherwise raise a `ValueError` with the valid names."""
    unknown = [view for view in views if view not in VIEWS]
    if unknown or not views or len(set(views)) != len(views):
        raise ValueError(f"views {views} must be distinct names from {list(VIEWS)}, e.g. ['original', 'hflip'].")
    return list(views)


def view_of(pixel_values: torch.Tensor, view: str) -> torch.Tensor:
    """A batch of square images `(..., H, W)` seen in `view` (one of `VIEWS`)."""
    flipped, quarter_turns = VIEWS[check_views([view])[0]]
    pixels = pixel_values.flip(-1) if flipped else pixel_values
    return torch.rot90(pixels, quarter_turns, dims=(-2, -1)) if quarter_turns else pixels


def views_of(pixel_values: torch.Tensor, views: tuple[str, ...] | list[str]) -> torch.Tensor:
    """The given views of a square batch `(N, C, H, W)` -> `(len(views) * N, C, H, W)`, view by view."""
    return torch.cat([view_of(pixel_values, view) for view in check_views(list(views))])
