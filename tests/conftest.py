"""Shared test set-up: offline Hub, quiet Gradio; a saved tiny fusion model and its predictor; a synthetic lesion
folder per test module."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# Imported after the environment above: huggingface_hub and datasets read it when they are imported.
import datasets  # noqa: E402

from skin_fusion.data.synthetic import generate_synthetic_lesions  # noqa: E402
from skin_fusion.serving.predictor import SkinFusionPredictor  # noqa: E402
from tests.helpers import save_tiny_model  # noqa: E402

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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny fusion model saved with its processor (one per test module)."""
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def predictor(model_dir) -> SkinFusionPredictor:
    return SkinFusionPredictor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def lesion_folder(request, tmp_path_factory) -> Path:
    """A synthetic lesion folder generated once per test module, with the module's `LESION_FOLDER` settings
    (`generate_synthetic_lesions` keyword arguments: n_images, image_size, seed)."""
    settings = getattr(request.module, "LESION_FOLDER", {"n_images": 120, "image_size": 32})
    return generate_synthetic_lesions(tmp_path_factory.mktemp("lesions"), **settings)
