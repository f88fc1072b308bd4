"""Photograph the app for the README: serve it with a model, fill its form in headless Chromium, save the page.

    python -m tools.screenshot [--model models/skin-fusion-ham10000] [--out docs/app-screenshot.png] [--empty_form]

It classifies the first of the app's examples for the model (the held-out HAM10000 images for the shipped model),
with that example's recorded metadata, or with the form left as it loads (`--empty_form`).

The app-serving and browser steps (`running_app`, `classify_in_browser`) are also what the app's browser test drives.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path


CHROMIUM = "/usr/lib/chromium/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


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


def classify_in_browser(page, url: str, image_path: Path, metadata: dict[str, str], screenshot: Path) -> dict:
    """Upload, fill the metadata fields given (field name -> value; others stay as the form loads), click Classify,
    wait for the result; returns what the page shows."""
    page.goto(url)
    page.locator("#lesion-image input[type=file]").set_input_files(str(image_path))
    page.locator("#lesion-image img").first.wait_for(timeout=20_000)
    for field, value in metadata.items():
        if field == "age":
            page.locator("#field-age textarea, #field-age input").first.fill(str(value))
            continue
        page.locator(f"#field-{field} input").click()
        page.get_by_role("option", name=value, exact=True).click()
    page.locator("#classify").click()
    heatmap = page.locator("#heatmap img")
    heatmap.wait_for(timeout=60_000)
    shown = {
        "top_label": page.locator("#probabilities [data-testid=label-output-value]").inner_text(timeout=10_000),
        "classes": page.locator("#probabilities [data-testid$=-confidence-set] dt").all_inner_texts(),
        "heatmap_visible": heatmap.is_visible(),
        "caption": page.locator("#heatmap-caption").inner_text(),
        "note": page.locator("#uncertainty-note").inner_text(),
        "disclaimer": page.locator("#disclaimer").inner_text(),
    }
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    return shown


def main() -> None:
    """Photograph the app with a trained model for the README."""
    from playwright.sync_api import sync_playwright

    import app
    from skin_fusion.serving.predictor import SkinFusionPredictor

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", default=app.DEFAULT_MODEL, help="model directory or Hub id (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("docs/app-screenshot.png"))
    parser.add_argument("--empty_form", action="store_true", help="leave every metadata field as the form loads")
    args = parser.parse_args()
    predictor = SkinFusionPredictor.from_pretrained(args.model)
    examples_dir, _ = app.example_folder(predictor)
    image, *values = app.example_rows(predictor, examples_dir)[0]
    metadata = {} if args.empty_form else {
        field: str(int(value)) if field in predictor.numeric_columns else value
        for field, value in zip(predictor.metadata_columns, values) if value not in (None, app.UNKNOWN_CHOICE)}
    with running_app(predictor) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        shown = classify_in_browser(page, url, Path(image), metadata, args.out)
        browser.close()
    print(f"{args.out}: top label {shown['top_label']!r}; note: {shown['note']}")


if __name__ == "__main__":
    main()
