"""The model card (`README.md` beside the weights), rendered from the package's `templates/model_card.md`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..evaluation.metrics import CARD_METRICS
from ..files import CARD_FACTS_FILE, CONFUSION_MATRIX_FILE, ROC_CURVES_FILE, TRAINING_CURVES_FILE
from .formatting import cell

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"


@dataclass
class ModelCardFacts:
    """What a training run knows about itself; every number on the card comes from here."""

    model_name: str
    repo_or_path: str
    label_names: list[str]
    backbone: str
    image_size: int
    modality: str
    metadata_columns: list[str]
    dataset_name: str
    dataset_source: str
    synthetic: bool
    license: str
    test_metrics: dict[str, float]
    test_results: dict[str, Any]
    subgroups: list[dict[str, Any]]
    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    split_sizes: dict[str, int]
    train_counts: dict[str, int]
    group_column: str | None
    training: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None
    hub_dataset: str | None = None
    test_metrics_without_metadata: dict[str, float] | None = None
    image_only_test_metrics: dict[str, float] | None = None
    decision_strength: float = 0.0
    curves: bool = False  # the training curves' plot is beside the card
    split_digests: dict[str, str] | None = None  # each split's rows and image bytes (SHA-256; older runs: none)


def split_differences(facts: ModelCardFacts, other: ModelCardFacts) -> list[str]:
    """How the splits two saved models were trained on differ (split seed, sizes, and the digests of the rows where
    both recorded them); empty when they are one split. The data set's name (`--dataset` as typed: one folder is
    `../data/ham10000` from one directory and an absolute path from another) is compared only for models saved before
    digests were recorded, which have nothing else to tell their rows apart."""
    digested = facts.split_digests is not None and other.split_digests is not None
    compared = [("split seed", facts.training.get("split_seed"), other.training.get("split_seed")),
                ("split sizes", facts.split_sizes, other.split_sizes)]
    if not digested:
        compared.insert(0, ("data set", facts.dataset_source, other.dataset_source))
    differences = [f"{name} {mine!r} against {theirs!r}" for name, mine, theirs in compared if mine != theirs]
    if digested:
        differences += [f"the {name} rows (same sizes, other images or metadata)"
                        for name in sorted(facts.split_digests)
                        if facts.split_digests[name] != other.split_digests.get(name)]
    return differences


def image_only_figures(facts: ModelCardFacts, image_only_dir: Path) -> dict[str, float]:
    """The test metrics of the image-only model saved in `image_only_dir` (a train.py run or a soup), for the card's
    three-way table of the model `facts` describe; raises unless it reads images only and was trained on that model's
    split."""
    path = Path(image_only_dir) / CARD_FACTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {CARD_FACTS_FILE} in {image_only_dir}: pass a model folder written by train.py "
                                "--modality image (or a soup of such runs).")
    other = load_card_facts(path)
    if other.modality != "image":
        raise ValueError(f"{image_only_dir} reads {other.modality}, not images only: pass a model trained with "
                         "--modality image.")
    if differences := split_differences(facts, other):
        raise ValueError(f"{image_only_dir} was trained on another split than this model ({'; '.join(differences)}): "
                         "train the image-only model with this model's --dataset, --split_seed, "
                         "--validation_size and --test_size.")
    return other.test_metrics


def card_data(facts: ModelCardFacts) -> ModelCardData:
    """The YAML header: licence, datasets, metrics, `model-index` with this run's test results, tags."""
    dataset_type = facts.hub_dataset or facts.dataset_name
    results = [
        EvalResult(
            task_type="image-classification", task_name="Skin lesion classification", dataset_type=dataset_type,
            dataset_name=facts.dataset_name, dataset_split="test", metric_type=name, metric_name=name,
            metric_value=round(facts.test_metrics[name], 4),
        )
        for name in CARD_METRICS if name in facts.test_metrics
    ]
    return ModelCardData(
        model_name=facts.model_name, license=facts.license, library_name="transformers",
        pipeline_tag="image-classification", base_model=facts.base_model,
        datasets=[facts.hub_dataset] if facts.hub_dataset else None, metrics=list(CARD_METRICS),
        tags=["skin-lesion", "dermoscopy", "multimodal", "timm", "skin_fusion", "medical-research"]
        + (["synthetic-data"] if facts.synthetic else []),
        eval_results=results,
    )


def three_ways(facts: ModelCardFacts) -> list[dict[str, str]]:
    """Rows of the with / without metadata table (empty for a model that reads no metadata)."""
    if facts.test_metrics_without_metadata is None:
        return []
    rows = [("metadata as recorded", facts.test_metrics), ("nothing recorded", facts.test_metrics_without_metadata)]
    if facts.image_only_test_metrics is not None:
        rows.append(("image-only model", facts.image_only_test_metrics))
    return [{"name": name, **{key: cell(metrics.get(key)) for key in ("balanced_accuracy", "macro_auc", "ece")}}
            for name, metrics in rows]


def render_model_card(
    facts: ModelCardFacts, template_path: Path = MODEL_CARD_TEMPLATE, assets: str = ""
) -> ModelCard:
    """The filled-in card; its YAML parses with `huggingface_hub.ModelCard`. `assets` prefixes the plots' file names
    (the folder of the model, seen from where the card is written; empty beside the weights)."""
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template {template_path} is missing; reinstall skin_fusion with its "
                                "package data (templates/model_card.md).")
    results = facts.test_results
    per_class = [
        {"name": name, "precision": cell(results["precision"][i]), "recall": cell(results["recall"][i]),
         "auc": cell(results["roc_auc"][i]), "support": int(sum(results["confusion_matrix"][i]))}
        for i, name in enumerate(facts.label_names)
    ]
    subgroups = [{key: cell(row.get(key)) for key in ("feature", "group", "n", "accuracy", "balanced_accuracy", "ece")}
                 for row in facts.subgroups]
    training = facts.training
    unfreeze = training.get("unfreeze_last_blocks", 0)
    card = ModelCard.from_template(
        card_data(facts), template_path=str(template_path),
        model_name=facts.model_name, repo_or_path=facts.repo_or_path, label_names=facts.label_names,
        backbone=facts.backbone, image_size=facts.image_size, modality=facts.modality,
        modality_description={"fusion": "image features concatenated with metadata-MLP features",
                              "image": "image only", "metadata": "metadata only"}[facts.modality],
        metadata_description=", ".join(facts.metadata_columns) or "none",
        example_metadata="{" + ", ".join(f'"{c}": None' for c in facts.metadata_columns) + "}",
        synthetic=facts.synthetic, dataset_name=facts.dataset_name, dataset_source=facts.dataset_source,
        group_column=facts.group_column, test_size=facts.split_sizes.get("test", 0),
        test_metrics={k: facts.test_metrics[k] for k in CARD_METRICS if k in facts.test_metrics},
        per_class=per_class, subgroups=subgroups, min_subgroup=training.get("min_subgroup", 5),
        temperature=facts.temperature, ece_before=facts.ece_before, ece_after=facts.ece_after,
        nll_before=facts.nll_before, nll_after=facts.nll_after,
        split_sizes=", ".join(f"{k} {v}" for k, v in facts.split_sizes.items()),
        train_counts=", ".join(f"{k} {v}" for k, v in facts.train_counts.items()),
        unfreeze_description="all blocks" if not unfreeze else f"last {unfreeze} blocks",
        three_ways=three_ways(facts), decision_strength=facts.decision_strength, curves=facts.curves, assets=assets,
        confusion_matrix_file=CONFUSION_MATRIX_FILE, roc_curves_file=ROC_CURVES_FILE,
        training_curves_file=TRAINING_CURVES_FILE,
        frozen_throughout=float(training.get("freeze_epochs", 0)) >= float(training.get("epochs", 0)) > 0,
        license=facts.license,
        **{k: v for k, v in training.items() if k not in ("unfreeze_last_blocks", "min_subgroup")},
    )
    return card


def save_card_facts(facts: ModelCardFacts, path: Path) -> Path:
    """The facts as JSON (`card_facts.json` beside the weights): a card can be rendered again without the run."""
    path.write_text(json.dumps(asdict(facts), indent=1, default=float))
    return path


def load_card_facts(path: Path) -> ModelCardFacts:
    """Facts written by `save_card_facts`; a ValueError naming the file and what is wrong with it otherwise."""
    fix = "restore the file from the run (or git), or train the model again"
    try:
        saved = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): {fix}.") from err
    if not isinstance(saved, dict):
        raise ValueError(f"{path} holds a JSON {type(saved).__name__}, not the facts' object: {fix}.")
    known = {spec.name for spec in fields(ModelCardFacts)}
    required = {spec.name for spec in fields(ModelCardFacts)
                if spec.default is MISSING and spec.default_factory is MISSING}
    if unknown := sorted(saved.keys() - known):
        raise ValueError(f"{path} has keys this version of SkinFusion does not know ({', '.join(unknown)}): update "
                         f"SkinFusion, or {fix}.")
    if missing := sorted(required - saved.keys()):
        raise ValueError(f"{path} lacks {', '.join(missing)}: {fix}.")
    return ModelCardFacts(**saved)


def main(argv: list[str] | None = None) -> int:
    """Render a saved model's card again from its card_facts.json, e.g. the repository's top-level model_card.md."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model_dir", type=Path, help="a model directory written by train.py (holds card_facts.json)")
    parser.add_argument("--out", type=Path, help="where to write the card (default: MODEL_DIR/README.md); only the "
                        "model's own card saves --repo_or_path and --image_only into its card_facts.json")
    parser.add_argument("--repo_or_path", help="the path or Hub id the card's code loads the model from")
    parser.add_argument("--image_only", type=Path,
                        help="an image-only model (train.py --modality image, or a soup of such runs) trained on this "
                             "model's split: its test figures join the card's with / without metadata table")
    args = parser.parse_args(argv)
    facts_path = args.model_dir / CARD_FACTS_FILE
    if not facts_path.is_file():
        print(f"No {CARD_FACTS_FILE} in {args.model_dir}: pass a model directory written by train.py.", file=sys.stderr)
        return 1
    try:
        facts = load_card_facts(facts_path)
        if args.image_only:
            facts.image_only_test_metrics = image_only_figures(facts, args.image_only)
    except (OSError, ValueError) as error:
        print(error, file=sys.stderr)
        return 1
    if args.repo_or_path:
        facts.repo_or_path = args.repo_or_path
    out = args.out or args.model_dir / "README.md"
    # The model's own card and its facts change together; a card written elsewhere leaves both as they were.
    if (args.repo_or_path or args.image_only) and out.resolve() == (args.model_dir / "README.md").resolve():
        save_card_facts(facts, facts_path)
    assets = os.path.relpath(args.model_dir, out.resolve().parent) + "/" if out.parent.resolve() != \
        args.model_dir.resolve() else ""
    render_model_card(facts, assets=assets).save(out)
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
