"""Shared test set-up: offline Hub, quiet Gradio, two CPU threads."""

import os
from pathlib import Path

import datasets
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real lesion sets in ../shared/data; tests that need them are skipped (with the reason) without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (see README 'Real data')")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def datasets_cache(tmp_path_factory):
    """Arrow caches of the tests go to a temporary folder, not the user's ~/.cache (nor ../shared)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))
        yield
