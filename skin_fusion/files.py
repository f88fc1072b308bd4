"""Where SkinFusion writes a model by default and what it names the files beside it; training, reports and serving
read these names from here."""

DEFAULT_OUTPUT_DIR = "outputs/skin-fusion"  # what `python train.py` writes with no --output_dir
CARD_FACTS_FILE = "card_facts.json"  # beside a saved model: the facts its card is rendered from
TRAINING_REPORT_FILE = "training_report.json"  # a train.py run's test metrics and settings
SOUP_REPORT_FILE = "soup_report.json"  # a soup's test metrics beside its runs'
TRAINER_STATE_FILE = "trainer_state.json"  # the Trainer's state (its log history: the curves); in checkpoints too
# The card's plots (the model card template is given these names).
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
ROC_CURVES_FILE = "roc_curves.png"
TRAINING_CURVES_FILE = "training_curves.png"
ONNX_FILE = "model.onnx"  # the whole classifier exported for ONNX Runtime
MAKE_MODEL_HINT = f"Make a local model with `python train.py` (it writes {DEFAULT_OUTPUT_DIR})"
