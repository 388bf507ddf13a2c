"""The paper UNet: shapes, parameter count, checkpoint round trip and errors."""
import pytest
import torch

from synthgen.segment import build_unet, load_checkpoint_model, n_params, save_model_checkpoint, total_stride

SMALL = {"out_channels": 3, "channels": (4, 8, 16), "dropout": 0.0}


def test_small_unet_output_shape():
    model = build_unet(**SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32, 32))
    assert out.shape == (2, 3, 32, 32, 32)
    assert total_stride(SMALL) == 4


def test_paper_config_parameter_count():
    model = build_unet()
    n = n_params(model)
    print(f"paper UNet (6 classes): {n} parameters")
    assert n == 18_623_079
    # only the last transposed conv (64 -> C) and the last 3^3 conv (C -> C) depend on the class count
    assert n_params(build_unet(out_channels=2)) == n - (64 * 27 * 4 + 4) - ((36 - 4) * 27 + 4)
    # transposed-conv up-sampling and instance norm, as the paper says
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"ConvTranspose3d", "InstanceNorm3d", "PReLU", "Dropout"} <= kinds


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_unet(**SMALL).eval()
    path = save_model_checkpoint(tmp_path / "ck.pt", model, SMALL, config={"lr": 1e-4}, step=7)
    loaded, cfg = load_checkpoint_model(path)
    assert cfg["lr"] == 1e-4 and cfg["model"]["out_channels"] == 3
    assert not loaded.training
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_checkpoint_with_ddp_prefix(tmp_path):
    model = build_unet(**SMALL)
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "config": {"model": dict(SMALL, channels=[4, 8, 16])}}, tmp_path / "ddp.pt")
    loaded, _ = load_checkpoint_model(tmp_path / "ddp.pt")
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt: checkpoint not found"):
        load_checkpoint_model(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt.pt: cannot be read as a torch checkpoint"):
        load_checkpoint_model(bad)
    torch.save({"weights": {}}, tmp_path / "nokeys.pt")
    with pytest.raises(ValueError, match="nokeys.pt: checkpoint must be a dict with 'model' and 'config'"):
        load_checkpoint_model(tmp_path / "nokeys.pt")
    torch.save({"model": {}, "config": [1]}, tmp_path / "cfglist.pt")
    with pytest.raises(ValueError, match="cfglist.pt: checkpoint 'config' must be a dict"):
        load_checkpoint_model(tmp_path / "cfglist.pt")
    torch.save({"model": {}, "config": {"model": {"depth": 3}}}, tmp_path / "unknown.pt")
    with pytest.raises(ValueError, match="unknown.pt: config\\['model'\\] has unknown build_unet arguments"):
        load_checkpoint_model(tmp_path / "unknown.pt")
    save_model_checkpoint(tmp_path / "mismatch.pt", build_unet(**SMALL), dict(SMALL, out_channels=2))
    with pytest.raises(ValueError, match="mismatch.pt: weights do not fit"):
        load_checkpoint_model(tmp_path / "mismatch.pt")


def test_build_errors():
    with pytest.raises(ValueError, match="`channels` must be at least two"):
        build_unet(channels=(4,))
    with pytest.raises(ValueError, match="`strides` must be 2 positive ints"):
        build_unet(channels=(4, 8, 16), strides=(2,))
    with pytest.raises(ValueError, match="`out_channels` must be a positive int"):
        build_unet(out_channels=0)
    with pytest.raises(ValueError, match="`dropout` must be in"):
        build_unet(dropout=1.5)
    with pytest.raises(ValueError, match="`num_res_units` must be a non-negative int"):
        build_unet(num_res_units=-1)
