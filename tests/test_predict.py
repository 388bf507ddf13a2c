"""predict.py with a small random network: grids, TTA, ensembling, outputs, errors."""
import numpy as np
import nibabel as nib
import pytest
import torch
from monai.inferers import sliding_window_inference

from synthgen import segment as S
from synthgen.segment import build_unet, save_model_checkpoint
from synthgen.segment import cli as P

SMALL = {"out_channels": 3, "channels": (4, 8, 16), "dropout": 0.0}
WIN = 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_unet(**SMALL).eval()


@pytest.fixture
def ckpt(tmp_path, model):
    return save_model_checkpoint(tmp_path / "small.pt", model, SMALL)


def lps_scan(path, shape=(24, 20, 9), seed=0):
    """An LPS, 0.9 x 0.9 x 3 mm, oblique-free scan with a bright blob."""
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 10, shape).astype(np.float32)
    data[8:16, 6:14, 3:6] += 80
    affine = np.diag([-0.9, -0.9, 3.0, 1.0])
    affine[:3, 3] = (10.0, 12.0, -8.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return data, affine


def test_histogram_normalise_and_zscore():
    rng = np.random.default_rng(0)
    vol = np.zeros((20, 21, 22), np.float32)
    vol[3:17, 3:18, 3:19] = rng.gamma(2.0, 50.0, (14, 15, 16))
    out = S.histogram_normalise(vol)
    fg = vol > 0
    assert out.min() == 0.0 and out.max() == 1.0 and np.all(out[~fg] == 0)
    # monotone, and the foreground median lands mid-scale
    order = np.argsort(vol[fg])
    assert np.all(np.diff(out[fg][order]) >= -1e-6)
    assert np.median(out[fg]) == pytest.approx(0.5, abs=0.01)
    assert np.all(S.histogram_normalise(np.full((4, 4, 4), 7.0)) == 0)
    z = S.zscore(out)
    assert z.mean() == pytest.approx(0, abs=1e-5) and z.std() == pytest.approx(1, abs=1e-5)
    assert np.all(S.zscore(np.ones((3, 3, 3))) == 0)
    vol[0, 0, 0] = np.nan
    pre, aff = S.preprocess(vol, np.diag([-1.0, 1.0, 2.0, 1.0]), histnorm=False)
    assert np.all(np.isfinite(pre)) and pre.shape == (20, 21, 43) and np.allclose(np.diag(aff), 1.0)


def test_tta_equals_mean_of_eight_flipped_passes(model):
    vol = np.random.default_rng(1).standard_normal((13, 15, 18)).astype(np.float32)
    tta = S.segment(model, [vol], 16, tta=True)
    passes = []
    for dims in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]:
        flipped = np.flip(vol, dims) if dims else vol
        x = torch.from_numpy(np.ascontiguousarray(flipped))[None, None]
        with torch.no_grad():
            y = sliding_window_inference(x, (16,) * 3, 1, model, overlap=0.5, mode="gaussian",
                                         sigma_scale=0.125, padding_mode="constant", cval=float(vol.min()))[0].numpy()
        passes.append(np.flip(y, tuple(d + 1 for d in dims)) if dims else y)
    assert tta.shape == (3, 13, 15, 18)
    np.testing.assert_allclose(tta, np.mean(passes, 0), rtol=1e-5, atol=1e-5)
    # flips matter for a random network, so the test is not vacuous
    assert np.abs(passes[0] - passes[7]).max() > 1e-3


def test_ensemble_equals_mean_of_per_scan_logits(model):
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((13, 15, 18)).astype(np.float32) for _ in range(2))
    both = S.segment(model, [a, b], 16, tta=True, sw_batch_size=2)
    single = [S.segment(model, [v], 16, tta=True) for v in (a, b)]
    np.testing.assert_allclose(both, (single[0] + single[1]) / 2, rtol=1e-5, atol=1e-5)


def test_lps_anisotropic_scan_comes_back_on_its_grid(tmp_path, ckpt):
    data, affine = lps_scan(tmp_path / "in" / "sub-01_flair.nii.gz")
    res = S.predict_files(ckpt, [tmp_path / "in" / "sub-01_flair.nii.gz"], tmp_path / "out", window=WIN,
                          tta=False, probabilities=True, progress=False)
    assert res[0]["status"] == "done", res[0]["error"]
    imgs = {k: nib.load(str(p)) for k, p in res[0]["outputs"].items()}
    for kind, img in imgs.items():
        assert img.shape[:3] == data.shape, kind
        np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    lesion, labels = (np.asarray(imgs[k].dataobj) for k in ("lesion", "labels"))
    probs = imgs["probs"].get_fdata()
    assert lesion.dtype == labels.dtype == np.uint8 and imgs["probs"].get_data_dtype() == np.uint16
    assert probs.shape == data.shape + (3,)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    assert np.mean(labels == probs.argmax(-1)) > 0.999     # quantisation may break near-ties
    assert np.array_equal(lesion, (labels == 2).astype(np.uint8))
    # a second run skips the finished case; --overwrite recomputes it
    again = S.predict_files(ckpt, [tmp_path / "in" / "sub-01_flair.nii.gz"], tmp_path / "out", window=WIN,
                            tta=False, probabilities=True, progress=False)
    assert again[0]["status"] == "skipped"


class Threshold(torch.nn.Module):
    """A known-answer 'network': class 1 where the preprocessed input exceeds ``level``, class 0 elsewhere
    (pointwise, so sliding windows, padding and flips cannot change the answer, only misplace it)."""

    def __init__(self, level: float):
        super().__init__()
        self.level = level
        self.anchor = torch.nn.Parameter(torch.zeros(()))    # segment() reads the device from a parameter

    def forward(self, x):
        s = torch.tanh((x - self.level) * 50.0) + self.anchor
        return torch.cat([-s, s], 1) * 4.0


def test_lps_anisotropic_scan_returns_the_right_voxels(tmp_path):
    """An LPS 2 x 1 x 3 mm scan with a bright off-centre block: through RAS, 1 mm reslicing, histogram
    normalisation, z-score, sliding windows, TTA and back, a thresholding model marks exactly the block's voxels
    of the input grid (a flipped, shifted or transposed return would miss them)."""
    rng = np.random.default_rng(4)
    data = np.zeros((20, 30, 12), np.float32)
    data[1:19, 2:28, 1:11] = rng.uniform(100, 140, (18, 26, 10))
    data[3:8, 5:11, 2:5] = 300.0                       # 5 x 6 x 3 voxels near one corner
    affine = np.diag([-2.0, -1.0, 3.0, 1.0])
    affine[:3, 3] = (30.0, 20.0, -10.0)
    pre, _ = S.preprocess(data, affine)                # the level in the model's input units: air 0, block 1 after
    level = float(pre.min() + 0.95 * (pre.max() - pre.min()))     # histogram normalisation, tissue below 0.91
    pair = (Threshold(level), {"generator": {"crop": [32, 32, 32], "voxel_size": 1.0}, "model": {"channels": [1]}})
    expected = (data > 220).astype(np.uint8)
    out = S.predict_volume(pair, data, affine, tta=True)
    assert out["lesion"].shape == data.shape and np.allclose(out["affine"], affine)
    assert np.array_equal(out["lesion"], expected) and np.array_equal(out["labels"], expected)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "scan.nii.gz"))
    res = S.predict_files(pair, [tmp_path / "scan.nii.gz"], tmp_path / "out", tta=False, progress=False)
    img = nib.load(str(res[0]["outputs"]["lesion"]))
    assert np.allclose(img.affine, affine) and np.array_equal(np.asarray(img.dataobj), expected)


def test_two_class_model_labels_equal_lesion(tmp_path):
    torch.manual_seed(1)
    cfg = dict(SMALL, out_channels=2)
    ck = save_model_checkpoint(tmp_path / "two.pt", build_unet(**cfg), cfg)
    lps_scan(tmp_path / "a.nii.gz")
    res = S.predict_files(ck, [tmp_path / "a.nii.gz"], tmp_path / "o", window=WIN, tta=False, progress=False)
    lesion, labels = (np.asarray(nib.load(str(res[0]["outputs"][k])).dataobj) for k in ("lesion", "labels"))
    assert np.array_equal(lesion, labels)


def test_ensemble_outputs_on_first_scan_grid(tmp_path, model):
    d1, a1 = lps_scan(tmp_path / "t1.nii.gz", seed=3)
    d2 = np.random.default_rng(4).normal(50, 5, (20, 24, 26)).astype(np.float32)
    a2 = np.diag([1.0, 1.0, 1.0, 1.0])
    a2[:3, 3] = (-11.0, -8.0, -9.0)
    nib.save(nib.Nifti1Image(d2, a2), str(tmp_path / "t2.nii.gz"))
    res = S.predict_files((model, {"model": SMALL}), [tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz"],
                          tmp_path / "o", ensemble=True, name="sub-01", window=WIN, tta=False, progress=False)
    assert len(res) == 1 and res[0]["status"] == "done" and res[0]["name"] == "sub-01"
    img = nib.load(str(tmp_path / "o" / "sub-01_lesion.nii.gz"))
    assert img.shape == d1.shape and np.allclose(img.affine, a1)


def test_predict_volume_in_memory_equals_the_cli_on_the_file(tmp_path, ckpt):
    data, affine = lps_scan(tmp_path / "sub-02.nii.gz", seed=5)
    d2 = np.random.default_rng(6).normal(50, 5, (20, 24, 26)).astype(np.float32)
    a2 = np.diag([1.0, 1.0, 1.0, 1.0])
    a2[:3, 3] = (-11.0, -8.0, -9.0)
    nib.save(nib.Nifti1Image(d2, a2), str(tmp_path / "t2.nii.gz"))
    assert P.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--window", str(WIN), "--probabilities",
                   "--no-tta", str(tmp_path / "sub-02.nii.gz")]) == 0
    assert P.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--window", str(WIN), "--ensemble",
                   "--no-tta", "--name", "both", str(tmp_path / "sub-02.nii.gz"), str(tmp_path / "t2.nii.gz")]) == 0
    out = S.predict_volume(ckpt, data, affine, window=WIN, tta=False)     # the arrays, never a file
    files = {k: nib.load(str(tmp_path / "o" / f"sub-02_{k}.nii.gz")) for k in ("lesion", "labels", "probs")}
    assert out["lesion"].shape == data.shape and np.allclose(out["affine"], affine)
    assert np.array_equal(out["lesion"], np.asarray(files["lesion"].dataobj))
    assert np.array_equal(out["labels"], np.asarray(files["labels"].dataobj))
    np.testing.assert_allclose(out["probabilities"], files["probs"].get_fdata(), atol=1 / 65535)
    assert out["lesion"].any() and not out["lesion"].all()            # a mask with both values: not vacuous
    both = S.predict_volume(ckpt, [data, torch.from_numpy(d2)], [affine, a2], window=WIN, tta=False)
    assert np.array_equal(both["labels"], np.asarray(nib.load(str(tmp_path / "o" / "both_labels.nii.gz")).dataobj))
    assert not np.array_equal(both["labels"], out["labels"])          # the second contrast counted
    with pytest.raises(ValueError, match="`volume` must be a 3D volume"):
        S.predict_volume(ckpt, data[0], affine)
    with pytest.raises(ValueError, match=r"`affines` must hold one affine per volume \(2\)"):
        S.predict_volume(ckpt, [data, d2], [affine])
    with pytest.raises(ValueError, match="`affine`: affine is singular"):
        S.predict_volume(ckpt, data, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="`volumes` must hold at least one volume"):
        S.predict_volume(ckpt, [], [])


def test_main_cli_and_bad_scan_does_not_stop_others(tmp_path, ckpt, capsys):
    lps_scan(tmp_path / "good.nii.gz")
    lps_scan(tmp_path / "bad.nii.gz")
    raw = (tmp_path / "bad.nii.gz").read_bytes()
    (tmp_path / "bad.nii.gz").write_bytes(raw[: len(raw) // 2])     # truncated: header ok, data broken
    rc = P.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--window", f"{WIN},{WIN},{WIN}", "--no-tta",
                 "--device", "cpu", str(tmp_path / "bad.nii.gz"), str(tmp_path / "good.nii.gz")])
    out = capsys.readouterr()
    assert rc == 1 and "good: done" in out.out and "bad.nii.gz" in out.err
    assert (tmp_path / "o" / "good_lesion.nii.gz").exists()
    assert not (tmp_path / "o" / "bad_lesion.nii.gz").exists()


def test_errors(tmp_path, ckpt, model):
    lps_scan(tmp_path / "a.nii.gz")
    out = tmp_path / "o"
    with pytest.raises(FileNotFoundError, match="missing.nii.gz: no such scan"):
        S.predict_files(ckpt, [tmp_path / "missing.nii.gz"], out)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt: not a NIfTI file"):
        S.predict_files(ckpt, [tmp_path / "notes.txt"], out)
    (tmp_path / "junk.nii").write_bytes(b"0" * 10)
    with pytest.raises(ValueError, match="junk.nii: cannot be read as NIfTI"):
        S.predict_files(ckpt, [tmp_path / "junk.nii"], out)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), str(tmp_path / "v.nii.gz"))
    with pytest.raises(ValueError, match="v.nii.gz: expected a 3D scan"):
        S.predict_files(ckpt, [tmp_path / "v.nii.gz"], out)
    (tmp_path / "b").mkdir()
    lps_scan(tmp_path / "b" / "a.nii.gz")
    with pytest.raises(ValueError, match="would both write outputs named 'a'"):
        S.predict_files(ckpt, [tmp_path / "a.nii.gz", tmp_path / "b" / "a.nii.gz"], out)
    with pytest.raises(ValueError, match=r"`window` \(--window\) must be multiples of the network stride 4"):
        S.predict_files(ckpt, [tmp_path / "a.nii.gz"], out, window=30)
    with pytest.raises(ValueError, match="`name` is only used with `ensemble`"):
        S.predict_files(ckpt, [tmp_path / "a.nii.gz"], out, name="x")
    with pytest.raises(ValueError, match="`scans` must name at least one"):
        S.predict_files(ckpt, [], out)
    with pytest.raises(ValueError, match="`device` must be a torch device"):
        S.predict_files(ckpt, [tmp_path / "a.nii.gz"], out, device="gpu7")
    with pytest.raises(FileNotFoundError, match="nockpt.pt: checkpoint not found"):
        S.predict_files(tmp_path / "nockpt.pt", [tmp_path / "a.nii.gz"], out)
    vol = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="`window` must be a positive int or 3"):
        S.segment(model, [vol], window=(32, 32))
    with pytest.raises(ValueError, match="`overlap` must be in"):
        S.segment(model, [vol], WIN, overlap=1.0)
    with pytest.raises(ValueError, match="`sw_batch_size` must be a positive int"):
        S.segment(model, [vol], WIN, sw_batch_size=0)
    with pytest.raises(ValueError, match="`volumes` must hold at least one"):
        S.segment(model, [], WIN)
    with pytest.raises(ValueError, match="`volumes` must be 3D arrays of one shape"):
        S.segment(model, [vol, vol[:4]], WIN)
    far = np.diag([1.0, 1.0, 1.0, 1.0])
    far[:3, 3] = 900.0
    nib.save(nib.Nifti1Image(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), far), str(tmp_path / "far.nii.gz"))
    with pytest.raises(ValueError, match="cannot ensemble"):      # the only case failed: an input error
        S.predict_files(ckpt, [tmp_path / "a.nii.gz", tmp_path / "far.nii.gz"], out, ensemble=True, window=WIN,
                        tta=False, progress=False)
    assert P.main(["--checkpoint", str(ckpt), "--out", str(out), str(tmp_path / "missing.nii.gz")]) == 2
    for bad in ("abc", "32,32", "0"):
        with pytest.raises(SystemExit):
            P.main(["--checkpoint", str(ckpt), "--out", str(out), "--window", bad, str(tmp_path / "a.nii.gz")])


def test_a_multi_contrast_network_takes_its_contrasts_together():
    torch.manual_seed(1)
    net = build_unet(**dict(SMALL, in_channels=2)).eval()
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((13, 15, 18)).astype(np.float32) for _ in range(2))
    got = S.segment(net, [a, b], 16, tta=False)
    x = torch.from_numpy(np.stack([a, b]))[None]
    with torch.no_grad():
        want = sliding_window_inference(x, (16,) * 3, 1, net, overlap=0.5, mode="gaussian", sigma_scale=0.125,
                                        padding_mode="constant", cval=float(x.min()))[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="takes 2 contrasts of a subject together"):
        S.segment(net, [a], 16)
