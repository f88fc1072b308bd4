"""The Gradio app served in a thread and called through gradio_client: results, bad inputs, load, start-up."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageOps
from transformers import AutoModelForImageClassification, AutoProcessor

import app
from skin_fusion.data.synthetic import generate_synthetic_lesions
from skin_fusion.serving.image_io import MAX_UPLOAD_BYTES
from tests.helpers import damaged_model, lesion_image
from tools.screenshot import running_app

REPO = Path(__file__).resolve().parents[2]
METADATA = {"age": 55, "sex": "female", "anatom_site_general": "face"}


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory) -> Path:
    return generate_synthetic_lesions(tmp_path_factory.mktemp("examples"), n_images=40, image_size=64)


@pytest.fixture(scope="module")
def served(predictor, examples_dir):
    with running_app(predictor, examples_dir) as url:
        yield url, Client(url, verbose=False)


@pytest.fixture(scope="module")
def client(served) -> Client:
    return served[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def good_image(files) -> Path:
    path = files / "lesion.png"
    lesion_image().save(path)
    return path


def classify(client: Client, image: Path | None, metadata: dict | None = None, tta: bool = False, **flags):
    metadata = METADATA if metadata is None else metadata
    return client.predict(handle_file(str(image)) if image is not None else None, **metadata, tta=tta, **flags,
                          api_name="/predict")


def probabilities(label_output: dict) -> dict[str, float]:
    return {row["label"]: row["confidence"] for row in label_output["confidences"]}


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims `width` x `height` pixels, with almost no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    """The first half of a JPEG: a valid header, then the data stops."""
    buffer = io.BytesIO()
    lesion_image().save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


# (case, file name, file bytes or None for no upload, metadata, words the message must contain)
BAD_INPUTS = [
    ("corrupt", "cut.jpg", truncated_jpeg(), METADATA, "damaged or incomplete"),
    ("not an image", "notes.png", b"these are notes, not pixels\n" * 10, METADATA, "not an image that can be read"),
    ("pdf", "scan.png", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", METADATA, "This is a PDF document"),
    ("empty file", "empty.png", b"", METADATA, "file is empty (0 bytes)"),
    ("decompression bomb", "bomb.png", png_claiming(100_000, 100_000), METADATA, "far larger than the 50 megapixel"),
    ("huge image", "huge.png", png_claiming(8_000, 7_000), METADATA, "56 megapixels), above the 50 megapixel limit"),
    ("1x1 image", "dot.png", png_claiming(1, 1), METADATA, "only 1x1 pixels"),
    ("no image", None, None, METADATA, "No image was provided"),
    ("negative age", "ok.png", "good", {**METADATA, "age": -4}, "'age' = -4 is outside the plausible range [0, 120]"),
    ("age above 120", "ok.png", "good", {**METADATA, "age": 130}, "'age' = 130 is outside the plausible range"),
    ("age not a number", "ok.png", "good", {**METADATA, "age": "sixty"}, "'age' must be a number, got 'sixty'"),
    ("unseen category", "ok.png", "good", {**METADATA, "sex": "x"}, "'sex' = 'x' was never seen in training"),
]


@pytest.mark.parametrize(("case", "name", "content", "metadata", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_its_message_and_the_next_request_succeeds(
    client, files, good_image, case, name, content, metadata, message
):
    image = None
    if content == "good":
        image = good_image
    elif content is not None:
        image = files / name
        image.write_bytes(content)

    with pytest.raises(AppError) as error:
        classify(client, image, metadata)
    assert message in str(error.value)

    label, heatmap, _, _ = classify(client, good_image)
    assert label["label"] in probabilities(label) and Path(heatmap).is_file()


def test_client_gets_the_models_own_top_label_and_probabilities(client, model_dir, good_image):
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        expected = model(**processor(images=[Image.open(good_image)], metadata=[METADATA])).logits.softmax(-1)[0]
    expected = {model.config.id2label[i]: float(p) for i, p in enumerate(expected)}

    label, heatmap, caption, note = classify(client, good_image)

    assert label["label"] == max(expected, key=expected.get)
    assert probabilities(label) == pytest.approx(expected, abs=1e-5)
    assert Image.open(heatmap).size == Image.open(good_image).size
    assert caption.startswith(f"Grad-CAM for {label['label']}")
    assert "clinician must" in note


def test_without_grad_cam_the_app_returns_the_same_probabilities_and_no_heatmap(client, good_image):
    explained, heatmap, _, _ = classify(client, good_image)
    plain, no_heatmap, caption, _ = classify(client, good_image, explain=False)
    assert heatmap is not None and no_heatmap is None
    assert probabilities(plain) == pytest.approx(probabilities(explained), abs=1e-5)
    assert caption.startswith("Grad-CAM is off")


def test_onnx_runtime_serves_the_same_probabilities(model_dir, predictor, good_image):
    onnx_predictor = app.load_predictor(str(model_dir), runtime="onnx")
    assert onnx_predictor.onnx_session is not None
    expected = predictor.predict(str(good_image), METADATA).probabilities
    actual = onnx_predictor.predict(str(good_image), METADATA).probabilities
    assert actual == pytest.approx(expected, abs=1e-5)


def test_tta_result_through_the_app_sums_to_one(client, good_image):
    label, _, _, _ = classify(client, good_image, tta=True)
    assert sum(probabilities(label).values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "GIF"])
def test_other_colour_modes_are_converted_to_rgb_and_classified(client, predictor, files, mode):
    image = lesion_image()
    path = files / f"mode-{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'gif' if mode == 'GIF' else 'png'}"
    if mode == "RGBA":
        image.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (80, 1))))
        image.save(path)
    elif mode == "I;16":
        Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257).save(path)
    elif mode == "GIF":
        image.save(path, save_all=True, append_images=[image.rotate(90)], duration=100)
    else:
        image.convert(mode).save(path)

    label, _, _, _ = classify(client, path)

    assert probabilities(label) == pytest.approx(predictor.predict(path, METADATA).probabilities, abs=1e-5)


def test_exif_rotation_is_applied_before_classifying(client, predictor, files):
    path = files / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    lesion_image(width=96, height=80).save(path, exif=exif)
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")

    label, heatmap, _, _ = classify(client, path)

    assert Image.open(heatmap).size == (80, 96)
    assert probabilities(label) == pytest.approx(predictor.predict(upright, METADATA).probabilities, abs=1e-5)


def test_missing_metadata_is_imputed_and_said(client, good_image):
    label, _, _, note = classify(client, good_image, {"age": None, "sex": "unknown", "anatom_site_general": "unknown"})
    assert sum(probabilities(label).values()) == pytest.approx(1.0, abs=1e-4)
    assert "Not recorded: age, sex, anatom_site_general" in note


def test_uploads_above_the_limit_are_refused_by_client_and_server(served, files, good_image):
    url, client = served
    path = files / "too-big.png"
    path.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))

    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        classify(client, path)
    response = httpx.post(f"{url}gradio_api/upload", files={"files": ("too-big.png", path.read_bytes(), "image/png")})
    assert response.status_code == 413
    assert classify(client, good_image)[0]["label"]


def test_twenty_concurrent_requests_all_succeed(client, good_image):
    start = time.perf_counter()
    jobs = [client.submit(handle_file(str(good_image)), **METADATA, tta=False, api_name="/predict") for _ in range(20)]
    results = [job.result(timeout=120) for job in jobs]

    assert time.perf_counter() - start < 120
    assert len({result[0]["label"] for result in results}) == 1
    assert all(probabilities(r[0]) == pytest.approx(probabilities(results[0][0]), abs=1e-6) for r in results)


def test_page_shows_disclaimer_model_card_and_examples_with_metadata(served, predictor, examples_dir):
    url, _ = served
    page_config = httpx.get(f"{url}config").text

    assert "Research tool, not a medical device" in page_config
    assert "No model card (README.md)" in page_config
    rows = app.example_rows(predictor, examples_dir)
    assert len(rows) == 3
    for image, age, sex, site in rows:
        assert Path(image).is_file() and Path(image).is_relative_to(examples_dir)
        assert 0 < float(age) <= 120 and sex in ("female", "male") and site == "unknown"  # the model knows back/face


def test_main_without_the_shipped_model_prints_how_to_restore_or_train_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKIN_FUSION_MODEL", raising=False)

    assert app.main([]) == 1
    message = capsys.readouterr().err
    assert f"No model at {app.DEFAULT_MODEL}. Restore it from git" in message
    assert "python train.py --preset ham10000 --dataset PATH/TO/ham10000" in message
    assert "python app.py --model outputs/ham10000" in message


def test_app_script_without_a_model_exits_non_zero_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "app.py"), "--model", str(tmp_path / "missing")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)

    assert done.returncode == 1
    assert "python train.py" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("damage", ["truncated weights", "empty weights", "another model_type"])
def test_app_script_with_a_damaged_model_prints_one_line_without_a_traceback_or_a_prompt(model_dir, tmp_path, damage):
    broken = damaged_model(model_dir, damage)

    done = subprocess.run([sys.executable, str(REPO / "app.py"), "--model", str(broken)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "trust_remote_code" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"'{broken}' is not a SkinFusion model directory (")


def test_the_app_keeps_uploads_in_a_folder_of_its_own_unless_gradio_temp_dir_says_otherwise(monkeypatch, tmp_path):
    import gradio as gr

    from skin_fusion.serving.web_io import private_upload_folder

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # recorded first, so that teardown restores what was there
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    folder = private_upload_folder()
    try:
        assert folder.stat().st_mode & 0o777 == 0o700 and folder != Path(tempfile.gettempdir()) / "gradio"
        assert gr.Image().GRADIO_CACHE == str(folder) and private_upload_folder() == folder
    finally:
        shutil.rmtree(folder)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    assert private_upload_folder() == tmp_path
