"""A real headless Chromium uses the app as a visitor would: upload, fill the form, click, read the result.

Skipped (with the reason) where Chromium is not installed, except in CI (`CI` set), where that is a failure.
`SKIN_FUSION_SCREENSHOT=docs/app-screenshot.png` also saves the screenshot there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from skin_fusion.data.synthetic import generate_synthetic_lesions
from skin_fusion.serving.predictor import SkinFusionPredictor
from tests.helpers import lesion_image, require_chromium, save_tiny_model
from tools.screenshot import CHROMIUM, CHROMIUM_ARGS, classify_in_browser, running_app


def test_visitor_uploads_fills_metadata_and_sees_label_heatmap_and_disclaimer(tmp_path):
    require_chromium()
    predictor = SkinFusionPredictor.from_pretrained(save_tiny_model(tmp_path / "model"))
    examples = generate_synthetic_lesions(tmp_path / "examples", n_images=40, image_size=64)
    image = tmp_path / "lesion.png"
    lesion_image().save(image)
    expected = predictor.predict(image, {"age": 63, "sex": "male", "anatom_site_general": "face"})
    screenshot = tmp_path / "app.png"

    with running_app(predictor, examples) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        outside = []
        page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(url) else None)
        shown = classify_in_browser(page, url, image, {"age": "63", "sex": "male", "anatom_site_general": "face"},
                                    screenshot)
        browser.close()

    assert shown["top_label"] == expected.label
    assert shown["heatmap_visible"]
    assert shown["caption"].startswith(f"Grad-CAM for {expected.label}")
    assert "clinician must" in shown["note"]
    assert "Research tool, not a medical device" in shown["disclaimer"]
    assert outside == []  # fonts are bundled and analytics are off: the page asks nothing of other hosts
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("SKIN_FUSION_SCREENSHOT"):
        target = Path(os.environ["SKIN_FUSION_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)
