"""SkinFusion's Gradio app (a Hugging Face Space): a lesion photo with the patient's age, sex and site gives calibrated
class probabilities, an uncertainty note and a Grad-CAM heatmap. A research tool, not a medical device.

    python app.py [--model PATH_OR_HUB_ID] [--runtime torch|onnx] [--host 127.0.0.1] [--port 7860]

The model is --model, else $SKIN_FUSION_MODEL, else the shipped HAM10000 model in models/skin-fusion-ham10000. With
`--runtime onnx` ($SKIN_FUSION_RUNTIME) predictions without Grad-CAM run in ONNX Runtime. The prediction is the API
endpoint `/predict`, callable with gradio_client (README, "The app").
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from starlette.middleware import Middleware

from skin_fusion import MetadataError
from skin_fusion.data.known_datasets import LABEL_CANDIDATES, class_display_name
from skin_fusion.data.synthetic import ensure_default_dataset
from skin_fusion.data.views import TEST_TIME_DESCRIPTION
from skin_fusion.serving.image_io import MAX_UPLOAD_BYTES, ImageInputError
from skin_fusion.serving.predictor import RUNTIMES, UNKNOWN_CHOICE, ModelNotFoundError, SkinFusionPredictor
from skin_fusion.serving.web_io import (
    OptionInputError,
    RequestBodyLimit,
    checkbox_value,
    image_file,
    private_upload_folder,
    settle_server_memory,
    upload_source,
)
from skin_fusion.threads import configure_torch_threads

DEFAULT_MODEL = "models/skin-fusion-ham10000"
# Held-out test images of the shipped model, offered as examples when the served model knows their classes.
HAM10000_EXAMPLES = Path(__file__).resolve().parent / "examples" / "ham10000"
# One prediction at a time (each uses all of torch's CPU threads); up to 32 more requests wait in the queue.
CONCURRENCY_LIMIT = 1
MAX_QUEUE = 32
# Gradio keeps each session's last inputs (a data URL: up to 27 MB) until this many newer sessions push them out. The
# app keeps nothing between requests, so it keeps one session per running prediction.
MAX_SESSIONS = CONCURRENCY_LIMIT
# The form's options as it loads; an API call that sends null for one gets the same.
TTA_DEFAULT, EXPLAIN_DEFAULT = False, True
# Labels of the metadata fields the shipped model and the synthetic set use; other fields get their own name.
FIELD_LABELS = {"age": "Age (years)", "sex": "Sex", "localization": "Anatomical site",
                "anatom_site_general": "Anatomical site"}
DISCLAIMER = (
    "**Research tool, not a medical device.** SkinFusion must not be used to diagnose, treat or triage anyone. "
    "A clinician must examine every lesion, whatever this page says."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (`argv`, default sys.argv), with the environment's SKIN_FUSION_* and GRADIO_SERVER_* as
    defaults."""
    parser = argparse.ArgumentParser(description="Serve the SkinFusion Gradio app.")
    parser.add_argument("--model", default=os.environ.get("SKIN_FUSION_MODEL", DEFAULT_MODEL),
                        help=f"model directory or Hub id (default: $SKIN_FUSION_MODEL or {DEFAULT_MODEL})")
    parser.add_argument("--runtime", choices=RUNTIMES, default=os.environ.get("SKIN_FUSION_RUNTIME", "torch"),
                        help="'onnx' runs predictions without Grad-CAM in ONNX Runtime (exported and checked at start)")
    # Spaces set GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; locally the app stays on this machine.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    return parser.parse_args(argv)


def load_predictor(model: str, runtime: str = "torch") -> SkinFusionPredictor:
    """The predictor, or `ModelNotFoundError`; the default path is never looked up on the Hub."""
    if model == DEFAULT_MODEL and not Path(model).is_dir():
        raise ModelNotFoundError(f"No model at {DEFAULT_MODEL}. Restore it from git (git checkout -- {DEFAULT_MODEL}), "
                                 "or train one run of its recipe and serve it:\n\n"
                                 "    python train.py --preset ham10000 --dataset PATH/TO/ham10000\n"
                                 "    python app.py --model outputs/ham10000\n\n"
                                 "(the README's 'Reproduce it' makes the shipped soup of three runs), or pass --model "
                                 "PATH_OR_HUB_ID (or set SKIN_FUSION_MODEL).")
    return SkinFusionPredictor.from_pretrained(model, runtime=runtime)


def make_predict_fn(predictor: SkinFusionPredictor, upload_dir: str):
    """The event handler: the raw image payload (read only from `upload_dir`, Gradio's cache, or a data URL), the TTA
    and Grad-CAM flags and one keyword per metadata field to four outputs."""
    heatmaps = Path(tempfile.mkdtemp(prefix="skin-fusion-heatmaps-"))

    def predict(
        image: dict[str, Any] | None, tta: Any = None, explain: Any = None, **metadata: Any
    ) -> tuple[dict, Any, str, str]:
        try:
            tta, explain = checkbox_value("tta", tta, TTA_DEFAULT), checkbox_value("explain", explain, EXPLAIN_DEFAULT)
            result = predictor.predict(upload_source(image, upload_dir), metadata, tta=tta, explain=explain)
        except (ImageInputError, MetadataError, OptionInputError) as err:
            # A refused request's inputs (a data URL, a decoded image) outlive it in a reference cycle through its
            # traceback until a full collection, which a large heap makes rare: earlier ones are collected here.
            gc.collect()
            raise gr.Error(str(err), print_exception=False) from err
        note = f"**{result.note}**" if result.uncertain else result.note
        caption = result.explanation if explain else "Grad-CAM is off: tick “Show where the model looked” to see it."
        shown = {class_display_name(label): probability for label, probability in result.probabilities.items()}
        return shown, image_file(result.overlay, heatmaps), caption, note

    weakref.finalize(predict, shutil.rmtree, heatmaps, ignore_errors=True)  # when the app goes, or at exit
    return predict


def metadata_input(name: str, predictor: SkinFusionPredictor) -> gr.components.Component:
    """The form's field for one metadata column: a text box for a number, a dropdown of the model's categories (and
    "unknown") otherwise; both start as "not recorded"."""
    label = FIELD_LABELS.get(name, name.replace("_", " ").capitalize())
    if name in predictor.numeric_columns:
        # A text box, not gr.Number: Gradio 6 shows an empty Number as 0 and sends 0, which would invent an age.
        return gr.Textbox("", label=f"{label}, optional", placeholder="a number; leave empty if not recorded",
                          elem_id=f"field-{name}")
    choices = predictor.metadata_choices()[name]
    return gr.Dropdown(choices, value=UNKNOWN_CHOICE, label=label, elem_id=f"field-{name}")


def example_folder(predictor: SkinFusionPredictor) -> tuple[Path, str]:
    """The examples for this model, with their heading: the held-out HAM10000 images when the model knows their
    classes, else the synthetic set (generated on first use)."""
    examples = pd.read_csv(HAM10000_EXAMPLES / "metadata.csv", dtype=str) if HAM10000_EXAMPLES.is_dir() else None
    if examples is not None and set(examples["dx"]) <= set(predictor.labels):
        return HAM10000_EXAMPLES, ("Held-out HAM10000 test images (never seen in training; CC BY-NC 4.0, Tschandl et "
                                   "al. 2018) with their recorded age, sex and site")
    return ensure_default_dataset(), "Synthetic examples (drawn, not photographs)"


def example_rows(predictor: SkinFusionPredictor, data_dir: Path, per_class: int = 1) -> list[list[Any]]:
    """Complete rows of an example folder, per class: image and metadata (unknown to the model -> empty/"unknown")."""
    frame = pd.read_csv(data_dir / "metadata.csv", dtype=str).dropna()
    label_column = next(column for column in LABEL_CANDIDATES if column in frame.columns)
    frame = frame.groupby(label_column, sort=False).head(per_class)
    choices = predictor.metadata_choices()

    def value(column: str, raw: str | None) -> str:
        if column in predictor.numeric_columns:
            return "" if raw is None else f"{float(raw):g}"
        return raw if raw in choices[column] else UNKNOWN_CHOICE

    return [[str(data_dir / row["file_name"]), *(value(c, row.get(c)) for c in predictor.metadata_columns)]
            for row in frame.to_dict("records")]


def build_demo(predictor: SkinFusionPredictor, data_dir: Path | None = None) -> gr.Blocks:
    """The app's layout and its `/predict` endpoint; `data_dir` holds the examples (default: `example_folder`)."""
    # delete_cache: hourly, remove uploads and outputs older than an hour from Gradio's cache.
    with gr.Blocks(title="SkinFusion", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# SkinFusion\nA lesion photo and, if known, the patient's age, sex and lesion site give "
                    f"calibrated probabilities of {len(predictor.labels)} classes and a map of where the model looked.")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Row():
            with gr.Column():
                # Gradio's own decoding is skipped (preprocess=False below): upload_source and load_rgb_image check
                # every upload.
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                                 label="Lesion photo", height=320, elem_id="lesion-image")
                fields = [metadata_input(name, predictor) for name in predictor.metadata_columns]
                tta = gr.Checkbox(value=TTA_DEFAULT,
                                  label=f"Average over {TEST_TIME_DESCRIPTION} (test-time augmentation)")
                explain = gr.Checkbox(value=EXPLAIN_DEFAULT, label="Show where the model looked (Grad-CAM heatmap)")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                probabilities = gr.Label(num_top_classes=len(predictor.labels), label="Calibrated probabilities",
                                         elem_id="probabilities")
                note = gr.Markdown(label="How to read this result", elem_id="uncertainty-note")
                heatmap = gr.Image(label="Grad-CAM heatmap", interactive=False, height=320, elem_id="heatmap")
                caption = gr.Markdown(label="Heatmap caption", elem_id="heatmap-caption")
        examples_dir, heading = (data_dir, "Examples") if data_dir is not None else example_folder(predictor)
        examples = example_rows(predictor, examples_dir)
        if examples:
            gr.Examples(examples, inputs=[image, *fields], label=heading)
        with gr.Accordion("About this model: classes, training data, test results", open=False):
            gr.Markdown(predictor.card.to_markdown(), elem_id="model-card")
        # preprocess=False: the handler gets the raw values, so every bad input is refused with its own message.
        # Keyword inputs name the API's parameters: /predict(image, one per metadata field, tta, explain); for the
        # shipped model /predict(image, age, sex, localization, tta, explain).
        button.click(make_predict_fn(predictor, image.GRADIO_CACHE), [image], [probabilities, heatmap, caption, note],
                     inputs_kwargs={**dict(zip(predictor.metadata_columns, fields)), "tta": tta, "explain": explain},
                     api_name="predict", preprocess=False)
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=MAX_QUEUE)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, **kwargs: Any) -> Any:
    """Serve with bounded uploads, request bodies and sessions, and no server-side rendering (it needs Node).

    Gradio 6 takes the theme in `launch()`; its Default theme uses fonts bundled with gradio, never Google Fonts.
    """
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD_BYTES, ssr_mode=False,
                       app_kwargs={"middleware": [Middleware(RequestBodyLimit)]}, state_session_capacity=MAX_SESSIONS,
                       theme=gr.themes.Default(), footer_links=["api"], **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Load the model and serve the app until Ctrl-C or SIGTERM; 1, with how to get a model, when there is none."""
    args = parse_args(argv)
    configure_torch_threads()
    try:
        predictor = load_predictor(args.model, args.runtime)
    except ModelNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    private_upload_folder()  # before the components, which take their upload folder when they are made
    demo = build_demo(predictor)
    # Spaces and containers stop an app with SIGTERM: handled like Ctrl-C, Gradio closes the server and deletes the
    # uploads it cached, and the heatmap folder goes at exit.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    settle_server_memory()
    launch(demo, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
