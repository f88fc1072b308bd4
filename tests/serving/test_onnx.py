"""The ONNX export: the whole classifier in one graph whose ONNX Runtime logits equal PyTorch's, at any batch size."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from skin_fusion.serving.onnx import (
    ATOL,
    RTOL,
    OnnxMismatchError,
    OnnxSkinFusion,
    check_onnx,
    export_onnx,
    input_names,
    main,
    onnx_cache_path,
    onnx_session_for,
)
from tests.helpers import TINY_SIZE, fitted_processor, tiny_model

METADATA = [{"age": 63, "sex": "male", "anatom_site_general": "face"}, {}, {"age": 30, "sex": "female"}]


@pytest.fixture(scope="module", params=["fusion", "image", "metadata"])
def exported(request, tmp_path_factory):
    """(model, processor, model_dir) of a tiny saved model of each modality, exported with the default output path."""
    processor = fitted_processor()
    # A temperature other than 1 shows that the graph includes the calibration.
    model = tiny_model(request.param, processor=processor, temperature=2.0).eval()
    model_dir = tmp_path_factory.mktemp(f"model_{request.param}")
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    export_onnx(model_dir)
    return model, processor, model_dir


def processor_inputs(model, processor, batch_size: int) -> dict[str, torch.Tensor]:
    images = [Image.new("RGB", (TINY_SIZE + 10 * i, TINY_SIZE), (40 * i, 90, 160)) for i in range(batch_size)]
    inputs = processor(images=images, metadata=METADATA[:batch_size])
    return {name: inputs[name] for name in input_names(model.config)}


def test_export_writes_model_onnx_beside_the_weights(exported):
    model, _, model_dir = exported
    assert (model_dir / "model.onnx").is_file()
    assert not (model_dir / "model.onnx.data").exists()  # weights inside the one file


def test_graph_inputs_are_those_of_the_modality(exported):
    model, _, model_dir = exported
    expected = {"fusion": ["pixel_values", "metadata"], "image": ["pixel_values"], "metadata": ["metadata"]}
    session = OnnxSkinFusion.from_pretrained(model_dir)
    assert session.input_names == expected[model.config.modality]
    assert [output.name for output in session.session.get_outputs()] == ["logits"]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnx_runtime_logits_equal_pytorch_at_any_batch_size(exported, batch_size):
    model, processor, model_dir = exported
    inputs = processor_inputs(model, processor, batch_size)
    with torch.inference_mode():
        expected = model(**inputs).logits.numpy()
    actual = OnnxSkinFusion.from_pretrained(model_dir, num_threads=1)(**inputs)
    assert actual.shape == (batch_size, 3)
    np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=RTOL)


def test_session_accepts_numpy_and_channels_last_tensors(exported):
    model, processor, model_dir = exported
    inputs = processor_inputs(model, processor, 2)
    session = OnnxSkinFusion.from_pretrained(model_dir)
    reference = session(**inputs)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(session(**inputs), reference)
    np.testing.assert_array_equal(session(**{name: value.numpy() for name, value in inputs.items()}), reference)


def test_session_says_which_input_is_missing(exported):
    _, _, model_dir = exported
    session = OnnxSkinFusion.from_pretrained(model_dir)
    with pytest.raises(ValueError, match=f"needs `{session.input_names[0]}`"):
        session()


def test_check_fails_when_the_graph_differs_from_the_model(tmp_path):
    model = tiny_model("metadata").eval()
    path = export_onnx(model, tmp_path / "metadata.onnx")
    assert check_onnx(model, path) < ATOL
    model.config.temperature = 3.0  # the graph keeps the exported temperature (1.0)
    with pytest.raises(OnnxMismatchError, match="differ from PyTorch's"):
        check_onnx(model, path)


def test_export_restores_training_mode(tmp_path):
    model = tiny_model("metadata").train()
    export_onnx(model, tmp_path / "metadata.onnx")
    assert model.training


def test_missing_model_dir_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No model directory at .*python train\.py"):
        export_onnx(tmp_path / "no-such-model")


def test_directory_without_config_is_not_a_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a SkinFusion model directory"):
        export_onnx(tmp_path)


def test_session_without_exported_file_says_how_to_export(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m skin_fusion\.serving\.onnx"):
        OnnxSkinFusion.from_pretrained(tmp_path)


def test_missing_onnxruntime_gives_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ImportError, match=r"ONNX Runtime is not installed; pip install .*onnxruntime=="):
        export_onnx(tiny_model("metadata"), tmp_path / "model.onnx")


def test_cli_writes_and_checks_the_onnx_file(tmp_path, capsys):
    tiny_model("metadata").save_pretrained(tmp_path)
    main([str(tmp_path), "--out", str(tmp_path / "out" / "m.onnx")])
    assert (tmp_path / "out" / "m.onnx").is_file()
    assert "equal PyTorch's" in capsys.readouterr().out


def test_cli_error_for_a_missing_model_dir_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: No model directory at .*python train\.py"):
        main([str(tmp_path / "nothing")])


def test_session_for_a_model_reuses_a_matching_export_and_replaces_a_stale_one(tmp_path):
    model = tiny_model("metadata").eval()
    model.save_pretrained(tmp_path)
    first = onnx_session_for(model, tmp_path)
    assert first.path == tmp_path / "model.onnx"
    written = first.path.stat().st_mtime_ns
    assert onnx_session_for(model, tmp_path).path.stat().st_mtime_ns == written  # reused, not exported again
    model.config.temperature = 3.0  # the model changed after the export: the old graph no longer matches
    fresh = onnx_session_for(model, tmp_path)
    assert fresh.path.stat().st_mtime_ns != written
    assert check_onnx(model, fresh) < ATOL


def test_exports_of_hub_ids_and_read_only_models_go_to_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "skin_fusion" / "onnx"
    assert onnx_cache_path("someone/skin-fusion") == cache / "someone--skin-fusion" / "model.onnx"
    assert onnx_cache_path(tmp_path) == tmp_path / "model.onnx"
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only model directory (tests run as root)
    assert onnx_cache_path(tmp_path).parent.parent == cache
