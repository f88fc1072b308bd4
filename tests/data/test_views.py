"""The eight named views of a square image: what the cached training rows, the app's TTA and the bench share."""

from __future__ import annotations

import pytest
import torch

from skin_fusion.data.views import VIEWS, check_views, view_of, views_of


def asymmetric_batch() -> torch.Tensor:
    return torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)


def test_views_are_the_eight_symmetries_of_the_square_and_named_for_what_they_do():
    pixels = asymmetric_batch()
    assert torch.equal(view_of(pixels, "original"), pixels)
    assert torch.equal(view_of(pixels, "hflip"), pixels.flip(-1))
    assert torch.equal(view_of(pixels, "vflip"), pixels.flip(-2))
    assert torch.equal(view_of(pixels, "rot180"), pixels.flip(-2).flip(-1))
    assert torch.equal(view_of(pixels, "hflip_rot90"), pixels.transpose(-2, -1))  # the mirror on the diagonal
    assert len({tuple(view_of(pixels, view).flatten().tolist()) for view in VIEWS}) == 8
    # Quarter turns are counter-clockwise, as drawn: 1 2 / 3 4 turned left by 90 degrees is 2 4 / 1 3.
    square = torch.tensor([[1, 2], [3, 4]])
    assert view_of(square, "rot90").tolist() == [[2, 4], [1, 3]]
    assert view_of(square, "rot270").tolist() == [[3, 1], [4, 2]]
    assert view_of(square, "hflip_rot270").tolist() == [[4, 2], [3, 1]]  # the mirror on the other diagonal


def test_views_of_stacks_the_batch_view_by_view():
    pixels = asymmetric_batch()
    views = views_of(pixels, ["hflip", "original", "rot90"])
    assert views.shape == (6, 3, 5, 5)
    assert torch.equal(views[:2], pixels.flip(-1)) and torch.equal(views[2:4], pixels)
    assert torch.equal(views[4:], view_of(pixels, "rot90"))
    with pytest.raises(ValueError, match="distinct names from"):
        views_of(pixels, ["original", "rot45"])


@pytest.mark.parametrize("views", [["rot45"], [], ["hflip", "hflip"]])
def test_unknown_missing_or_repeated_views_are_refused_with_the_valid_names(views):
    with pytest.raises(ValueError, match="distinct names from .*'hflip_rot270'"):
        check_views(views)
