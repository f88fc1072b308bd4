"""Screen training recipes for HAM10000 on cached frozen-backbone features: one lesion-grouped split, several seeds.

    python bench/recipe_screen.py extract [--backbone tf_efficientnet_lite0] [--image_size 224] [--views original hflip]
    python bench/recipe_screen.py screen [--seeds 3]

`extract` runs the offline ImageNet backbone once per image and view through the library's feature cache
(`skin_fusion.data.feature_cache.add_image_features`, the `datasets` cache train.py's `--cache_image_features`
reads too) and keeps the arrays under outputs/features/. `screen` trains the metadata MLP and head of SkinFusion on
them with a plain PyTorch loop (seconds per recipe), for every recipe and seed, and scores the test split three ways:
full metadata, nothing recorded, and an image-only model of the same recipe.
Results: docs/experiments/ham10000-recipes/.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ham10000"
FEATURES = REPO / "outputs" / "features"
RESULTS = REPO / "docs" / "experiments" / "ham10000-recipes"
# The split every HAM10000 figure of this project uses: 70 / 10 / 20 by lesion_id, seed 42 (train.py's default).
SPLIT = {"validation_size": 0.1, "test_size": 0.2, "seed": 42}


def feature_dir(backbone: str, image_size: int) -> Path:
    return FEATURES / f"ham10000-{backbone}-{image_size}"


def extract(backbone: str, image_size: int, views: list[str], batch_size: int) -> Path:
    """Cached features of every split (train in each of `views`), labels and raw metadata, saved as arrays."""
    from skin_fusion import SkinFusionConfig, SkinFusionForImageClassification, SkinFusionProcessor
    from skin_fusion.data.feature_cache import add_image_features, feature_matrix
    from skin_fusion.data.loading import load_lesion_dataset
    from skin_fusion.threads import configure_torch_threads
    from skin_fusion.weights.backbone_weights import load_backbone_weights

    configure_torch_threads()
    lesions = load_lesion_dataset(str(DATA), **SPLIT)
    processor = SkinFusionProcessor.for_backbone(backbone, image_size)
    model = SkinFusionForImageClassification(SkinFusionConfig(
        backbone=backbone, image_size=image_size, backbone_weights="lite", modality="image",
        id2label=dict(enumerate(lesions.label_names))))
    load_backbone_weights(model)
    out = feature_dir(backbone, image_size)
    out.mkdir(parents=True, exist_ok=True)
    columns = lesions.numeric_columns + lesions.categorical_columns
    timings = {}
    for split in ("train", "validation", "test"):
        rows = lesions.splits[split]
        np.save(out / f"{split}-labels.npy", np.asarray(rows["label"], dtype=np.int64))
        rows.select_columns(columns).to_pandas().to_csv(out / f"{split}-metadata.csv", index=False)
        for view in views if split == "train" else ["original"]:
            started = time.perf_counter()
            with_features = add_image_features(rows, model.skin_fusion.backbone, processor, view=view,
                                               batch_size=batch_size)
            np.save(out / f"{split}-{view}.npy", feature_matrix(with_features))
            timings[f"{split}-{view}"] = round(time.perf_counter() - started, 1)
            print(f"{split} {view}: {timings[f'{split}-{view}']} s", flush=True)
    (out / "facts.json").write_text(json.dumps({
        "backbone": backbone, "image_size": image_size, "label_names": lesions.label_names,
        "numeric_columns": lesions.numeric_columns, "categorical_columns": lesions.categorical_columns,
        "split": SPLIT, "extraction_seconds": timings, "threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or None,
    }, indent=2))
    return out


@dataclass(frozen=True)
class Recipe:
    """One way to train the heads; each field is one knob of train.py."""

    name: str
    metadata_dropout: float = 0.1
    metadata_row_dropout: float = 0.25
    label_smoothing: float = 0.0
    balancing: str = "class_weights"  # or "none"
    views: tuple[str, ...] = ("original",)
    dropout: float = 0.3
    head_hidden_sizes: tuple[int, ...] = (256,)
    learning_rate: float = 2e-3
    epochs: int = 30
    batch_size: int = 64


RECIPES = [
    Recipe("no metadata masking", metadata_dropout=0.0, metadata_row_dropout=0.0),
    Recipe("masking: fields 0.1, rows 0.25"),
    Recipe("masking: fields 0.2, rows 0.5", metadata_dropout=0.2, metadata_row_dropout=0.5),
    Recipe("masking + label smoothing 0.1", label_smoothing=0.1),
    Recipe("masking, no class weights", balancing="none"),
    Recipe("masking + hflip view", views=("original", "hflip")),
    Recipe("masking, head 512, dropout 0.5", head_hidden_sizes=(512,), dropout=0.5),
    Recipe("no class weights, no masking", balancing="none", metadata_dropout=0.0, metadata_row_dropout=0.0),
    Recipe("no class weights, masking: fields 0.2, rows 0.5", balancing="none", metadata_dropout=0.2,
           metadata_row_dropout=0.5),
]


@dataclass
class Arrays:
    """Cached features, encoded metadata and labels of one split."""

    features: np.ndarray
    metadata: np.ndarray
    labels: np.ndarray


def load_arrays(folder: Path, views: tuple[str, ...]):
    """Train (one block of rows per view), validation and test arrays, with the processor fitted on train."""
    import pandas as pd

    from skin_fusion import MetadataEncoder, SkinFusionProcessor

    facts = json.loads((folder / "facts.json").read_text())
    frames = {split: pd.read_csv(folder / f"{split}-metadata.csv", dtype=str, keep_default_na=False)
              for split in ("train", "validation", "test")}
    encoder = MetadataEncoder.fit(frames["train"], facts["numeric_columns"], facts["categorical_columns"])
    processor = SkinFusionProcessor.for_backbone(facts["backbone"], facts["image_size"], metadata_encoder=encoder)

    def arrays(split: str, split_views: tuple[str, ...]) -> Arrays:
        metadata = processor.encode_metadata(frames[split]).numpy()
        labels = np.load(folder / f"{split}-labels.npy")
        return Arrays(np.concatenate([np.load(folder / f"{split}-{view}.npy") for view in split_views]),
                      np.concatenate([metadata] * len(split_views)), np.concatenate([labels] * len(split_views)))

    return facts, processor, arrays("train", views), arrays("validation", ("original",)), arrays("test", ("original",))


def train_heads(recipe: Recipe, modality: str, seed: int, facts: dict, processor, train: Arrays,
                validation: Arrays, threads: int = 1):
    """The heads trained with a plain PyTorch loop; the best epoch by validation balanced accuracy is kept."""
    import torch

    from skin_fusion import SkinFusionConfig, SkinFusionForImageClassification
    from skin_fusion.data.balancing import class_weights
    from skin_fusion.evaluation.metrics import balanced_accuracy

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    num_labels = len(facts["label_names"])
    weights = class_weights(train.labels, num_labels) if recipe.balancing == "class_weights" else None
    uses_metadata = modality == "fusion"
    config = SkinFusionConfig(
        backbone=facts["backbone"], image_size=facts["image_size"], modality=modality,
        id2label=dict(enumerate(facts["label_names"])), dropout=recipe.dropout,
        head_hidden_sizes=list(recipe.head_hidden_sizes), label_smoothing=recipe.label_smoothing,
        class_weights=[float(w) for w in weights] if weights is not None else None,
        metadata_dropout=recipe.metadata_dropout if uses_metadata else 0.0,
        metadata_row_dropout=recipe.metadata_row_dropout if uses_metadata else 0.0,
        missing_metadata=processor.encode_metadata([{}])[0].tolist(), **processor.metadata_schema(),
    )
    model = SkinFusionForImageClassification(config)
    trained = [p for name, p in model.named_parameters() if not name.startswith("skin_fusion.backbone.")]
    optimizer = torch.optim.AdamW(trained, lr=recipe.learning_rate, weight_decay=1e-4)
    features, metadata = torch.from_numpy(train.features), torch.from_numpy(train.metadata)
    labels = torch.from_numpy(train.labels)
    generator = torch.Generator().manual_seed(seed)
    best, best_state = -1.0, None
    for _ in range(recipe.epochs):
        model.train()
        for rows in torch.randperm(len(labels), generator=generator).split(recipe.batch_size):
            inputs = {"image_features": features[rows], "labels": labels[rows]}
            if uses_metadata:
                inputs["metadata"] = metadata[rows]
            loss = model(**inputs).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = balanced_accuracy(validation.labels, logits_of(model, validation, uses_metadata).argmax(1))
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model


def logits_of(model, split: Arrays, uses_metadata: bool, withhold: np.ndarray | None = None) -> np.ndarray:
    """Logits of a whole split; `withhold` (the encoded empty row) replaces every metadata row."""
    import torch

    model.eval()
    inputs = {"image_features": torch.from_numpy(split.features)}
    if uses_metadata:
        metadata = split.metadata if withhold is None else np.repeat(withhold[None], len(split.labels), axis=0)
        inputs["metadata"] = torch.from_numpy(metadata)
    with torch.inference_mode():
        return model(**inputs).logits.double().numpy()


def scores(logits: np.ndarray, labels: np.ndarray, offsets: list[float] | None) -> dict[str, float]:
    """Balanced accuracy of the decisions (with and without `offsets`), macro AUC and ECE of the probabilities."""
    import torch
    from scipy.special import softmax
    from sklearn.metrics import roc_auc_score

    from skin_fusion.evaluation.metrics import balanced_accuracy
    from skin_fusion.modeling.modeling_skin_fusion import predicted_classes
    from skin_fusion.training.calibration import expected_calibration_error

    probabilities = softmax(logits, axis=1)
    return {
        "balanced_accuracy": balanced_accuracy(labels, predicted_classes(torch.from_numpy(logits), offsets).numpy()),
        "balanced_accuracy_argmax": balanced_accuracy(labels, probabilities.argmax(1)),
        "macro_auc": float(roc_auc_score(labels, probabilities, multi_class="ovr")),
        "ece": expected_calibration_error(probabilities, labels),
    }


def evaluate_recipe(recipe: Recipe, seed: int, folder: Path) -> dict[str, Any]:
    """Fusion (scored with metadata and with nothing recorded) and image-only heads of one recipe and seed."""
    from skin_fusion.training.calibration import fit_on_validation

    facts, processor, train, validation, test = load_arrays(folder, recipe.views)
    empty_row = processor.encode_metadata([{}]).numpy()[0]
    result: dict[str, Any] = {"recipe": recipe.name, "seed": seed}
    started = time.perf_counter()
    for modality in ("fusion", "image"):
        uses_metadata = modality == "fusion"
        model = train_heads(recipe, modality, seed, facts, processor, train, validation)
        validation_logits = logits_of(model, validation, uses_metadata)
        fitted = fit_on_validation(validation_logits, validation.labels, train.labels, len(facts["label_names"]))
        temperature, offsets = fitted.temperature, fitted.decision_offsets
        result[f"{modality}_tau"] = fitted.decision_strength
        result[modality] = scores(logits_of(model, test, uses_metadata) / temperature, test.labels, offsets)
        if uses_metadata:
            result["fusion_nothing_recorded"] = scores(
                logits_of(model, test, True, withhold=empty_row) / temperature, test.labels, offsets)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def screen(folder: Path, seeds: int, out: Path, recipes: list[Recipe]) -> list[dict[str, Any]]:
    """Every recipe for every seed, resumable: results already in `out` are kept."""
    results = json.loads(out.read_text())["runs"] if out.is_file() else []
    done = {(r["recipe"], r["seed"], r.get("features")) for r in results}
    for recipe in recipes:
        for seed in range(seeds):
            if (recipe.name, seed, folder.name) in done:
                continue
            result = {**evaluate_recipe(recipe, seed, folder), "features": folder.name}
            results.append(result)
            print(json.dumps(result), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"runs": results}, indent=1))
    return results


def summary_table(runs: list[dict[str, Any]]) -> str:
    """Mean ± standard deviation over seeds of each recipe, as a markdown table."""
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_recipe.setdefault(f"{run['recipe']} ({run['features']})", []).append(run)

    def cell(rows: list[dict[str, Any]], part: str, metric: str) -> str:
        values = np.array([row[part][metric] for row in rows])
        return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"

    lines = ["| recipe (features) | seeds | fusion, metadata as recorded | fusion, nothing recorded | image-only | "
             "fusion macro AUC (recorded / nothing) | image-only macro AUC |", "|---|---|---|---|---|---|---|"]
    for name, rows in by_recipe.items():
        lines.append(
            f"| {name} | {len(rows)} | {cell(rows, 'fusion', 'balanced_accuracy')} | "
            f"{cell(rows, 'fusion_nothing_recorded', 'balanced_accuracy')} | "
            f"{cell(rows, 'image', 'balanced_accuracy')} "
            f"| {cell(rows, 'fusion', 'macro_auc')} / {cell(rows, 'fusion_nothing_recorded', 'macro_auc')} | "
            f"{cell(rows, 'image', 'macro_auc')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    extract_parser = commands.add_parser("extract")
    extract_parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    extract_parser.add_argument("--image_size", type=int, default=224)
    extract_parser.add_argument("--views", nargs="+", default=["original", "hflip"])
    extract_parser.add_argument("--batch_size", type=int, default=32)
    screen_parser = commands.add_parser("screen")
    screen_parser.add_argument("--features", default="ham10000-tf_efficientnet_lite0-224")
    screen_parser.add_argument("--seeds", type=int, default=3)
    screen_parser.add_argument("--recipes", nargs="*", help="names of RECIPES to run (default: all)")
    screen_parser.add_argument("--out", type=Path, default=RESULTS / "results.json")
    report_parser = commands.add_parser("report")
    report_parser.add_argument("--out", type=Path, default=RESULTS / "results.json")
    args = parser.parse_args()
    if args.command == "report":
        table = summary_table(json.loads(args.out.read_text())["runs"])
        args.out.with_suffix(".md").write_text(table + "\n")
        print(table)
    elif args.command == "extract":
        print(extract(args.backbone, args.image_size, args.views, args.batch_size))
    else:
        recipes = [r for r in RECIPES if not args.recipes or r.name in args.recipes]
        screen(FEATURES / args.features, args.seeds, args.out, recipes)


if __name__ == "__main__":
    main()
