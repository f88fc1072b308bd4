"""The Hub-portable model code: a closed set of files with relative imports that a saved model carries with it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification, AutoProcessor

import skin_fusion.modeling
from tests.helpers import lesion_image, save_tiny_model

MODELING = Path(skin_fusion.modeling.__file__).parent
CLOSED_SET = {"configuration_skin_fusion.py", "modeling_skin_fusion.py", "processing_skin_fusion.py", "backbones.py",
              "metadata_encoding.py"}


def test_the_model_code_imports_only_libraries_and_itself():
    for path in MODELING.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{path.name} reaches out of modeling/: from {'.' * node.level}{node.module}"
                if path.name != "__init__.py":
                    assert f"{node.module}.py" in CLOSED_SET, f"{path.name} imports .{node.module}"
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(name.split(".")[0] == "skin_fusion" for name in names), f"{path.name} imports skin_fusion"


def test_a_saved_model_carries_exactly_the_closed_set(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    assert {path.name for path in model_dir.glob("*.py")} == CLOSED_SET


def test_a_saved_model_loads_with_trust_remote_code_where_skin_fusion_cannot_be_imported(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    image_path = tmp_path / "lesion.png"
    lesion_image().save(image_path)
    metadata = {"age": 55, "sex": "female", "anatom_site_general": "face"}
    script = f"""
import sys
sys.modules["skin_fusion"] = None  # any import of the package now fails
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, AutoProcessor
model = AutoModelForImageClassification.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
inputs = processor(images=[Image.open({str(image_path)!r}).convert("RGB")], metadata=[{metadata!r}])
with torch.inference_mode():
    print(model(**inputs).logits.softmax(-1).tolist())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    with torch.inference_mode():
        expected = model(**processor(images=[lesion_image()], metadata=[metadata])).logits.softmax(-1)
    assert torch.allclose(torch.tensor(json.loads(result.stdout.strip().splitlines()[-1])), expected, atol=1e-5)
