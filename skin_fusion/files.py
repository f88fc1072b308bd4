"""Where SkinFusion writes a model by default and what it names the files beside it; training, reports and serving
read these names from here."""

DEFAULT_OUTPUT_DIR = "outputs/skin-fusion"  # what `python train.py` writes with no --output_dir
CARD_FACTS_FILE = "card_facts.json"  # beside a saved model: the facts its card is rendered from
MAKE_MODEL_HINT = f"Make a local model with `python train.py` (it writes {DEFAULT_OUTPUT_DIR})"
