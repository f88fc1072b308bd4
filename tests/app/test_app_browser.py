"""A real headless Chromium uses the app as a visitor would: upload, fill the form, click, read the result.

Skipped (with the reason) where Chromium is not installed, except in CI (`CI` set), where that is a failure.
`SKIN_FUSION_SCREENSHOT=docs/app-screenshot.png` also saves the screenshot there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
from playwright.sync_api import sync_playwright

from skin_fusion.data.known_datasets import class_display_name
from skin_fusion.data.synthetic import generate_synthetic_lesions
from skin_fusion.serving.predictor import SkinFusionPredictor
from tests.helpers import lesion_image, require_chromium, save_tiny_model
from tools.app_process import app_process
from tools.screenshot import CHROMIUM, CHROMIUM_ARGS, classify_in_browser, running_app

REPO = Path(__file__).resolve().parents[2]


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


def test_a_visitor_of_a_fresh_clone_gets_the_shipped_model_on_a_real_lesion_with_and_without_metadata(tmp_path):
    """`python app.py` as cloned (no --model, no training): a held-out HAM10000 test image, first with the form as
    it loads, then with the lesion's recorded age, sex and site; both answers list all seven classes."""
    require_chromium()
    row = pd.read_csv(REPO / "examples" / "ham10000" / "metadata.csv").iloc[0]
    image = REPO / "examples" / "ham10000" / row["file_name"]
    recorded = {"age": int(row["age"]), "sex": row["sex"], "localization": row["localization"]}
    predictor = SkinFusionPredictor.from_pretrained(REPO / "models" / "skin-fusion-ham10000")
    expected_empty, expected_filled = predictor.predict(image, {}), predictor.predict(image, recorded)

    with app_process(None, tmp_path) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        empty = classify_in_browser(page, server.url, image, {}, tmp_path / "empty.png")
        filled = classify_in_browser(page, server.url, image, {k: str(v) for k, v in recorded.items()},
                                     tmp_path / "filled.png")
        browser.close()

    seven = sorted(class_display_name(label) for label in predictor.labels)
    assert len(seven) == 7 and "melanoma (mel)" in seven  # classes named for people, with their codes
    assert sorted(empty["classes"]) == seven and sorted(filled["classes"]) == seven
    for shown, expected in ((empty, expected_empty), (filled, expected_filled)):
        most_probable = max(expected.probabilities, key=expected.probabilities.get)
        assert shown["top_label"] == class_display_name(most_probable)  # the Label shows the most probable class ...
        # ... and the heatmap explains the decision
        assert shown["caption"].startswith(f"Grad-CAM for {class_display_name(expected.label)}")
    assert "Not recorded: age, sex, localization" in empty["note"]
    assert "Not recorded" not in filled["note"]
    assert empty["heatmap_visible"] and filled["heatmap_visible"]
