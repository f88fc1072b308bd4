"""Builders shared by the inference and app tests: a saved tiny model (and damaged copies), lesion-like images, the
app launched in a thread or as its own `python app.py` process with raw HTTP calls to it, and the browser session
that fills the app's form.

Run as a script to photograph the app for the README (a trained model gives a more telling picture):

    python -m tests.app_fixtures --model outputs/skin-fusion --out docs/app-screenshot.png
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from torch import nn

from tests.helpers import fitted_processor, tiny_model

REPO = Path(__file__).resolve().parents[1]
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


@dataclasses.dataclass
class AppProcess:
    """A `python app.py` process and the folders it writes to."""

    url: str
    process: subprocess.Popen
    upload_dir: Path  # GRADIO_TEMP_DIR: Gradio's cache of uploads and outputs
    temp_dir: Path  # TMPDIR: the app's heatmap folder
    log: Path

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # VmHWM := the resident memory now

    def peak(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) * 1024

    def files(self) -> set[Path]:
        """Every file in the server's cache and temporary folders."""
        return {path for folder in (self.upload_dir, self.temp_dir) for path in folder.rglob("*") if path.is_file()}


@contextlib.contextmanager
def app_process(model_dir: Path, root: Path, app_dir: Path = REPO) -> Iterator[AppProcess]:
    """`python app.py --model model_dir` in its own process, run from `app_dir` (relative paths name the project's
    sources), with its home (where the examples are generated), Gradio cache and temporary folders under `root`;
    stopped with Ctrl-C (SIGINT) when the block ends, unless it ended already."""
    folders = {name: root / name for name in ("home", "gradio", "tmp")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "HOME": str(folders["home"]), "GRADIO_TEMP_DIR": str(folders["gradio"]),
           "TMPDIR": str(folders["tmp"]), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = root / f"server-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "app.py", "--model", str(model_dir), "--port", str(port)],
                                   cwd=app_dir, env=env, stdout=output, stderr=subprocess.STDOUT)
    server = AppProcess(f"http://127.0.0.1:{port}/", process, folders["gradio"], folders["tmp"], log)
    try:
        deadline = time.monotonic() + 300
        while not answers(server.url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not start ({process.poll()=}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def answers(url: str) -> bool:
    """Whether a web server at `url` answers 200."""
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def call_predict(url: str, data: list[Any], timeout: float = 120) -> tuple[str, Any]:
    """POST /gradio_api/call/predict, then read its event stream: ("complete", outputs), ("error", message or None)
    or ("http <status>", body) when the request itself is refused."""
    response = httpx.post(f"{url}gradio_api/call/predict", json={"data": data}, timeout=timeout)
    if response.status_code != 200:
        return f"http {response.status_code}", response.text
    event = None
    with httpx.stream("GET", f"{url}gradio_api/call/predict/{response.json()['event_id']}", timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line.removeprefix("data:"))
                return event, payload if event == "complete" else (payload or {}).get("error")
    return "no result", None


def predict_data(
    image: Any, age: Any = None, sex: Any = "unknown", site: Any = "unknown", explain: bool = True
) -> list[Any]:
    """The /predict inputs in the API's order: image, age, sex, anatom_site_general, tta, explain."""
    return [image, age, sex, site, False, explain]


def upload_file(url: str, content: bytes, name: str = "lesion.png") -> str:
    """Upload `content` as a visitor's browser does; the path Gradio gives back."""
    response = httpx.post(f"{url}gradio_api/upload", files={"files": (name, content, "image/png")}, timeout=60)
    response.raise_for_status()
    return response.json()[0]


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
