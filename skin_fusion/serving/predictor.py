"""One call from a lesion photo and a patient record to calibrated class probabilities, an uncertainty flag and,
optionally, test-time augmentation and a Grad-CAM heatmap. The model and its processor are loaded once.

```python
from skin_fusion.serving.predictor import SkinFusionPredictor

predictor = SkinFusionPredictor.from_pretrained("models/skin-fusion-ham10000")  # the shipped model
result = predictor.predict("lesion.jpg", {"age": 63, "sex": "male", "localization": "face"}, explain=True)
result.probabilities, result.label, result.uncertain, result.note, result.overlay
```

`SkinFusionPredictor.from_pretrained(..., runtime="onnx")` runs the forwards that need no gradient (the plain
prediction and test-time augmentation) in ONNX Runtime on the whole exported classifier (`skin_fusion.serving.onnx`),
checked against PyTorch when it loads; Grad-CAM always runs in PyTorch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModelForImageClassification, AutoProcessor

from ..data.known_datasets import class_display_name
from ..data.views import TEST_TIME_VIEWS, views_of
from ..evaluation.metrics import CARD_METRICS
from ..files import CARD_FACTS_FILE, MAKE_MODEL_HINT
from ..modeling import (
    MetadataEncoder,
    MetadataError,
    SkinFusionConfig,
    SkinFusionForImageClassification,
    SkinFusionProcessor,
)
from ..modeling.metadata_encoding import is_missing, quote
from ..modeling.modeling_skin_fusion import predicted_classes
from ..reports.model_card import ModelCardFacts, load_card_facts
from .batch_norm_folding import fold_batch_norms
from .explain import GradCamResult, find_last_conv_layer, grad_cam, overlay_heatmap
from .image_io import ImageSource, load_rgb_image
from .onnx import OnnxSkinFusion, onnx_session_for

logger = logging.getLogger(__name__)

# Below this top probability, or this lead over the runner-up, a prediction is flagged as uncertain.
MIN_PROBABILITY = 0.6
MIN_MARGIN = 0.15
# The choice that means "not recorded" in a categorical field; the encoder imputes it and sets its missing flag.
UNKNOWN_CHOICE = "unknown"
# Heatmap overlays of larger images are drawn on a copy downscaled to this longer side (the model saw <= 380 px).
MAX_EXPLAIN_SIDE = 1024
# The model sees only the centre square of an image. A longer image is first cut to its centre part of this aspect
# ratio, so that a 50000x32 strip is neither resized to a gigapixel strip nor drawn as a 1024x1 heatmap.
MAX_ASPECT_RATIO = 4
RUNTIMES = ("torch", "onnx")


class ModelNotFoundError(FileNotFoundError):
    """No SkinFusion model at a path or Hub id; the message says how to make one."""


@dataclass
class Prediction:
    """What the model says about one lesion.

    Args:
        probabilities: calibrated probability of every class, in the model's label order (they sum to 1).
        label: the predicted class (the most probable one after `config.decision_offsets`); `probability` its
            probability.
        uncertain: the top probability is below `min_probability` or leads the runner-up by less than `min_margin`.
        note: a plain-language sentence on how to read this result.
        not_recorded: metadata fields that were missing and were imputed from the training data.
        tta_views: how many views were averaged (1 without test-time augmentation).
        heatmap: Grad-CAM evidence in [0, 1] at the overlay's size (0 outside the centre square the model saw), or None.
        overlay: the heatmap blended over the image, or None: the whole image, cut to its centre part if it is more than
            `MAX_ASPECT_RATIO` times longer than wide, downscaled to `MAX_EXPLAIN_SIDE` if larger.
        explanation: a one-line caption for the heatmap, or why there is none.
    """

    probabilities: dict[str, float]
    label: str
    probability: float
    uncertain: bool
    note: str
    not_recorded: list[str] = field(default_factory=list)
    tta_views: int = 1
    heatmap: np.ndarray | None = None
    overlay: Image.Image | None = None
    explanation: str = ""


@dataclass
class ModelCardSummary:
    """What a model card says about the model: classes, training data and test metrics (dataset, metric, value)."""

    classes: list[str]
    training_data: str | None = None
    test_metrics: list[tuple[str, str, float]] = field(default_factory=list)
    synthetic: bool = False
    note: str | None = None

    def to_markdown(self) -> str:
        """The card's summary for the app's "About this model" panel: classes, note, training data and test results."""
        paragraphs = [f"**Classes:** {', '.join(map(class_display_name, self.classes))}"]
        if self.note:
            paragraphs.append(f"_{self.note}_")
        if self.synthetic:
            paragraphs.append("**Trained on synthetic demo data** (drawn shapes, not photographs of real lesions).")
        if self.training_data:
            paragraphs.append(f"**Training data:** {self.training_data}")
        if self.test_metrics:
            rows = [f"| {dataset} | {metric} | {value:.4f} |" for dataset, metric, value in self.test_metrics]
            header = ["**Test results**", "", "| data set | metric | value |", "|---|---|---|"]
            paragraphs.append("\n".join([*header, *rows]))
        return "\n\n".join(paragraphs)


def read_model_card(path_or_id: str | Path, classes: list[str]) -> ModelCardSummary:
    """Summarise what is known of a model's training: the `card_facts.json` that training writes beside a local
    model, else the YAML header of its model card (README.md, local or on the Hub). Nothing to read gives a note,
    never an error; the card's prose is never parsed."""
    local = Path(path_or_id)
    if (local / CARD_FACTS_FILE).is_file():
        try:
            return summary_from_card_facts(load_card_facts(local / CARD_FACTS_FILE), classes)
        except (OSError, ValueError) as err:
            logger.warning("%s", err)  # the path and the fix for the operator; visitors see only the note
            return ModelCardSummary(classes, note=f"This model's {CARD_FACTS_FILE} is damaged: its training data and "
                                                  "test results are unknown.")
    source = local / "README.md" if local.is_dir() else str(path_or_id)
    if local.is_dir() and not Path(source).is_file():
        return ModelCardSummary(classes, note="No model card (README.md) beside this model: its training data and "
                                              "test results are unknown.")
    try:
        card = ModelCard.load(source)
    except (OSError, ValueError) as err:  # offline / no README on the Hub / unparsable YAML header
        return ModelCardSummary(classes, note=f"No model card could be read ({type(err).__name__}): its training data "
                                              "and test results are unknown.")
    metrics = [
        (result.dataset_name + (f" ({result.dataset_split})" if result.dataset_split else ""),
         result.metric_name or result.metric_type, float(result.metric_value))
        for result in card.data.eval_results or []
    ]
    datasets = card.data.datasets or []
    return ModelCardSummary(
        classes, training_data=", ".join(f"`{name}`" for name in datasets) or None, test_metrics=metrics,
        synthetic="synthetic-data" in (card.data.tags or []),
        note=None if metrics else "The model card lists no test results.",
    )


def summary_from_card_facts(facts: ModelCardFacts, classes: list[str]) -> ModelCardSummary:
    """The summary of a model from the facts its training recorded."""
    sizes = ", ".join(f"{split} {size:,}" for split, size in facts.split_sizes.items())
    metrics = [(f"{facts.dataset_name} (test)", name, round(float(facts.test_metrics[name]), 4))
               for name in CARD_METRICS if name in facts.test_metrics]
    return ModelCardSummary(
        classes, training_data=f"{facts.dataset_name} (`{facts.dataset_source}`): {sizes}.",
        test_metrics=metrics, synthetic=bool(facts.synthetic),
        note=None if metrics else "The model's training recorded no test results.",
    )


def centre_crop_box(size: tuple[int, int], resize_size: int, image_size: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of an image of `size` that the processor's resize + centre crop keeps."""
    width, height = size
    scale = resize_size / min(width, height)
    side_x, side_y = image_size / scale, image_size / scale
    left, top = (width - side_x) / 2, (height - side_y) / 2
    return (max(0, round(left)), max(0, round(top)), min(width, round(left + side_x)), min(height, round(top + side_y)))


def centre_window(size: tuple[int, int], max_aspect: float = MAX_ASPECT_RATIO) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) centre part of an image of `size` whose longer side is at most `max_aspect`
    times its shorter side (the whole image when it already is); it holds the centre square the model sees."""
    width, height = size
    keep_width, keep_height = min(width, round(max_aspect * height)), min(height, round(max_aspect * width))
    left, top = (width - keep_width) // 2, (height - keep_height) // 2
    return left, top, left + keep_width, top + keep_height


class SkinFusionPredictor:
    """A loaded SkinFusion model with its processor; `predict` classifies one lesion.

    Args:
        model: a `SkinFusionForImageClassification` (its logits are already divided by `config.temperature`).
        processor: the `SkinFusionProcessor` saved beside it.
        source: where the model came from (a path or Hub id), for the model card.
        min_probability, min_margin: thresholds of the `uncertain` flag.
        onnx_session: an ONNX Runtime session on this model's export; when given, forwards without Grad-CAM use it.
    """

    def __init__(
        self,
        model: SkinFusionForImageClassification,
        processor: SkinFusionProcessor,
        source: str | Path | None = None,
        min_probability: float = MIN_PROBABILITY,
        min_margin: float = MIN_MARGIN,
        onnx_session: OnnxSkinFusion | None = None,
    ) -> None:
        processor.check_matches(model.config)
        # No weight is ever trained here: without parameter gradients, Grad-CAM's forward records a graph only after
        # its target layer, so an explained prediction costs one forward plus a short backward.
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.onnx_session = onnx_session
        self.config = model.config
        self.labels = [self.config.id2label[i] for i in range(self.config.num_labels)]
        self.min_probability, self.min_margin = min_probability, min_margin
        # A copy of the fitted encoder that refuses categories never seen in training instead of ignoring typos.
        self.encoder = (
            MetadataEncoder.from_dict({**processor.metadata_encoder, "on_unseen": "error"})
            if self.config.uses_metadata else None
        )
        backbone = model.skin_fusion.backbone
        self.target_layer, self.explain_unavailable = None, None
        if backbone is None:
            self.explain_unavailable = "No Grad-CAM: this is a metadata-only model, it never looks at the image."
        else:
            try:
                self.target_layer = find_last_conv_layer(backbone)
            except ValueError as err:
                self.explain_unavailable = f"No Grad-CAM for this backbone: {err}"
        # Convolutions run faster on CPU with channels-last tensors.
        self.channels_last = backbone is not None and any(isinstance(m, nn.Conv2d) for m in backbone.modules())
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Forwards without Grad-CAM run a copy with the batch norms folded into the convolutions (same logits, fewer
        # passes over memory); Grad-CAM hooks the model as trained.
        self.inference_model = self._folded_model() if backbone is not None else self.model
        # Grad-CAM hooks a module of the shared model: explained predictions must not overlap.
        self._explain_lock = threading.Lock()
        self.card = read_model_card(source, self.labels) if source is not None else ModelCardSummary(
            self.labels, note="No model card: the model was not loaded from a directory or Hub id.")

    def _folded_model(self) -> SkinFusionForImageClassification:
        size = self.config.image_size
        example = {"pixel_values": torch.zeros(1, 3, size, size)}
        if self.channels_last:
            example["pixel_values"] = example["pixel_values"].contiguous(memory_format=torch.channels_last)
        if self.config.uses_metadata:
            example["metadata"] = torch.from_numpy(self.encoder.transform([{}]))
        try:
            return fold_batch_norms(self.model, lambda model: model(**example).logits)
        except ValueError as err:
            logger.warning("%s", err)
            return self.model

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | Path, num_threads: int | None = None, runtime: str = "torch", **kwargs
    ) -> SkinFusionPredictor:
        """Load the model and processor from a local directory or a Hub id.

        torch's CPU threads are the process's to set (`skin_fusion.threads.configure_torch_threads`, as `app.py`
        does); loading a model leaves them as they are.

        Args:
            num_threads: ONNX Runtime's threads with runtime="onnx" (default: the thread policy's `thread_count`).
            runtime: "torch", or "onnx" to serve forwards without Grad-CAM from ONNX Runtime (`onnx_session_for`
                reuses or writes `model.onnx` beside a local model and checks it against PyTorch).

        Raises:
            ModelNotFoundError: nothing loadable there; the message says how to make a local model.
        """
        if runtime not in RUNTIMES:
            raise ValueError(f"Unknown runtime {runtime!r}; choose one of {RUNTIMES}.")
        try:
            # The model type is read first: another type's `auto_map` would make transformers ask, on stdin, whether
            # to run that folder's code. This package's own classes are registered, so no remote code is ever needed.
            model_type = SkinFusionConfig.get_config_dict(path_or_id)[0].get("model_type")
            if model_type != SkinFusionConfig.model_type:
                raise ValueError(f"its config.json names model_type {quote(model_type)}, not "
                                 f"'{SkinFusionConfig.model_type}'")
            model = AutoModelForImageClassification.from_pretrained(path_or_id, trust_remote_code=False)
            processor = AutoProcessor.from_pretrained(path_or_id, trust_remote_code=False)
        except (OSError, ValueError, SafetensorError) as err:  # no such path or Hub repo / not a SkinFusion folder /
            reason = str(err).splitlines()[0]  # damaged weights (a truncated or empty model.safetensors)
            where = (f"'{path_or_id}' is not a SkinFusion model directory ({reason})" if Path(path_or_id).exists()
                     else f"No model directory at '{path_or_id}', and no Hub model of that name could be loaded "
                          f"({reason})")
            raise ModelNotFoundError(f"{where}. {MAKE_MODEL_HINT}, or pass a Hub id with HF_HUB_OFFLINE=0.") from err
        if not isinstance(model, SkinFusionForImageClassification):
            raise ModelNotFoundError(f"'{path_or_id}' holds a {type(model).__name__}, not a SkinFusion model. "
                                     f"{MAKE_MODEL_HINT}.")
        if runtime == "onnx":
            kwargs["onnx_session"] = onnx_session_for(model, path_or_id, num_threads=num_threads)
        return cls(model, processor, source=path_or_id, **kwargs)

    @property
    def metadata_columns(self) -> list[str]:
        """The metadata fields this model reads (none for an image-only model)."""
        return self.encoder.columns if self.encoder is not None else []

    @property
    def numeric_columns(self) -> list[str]:
        """The metadata fields read as numbers (the app shows them as text boxes), in the model's order."""
        return self.encoder.numeric_columns if self.encoder is not None else []

    def metadata_choices(self) -> dict[str, list[str]]:
        """Allowed values of each categorical field: the training vocabulary, then "unknown" (not recorded)."""
        if self.encoder is None:
            return {}
        return {name: [*vocab, UNKNOWN_CHOICE] for name, vocab in self.encoder.vocabularies.items()}

    def encode_metadata(self, metadata: dict[str, Any] | None) -> tuple[torch.Tensor, list[str]]:
        """A (1, metadata_dim) tensor and the fields that were not recorded; raises `MetadataError` on bad values."""
        if metadata is not None and not isinstance(metadata, Mapping):
            raise MetadataError(f"Metadata must be a dict of field name to value, such as {{'age': 63, 'sex': "
                                f"'male'}}, not a {type(metadata).__name__}; this model reads {self.metadata_columns}.")
        metadata = dict(metadata or {})
        unknown = sorted(map(str, set(metadata) - set(self.metadata_columns)))
        if unknown:
            raise MetadataError(f"Unknown metadata field(s) {quote(unknown)}; this model reads "
                                f"{self.metadata_columns}.")
        not_recorded = [name for name in self.metadata_columns if is_missing(metadata.get(name))]
        return torch.from_numpy(self.encoder.transform([metadata])), not_recorded

    def predict(
        self,
        image: ImageSource | None,
        metadata: dict[str, Any] | None = None,
        tta: bool = False,
        explain: bool = False,
    ) -> Prediction:
        """Classify one lesion.

        Args:
            image: a path, encoded bytes, a PIL image or an array; decoded and checked by `load_rgb_image`
                (EXIF rotation applied; any colour mode to RGB), then cut to its centre part if it is more than
                `MAX_ASPECT_RATIO` times longer than wide. Ignored (may be None) for a metadata-only model.
            metadata: raw values by field name (e.g. {"age": 63, "sex": "male"}); missing or "unknown" values are
                imputed. Ignored for an image-only model.
            tta: average the probabilities over `TEST_TIME_VIEWS` (the image and its mirror image: one more forward).
            explain: add a Grad-CAM heatmap of the top class; costs one backward through the layers after the
                backbone's last convolutional stage, and its forward's logits give the probabilities.

        Raises:
            ImageInputError, MetadataError: unusable input; the message says what to fix.
        """
        inputs: dict[str, torch.Tensor] = {}
        rgb, cut_from, not_recorded = None, None, []
        if self.config.uses_metadata:  # first: bad metadata is refused before a large image is decoded
            inputs["metadata"], not_recorded = self.encode_metadata(metadata)
        if self.config.uses_image:
            rgb = load_rgb_image(image)
            window = centre_window(rgb.size)
            if window != (0, 0, *rgb.size):
                rgb, cut_from = rgb.crop(window), rgb.size
            pixel_values = self.processor.preprocess_images(rgb)
            inputs["pixel_values"] = pixel_values.contiguous(memory_format=torch.channels_last) \
                if self.channels_last else pixel_values

        cam = None
        if explain and self.target_layer is not None:
            with self._explain_lock:
                cam = grad_cam(self.model, inputs, self.target_layer,
                               class_index=lambda logits: int(self.model.predicted_classes(logits)[0]))
            probabilities = cam.logits.float().softmax(-1)[0]
        else:
            probabilities = self._probabilities(inputs)[0]

        views = 1
        if tta and self.config.uses_image:
            other_views = views_of(inputs["pixel_values"], TEST_TIME_VIEWS[1:])
            views = 1 + len(other_views)
            batch = {"pixel_values": other_views}
            if "metadata" in inputs:
                batch["metadata"] = inputs["metadata"].expand(len(other_views), -1)
            probabilities = (probabilities + self._probabilities(batch).sum(0)) / views

        result = self._summarise(probabilities, not_recorded, views)
        if explain:
            self._add_explanation(result, rgb, cam, cut_from)
        return result

    def _probabilities(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Calibrated class probabilities (batch, num_labels) from ONNX Runtime when there is a session, else torch."""
        if self.onnx_session is not None:
            return torch.from_numpy(self.onnx_session(**inputs)).softmax(-1)
        with torch.inference_mode():
            return self.inference_model(**inputs).logits.float().softmax(-1)

    def _summarise(self, probabilities: torch.Tensor, not_recorded: list[str], views: int) -> Prediction:
        ranked = probabilities.sort(descending=True)
        top, runner_up = float(ranked.values[0]), float(ranked.values[1])
        most_probable = self.labels[int(ranked.indices[0])]
        # The decision: the most probable class after the model's decision offsets (raising rare classes so that
        # each is found about as often as the others; see SkinFusionConfig.decision_offsets).
        decided = int(predicted_classes(probabilities.clamp_min(1e-12).log()[None], self.config.decision_offsets)[0])
        label, probability = self.labels[decided], float(probabilities[decided])
        uncertain = top < self.min_probability or top - runner_up < self.min_margin or label != most_probable
        decided_name, most_probable_name = class_display_name(label), class_display_name(most_probable)
        if label != most_probable:
            note = (f"Flagged: {decided_name} (probability {probability:.2f}), although {most_probable_name} is more "
                    f"probable ({top:.2f}). The decision weighs rarer classes up so that they are not missed: a "
                    "clinician must look.")
        elif uncertain:
            note = (f"Uncertain: the most likely class, {decided_name}, has probability {top:.2f} and leads the next "
                    f"by {top - runner_up:.2f}. The model cannot tell these classes apart here: a clinician must look.")
        else:
            note = (f"Most likely {decided_name} (probability {top:.2f}). This is not a diagnosis: a clinician must "
                    "examine every lesion.")
        if not_recorded:
            note += f" Not recorded: {', '.join(not_recorded)} (the model was trained to work without them)." \
                if self.config.metadata_row_dropout > 0 else \
                f" Not recorded: {', '.join(not_recorded)} (the model used typical training values instead)."
        return Prediction(
            probabilities={name: float(p) for name, p in zip(self.labels, probabilities)}, label=label,
            probability=probability, uncertain=uncertain, note=note, not_recorded=not_recorded, tta_views=views,
        )

    def _add_explanation(
        self, result: Prediction, rgb: Image.Image | None, cam: GradCamResult | None, cut_from: tuple[int, int] | None
    ) -> None:
        if cam is None:
            result.explanation = self.explain_unavailable or "No Grad-CAM for this model."
            return
        if max(rgb.size) > MAX_EXPLAIN_SIDE:  # `rgb` is at most MAX_ASPECT_RATIO long: its shorter side stays >= 256
            scale = MAX_EXPLAIN_SIDE / max(rgb.size)
            size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        box = centre_crop_box(rgb.size, self.processor.resize_size, self.processor.image_size)
        crop_size = (box[2] - box[0], box[3] - box[1])
        crop_heatmap = np.asarray(Image.fromarray(cam.heatmap).resize(crop_size, Image.Resampling.BILINEAR))
        result.heatmap = np.zeros((rgb.height, rgb.width), dtype=np.float32)
        result.heatmap[box[1]:box[3], box[0]:box[2]] = np.clip(crop_heatmap, 0.0, 1.0)
        result.overlay = rgb.copy()
        result.overlay.paste(overlay_heatmap(rgb.crop(box), crop_heatmap), box[:2])
        explained_label = self.labels[cam.class_index]
        explained = class_display_name(explained_label)
        if explained_label != result.label:  # possible with TTA: Grad-CAM explains the un-augmented view
            explained += (f" (the un-augmented view's decision; with TTA the decision is "
                          f"{class_display_name(result.label)})")
        result.explanation = f"Grad-CAM for {explained}: warm colours mark the regions that raised its score most."
        if cut_from is not None:
            result.explanation += (f" This {cut_from[0]}x{cut_from[1]} image is more than {MAX_ASPECT_RATIO} times "
                                   "longer than wide: the heatmap shows its centre part, which holds all the model "
                                   "saw.")
