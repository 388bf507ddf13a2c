"""The bundled-model loader: by name, checked by SHA-256 before it loads, used when no checkpoint is given."""
import json

import numpy as np
import pytest
import torch

from synthgen.segment import bundled, build_unet, predict_volume, save_model_checkpoint

MODEL = {"out_channels": 2, "in_channels": 1, "channels": [4, 8], "strides": None, "dropout": 0.0,
         "num_res_units": 1}


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """A models folder holding one small checkpoint under the default name, with its manifest."""
    torch.manual_seed(0)
    path = save_model_checkpoint(tmp_path / "tiny.pt", build_unet(**MODEL), MODEL,
                                 {"generator": {"voxel_size": 3.0, "crop": [16, 16, 16]}})
    (tmp_path / "tiny.md").write_text("# tiny\n")
    manifest = {bundled.DEFAULT_MODEL: {"file": "tiny.pt", "sha256": bundled.file_sha256(path), "card": "tiny.md"}}
    (tmp_path / "models.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(bundled, "MODELS_DIR", tmp_path)
    monkeypatch.setattr(bundled, "MANIFEST", tmp_path / "models.json")
    return tmp_path


def test_predict_without_checkpoint_uses_the_bundled_model(models_dir):
    vol = np.random.default_rng(0).random((20, 22, 18)).astype(np.float32)
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    out = predict_volume(None, vol, aff, tta=False, device="cpu")
    by_name = predict_volume(bundled.DEFAULT_MODEL, vol, aff, tta=False, device="cpu")
    model, cfg = bundled.load_bundled_model()
    explicit = predict_volume((model, cfg), vol, aff, tta=False, device="cpu")
    assert out["lesion"].shape == vol.shape
    np.testing.assert_array_equal(out["probabilities"], explicit["probabilities"])
    np.testing.assert_array_equal(by_name["probabilities"], explicit["probabilities"])
    assert bundled.model_card() == "# tiny\n"


def test_a_replaced_or_missing_bundled_file_is_refused_by_name(models_dir):
    path = models_dir / "tiny.pt"
    torch.manual_seed(1)
    save_model_checkpoint(path, build_unet(**MODEL), MODEL)          # other weights, same place
    with pytest.raises(ValueError, match="damaged or was replaced"):
        bundled.load_bundled_model()
    path.unlink()
    with pytest.raises(FileNotFoundError, match="missing from this installation"):
        bundled.load_bundled_model()


def test_an_unknown_name_lists_the_bundled_models(models_dir):
    with pytest.raises(ValueError, match=f"not a bundled model; bundled: \\['{bundled.DEFAULT_MODEL}'\\]"):
        bundled.load_bundled_model("nope")


def test_no_manifest_means_no_bundled_model(tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "MANIFEST", tmp_path / "models.json")
    assert bundled.bundled_models() == {}
    with pytest.raises(ValueError, match="bundled: none"):
        predict_volume(None, np.ones((8, 8, 8), np.float32), np.eye(4))
