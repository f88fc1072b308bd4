"""Builders shared by the inference and app tests: a saved tiny model (and damaged copies), lesion-like images, a
launched app, and the browser session that fills the app's form.

Run as a script to photograph the app for the README (a trained model gives a more telling picture):

    python -m tests.app_fixtures --model outputs/skin-fusion --out docs/app-screenshot.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.helpers import fitted_processor, tiny_model

CHROMIUM = "/usr/lib/chromium/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def save_tiny_model(directory: Path, modality: str = "fusion", seed: int = 0) -> Path:
    """A tiny SkinFusion model and its fitted processor saved in `directory`."""
    torch.manual_seed(seed)
    processor = fitted_processor()
    model = tiny_model(modality, processor=processor)
    # Wider than the 0.02 initialisation, so that the untrained model clearly prefers one class per input.
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.5)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# Ways a model folder gets damaged: an interrupted copy, an empty file, a cut header, another model's config.
MODEL_DAMAGES = ["truncated weights", "empty weights", "weights header cut", "another model_type"]


def damaged_model(model_dir: Path, damage: str) -> Path:
    """A copy of a saved model beside it, broken as `damage` (one of `MODEL_DAMAGES`) says."""
    broken = model_dir.parent / f"{model_dir.name}-{damage.replace(' ', '-')}"
    shutil.copytree(model_dir, broken)
    weights, config = broken / "model.safetensors", broken / "config.json"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty weights":
        weights.write_bytes(b"")
    elif damage == "weights header cut":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "another model_type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "other_fusion"}))
    else:
        raise ValueError(f"Unknown damage {damage!r}; use one of {MODEL_DAMAGES}.")
    return broken


def lesion_image(width: int = 96, height: int = 80, seed: int = 0) -> Image.Image:
    """A skin-toned RGB image with a dark, off-centre, noisy blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    blob = ((xx - 0.4 * width) / (0.25 * width)) ** 2 + ((yy - 0.55 * height) / (0.3 * height)) ** 2 < 1
    pixels = np.where(blob[..., None], [110, 60, 45], [225, 180, 160]) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def symmetric_lesion(size: int = 64) -> Image.Image:
    """A centred disc in a square: unchanged by every 90-degree rotation and flip."""
    centre = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - centre, xx - centre)
    pixels = np.stack([225 - radius, 180 - 2 * radius, 160 - radius], axis=-1)
    pixels[radius < size / 4] = [110, 60, 45]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(predictor, data_dir: Path | None = None) -> Iterator[str]:
    """The app served in a background thread on a free port; yields its URL and closes it afterwards."""
    import app

    demo = app.build_demo(predictor, data_dir)
    _, url, _ = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def chromium_available() -> bool:
    return os.access(CHROMIUM, os.X_OK)


def require_chromium() -> None:
    """Skip the calling test (with the reason) where Chromium is not installed, except in CI (`CI` set): a failure."""
    if chromium_available():
        return
    if os.environ.get("CI"):
        pytest.fail(f"Chromium is missing at {CHROMIUM}, and the browser test must run in CI: install it with "
                    "`make browser` (Debian package `chromium`).")
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (`make browser` installs it); in CI this is a failure.")


def classify_in_browser(page, url: str, image_path: Path, age: float, sex: str, site: str, screenshot: Path) -> dict:
    """Upload, fill age / sex / site, click Classify, wait for the result; returns what the page shows."""
    page.goto(url)
    page.locator("#lesion-image input[type=file]").set_input_files(str(image_path))
    page.locator("#lesion-image img").first.wait_for(timeout=20_000)
    page.locator("#field-age textarea, #field-age input").first.fill(str(age))
    for field, value in (("sex", sex), ("anatom_site_general", site)):
        dropdown = page.locator(f"#field-{field} input")
        dropdown.click()
        page.get_by_role("option", name=value, exact=True).click()
    page.locator("#classify").click()
    heatmap = page.locator("#heatmap img")
    heatmap.wait_for(timeout=60_000)
    shown = {
        "top_label": page.locator("#probabilities [data-testid=label-output-value]").inner_text(timeout=10_000),
        "heatmap_visible": heatmap.is_visible(),
        "caption": page.locator("#heatmap-caption").inner_text(),
        "note": page.locator("#uncertainty-note").inner_text(),
        "disclaimer": page.locator("#disclaimer").inner_text(),
    }
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    return shown


def main() -> None:
    """Photograph the app with a model (default: a tiny untrained one) for the README."""
    from playwright.sync_api import sync_playwright

    from skin_fusion.inference import SkinFusionPredictor
    from skin_fusion.synthetic import ensure_default_dataset

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", help="model directory or Hub id (default: a tiny untrained test model)")
    parser.add_argument("--out", type=Path, default=Path("docs/app-screenshot.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or save_tiny_model(Path(tmp) / "model")
        predictor = SkinFusionPredictor.from_pretrained(model)
        data_dir = ensure_default_dataset()
        image = data_dir / "images" / "synth_0_00000.png"
        choices = predictor.metadata_choices()
        sex = "male" if "male" in choices.get("sex", []) else "unknown"
        site = "head/neck" if "head/neck" in choices.get("anatom_site_general", []) else "unknown"
        with running_app(predictor) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            shown = classify_in_browser(page, url, image, 63, sex, site, args.out)
            browser.close()
    print(f"{args.out}: top label {shown['top_label']!r}")


if __name__ == "__main__":
    main()
