"""synthgen.validate and the checks built on it: every rule's threshold and message (the catalogue in
test_bad_input.py runs them through the command lines)."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgen import cli, io, validate
from synthgen.data import store as store_mod
from synthgen.data.tissue import mask_array, scan_array, tissue_array


def test_grid_rules_and_their_thresholds():
    assert validate.grid_problems((6, 9, 11), np.eye(4)) == []
    assert validate.grid_problems((6, 9, 11), np.diag([10.0, 10, 10, 1])) == []      # at the limits: fine
    with pytest.raises(ValueError, match=r"a.nii: grid 5x9x11 is too small: at least 6 voxels per axis"):
        validate.check_grid((5, 9, 11), np.eye(4), "a.nii")
    with pytest.raises(ValueError, match=r"b.nii: voxels of 1 x 1 x 10.5 mm are coarser than 10 mm"):
        validate.check_grid((9, 9, 9), np.diag([1.0, 1, 10.5, 1]), "b.nii")
    validate.check_grid((2, 2, 2), np.eye(4), "mask.nii", min_voxels=False)           # masks may be crops


def test_reslice_estimate_refuses_before_allocating():
    # a 197 x 233 x 189 mm head: 2.9e8 voxels at 0.3 mm, 7.3e7 at 0.5 mm (under 512^3 = 1.3e8)
    shape, affine = (197, 233, 189), np.eye(4)
    assert validate.resliced_shape(shape, affine, 0.5) == (393, 465, 377)
    validate.check_reslice(shape, affine, 0.5, "head.nii")
    with pytest.raises(ValueError, match=r"head.nii: reslicing to 0.3 mm voxels would make a 654x774x627 grid .*"
                                         r"1 x 1 x 1 mm voxels and a 196 x 232 x 188 mm field of view"):
        validate.check_reslice(shape, affine, 0.3, "head.nii")
    with pytest.raises(ValueError, match="huge.nii: reslicing to 1 mm"):       # absurd input voxels, 1 mm output
        io.to_ras_1mm(np.zeros((64, 64, 64), np.uint8), np.diag([50.0, 50, 50, 1]), order=0, name="huge.nii")
    with pytest.raises(ValueError, match="`voxel_size` must be a positive number of mm, got nan"):
        io.to_ras_1mm(np.zeros((8, 8, 8), np.uint8), np.eye(4), voxel_size=float("nan"))


def test_scan_intensity_rules():
    rng = np.random.default_rng(0)
    head = rng.normal(100, 10, (20, 20, 20)).astype(np.float32)
    assert validate.scan_problems(head) == []
    holes = head.copy()
    holes[0, 0, :3] = np.nan
    assert validate.scan_problems(holes) == [("error", "scan has 3 NaN or Inf voxels")]
    assert validate.scan_problems(holes, "warning") == [("warning", "scan has 3 NaN or Inf voxels (set to 0)")]
    (sev, msg), = validate.scan_problems(np.zeros((8, 8, 8), np.float32))
    assert sev == "error" and msg.startswith("scan is constant (every voxel 0)")
    speck = np.zeros((20, 20, 20), np.float32)
    speck[:4, :4, :1] = 1                               # 16 / 8000 = 0.2 % above the background (threshold 1 %)
    (sev, msg), = validate.scan_problems(speck)
    assert sev == "warning" and msg.startswith("only 0.2 % of the voxels are above the background (threshold 1 %)")
    with pytest.raises(ValueError, match="s.nii: scan is constant"):
        scan_array(np.full((8, 8, 8), 3.0, np.float32), np.eye(4), "s.nii")
    assert scan_array(speck, np.eye(4), "s.nii")[1][0].startswith("only 0.2 %")


def test_tissue_and_mask_rules():
    with pytest.raises(ValueError, match=r"m.nii: tissue map is constant \(every voxel label 1\)"):
        tissue_array(np.ones((8, 8, 8), np.uint8), np.eye(4), "m.nii")
    soft = np.full((8, 8, 8, 5), 0.2, np.float32)
    with pytest.raises(ValueError, match=r"p.nii: tissue map is constant \(every voxel the same probabilities\)"):
        tissue_array(soft, np.eye(4), "p.nii")
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    kind, out = tissue_array(labels[..., None], np.eye(4), "m4.nii")           # (X, Y, Z, 1): labels
    assert kind == "labels" and np.array_equal(out, labels)
    with pytest.raises(ValueError, match="big.nii: reslicing to 0.1 mm"):
        tissue_array(labels, np.diag([8.0, 8, 8, 1]), "big.nii", voxel_size=0.1)
    with pytest.raises(ValueError, match="k.nii: voxels of 20 x 20 x 20 mm are coarser"):
        mask_array(labels, np.diag([20.0, 20, 20, 1]), "k.nii")
    assert mask_array(labels[:3, :3, :3], np.eye(4), "crop.nii").shape == (3, 3, 3)   # small masks are fine


def test_output_paths(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    assert validate.check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()                                       # nothing is created
    with pytest.raises(ValueError, match=r"f: the run folder is an existing file, not a folder"):
        validate.check_output_dir(tmp_path / "f", "run folder")
    with pytest.raises(ValueError, match=r"f/x: the output folder cannot be created: .*f is a file"):
        validate.check_output_dir(tmp_path / "f" / "x")
    with pytest.raises(ValueError, match=r"scores.csv: the output file is an existing folder"):
        (tmp_path / "scores.csv").mkdir()
        validate.check_output_file(tmp_path / "scores.csv")
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == ro else real(p, mode, *a, **k))
    with pytest.raises(ValueError, match="ro: the output folder is not writable"):
        validate.check_output_dir(ro)
    with pytest.raises(ValueError, match=r"ro/new: the output folder cannot be created: .*ro is not writable"):
        validate.check_output_dir(ro / "new")
    (tmp_path / "locked.csv").write_text("x")
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p).name == "locked.csv"
                        else real(p, mode, *a, **k))
    with pytest.raises(ValueError, match="locked.csv: the output file exists and is not writable"):
        validate.check_output_file(tmp_path / "locked.csv")


def test_devices(monkeypatch):
    assert validate.resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="`device` must be a torch device such as 'cpu' or 'cuda:0', got 'gpu7'"):
        validate.resolve_device("gpu7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert validate.resolve_device("auto").type == "cpu" and validate.resolve_device(None).type == "cpu"
    with pytest.raises(ValueError, match="got 'cuda' but torch sees no CUDA device"):
        validate.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"got 'cuda:3' but torch sees 1 CUDA device\(s\)"):
        validate.resolve_device("cuda:3")
    with pytest.raises(ValueError, match="`device` must be 'cpu' or 'cuda"):
        validate.resolve_device("ipu")


def test_nonfinite_tensors():
    state = {"a": torch.ones(2), "b": {"c": torch.tensor([1.0, float("inf")])}, "n": torch.tensor([3]),
             "l": [torch.tensor(float("nan"))]}
    assert validate.nonfinite_tensors(state) == ["b.c", "l[0]"]


def _entry(**changes):
    entry = {"kind": "mask", "shape": [3, 4, 5], "affine": np.eye(4).tolist(), "files": {"data": "lesions/a.npy"},
             "scale": 1.0, "sources": [{"path": "/a.nii.gz", "size": 1, "mtime": 0.0, "sha256": "0"}]}
    entry.update(changes)
    return {"version": 1, "sections": {"lesions": {"a": entry}}}


@pytest.mark.parametrize("index, match", [
    ([], "must be a JSON object, got list"),
    ({"version": 3, "sections": {}}, r"store version must be one of \[1, 2\] .*, got 3"),
    ({"version": 1}, "'sections' must be an object, got NoneType"),
    ({"version": 1, "sections": {"maps": {}}}, "unknown section 'maps'"),
    ({"version": 1, "sections": {"lesions": []}}, "section 'lesions' must be an object"),
    ({"version": 1, "sections": {"lesions": {"a": 3}}}, "lesions/a must be an object, got int"),
    (_entry(affine=None), "lesions/a has no valid 'affine'"),
    (_entry(affine=[[1, 0], [0, 1]]), "'affine' must be 4x4 numbers"),
    (_entry(shape=[3, 0, 5]), "'shape' must be 3 or 4 positive ints"),
    (_entry(files={}), "'files' must name its arrays"),
    (_entry(sources=[{"path": "/a"}]), "'sources' must record path, size, mtime and sha256"),
    (_entry(scale=True), "has no valid 'scale'"),
])
def test_store_index_structure(index, match):
    store_mod.check_index(_entry(), "s/index.json")
    with pytest.raises(ValueError, match=f"s/index.json: .*{match}"):
        store_mod.check_index(index, "s/index.json")


def test_cli_answers(capsys, monkeypatch):
    assert cli.error_line(PermissionError(13, "Permission denied", "/x/y")) == ("error: [Errno 13] Permission denied: "
                                                                                "'/x/y'")
    assert cli.error_line(MemoryError()).startswith("error: out of memory (MemoryError)")
    assert cli.error_line(KeyError("k")) == ("error: KeyError: 'k' (rerun with --debug or SYNTHGEN_DEBUG=1 for the "
                                             "traceback)")

    @cli.cli_main
    def raises(argv, err=None):
        raise {"bug": KeyError("k"), "input": ValueError("f.nii: bad"), "ctrl-c": KeyboardInterrupt()}[argv[0]]
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert raises(["bug"]) == 1 and raises(["input"]) == 2 and raises(["ctrl-c"]) == 130
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: KeyError: 'k' (rerun with --debug or SYNTHGEN_DEBUG=1 for the traceback)",
                   "error: f.nii: bad", "error: interrupted (Ctrl-C)"]
    with pytest.raises(KeyError):
        raises(["bug", "--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "0")
    assert raises(["input"]) == 2


def test_a_finished_run_and_a_folder_in_the_way(tmp_path):
    from synthgen.train.loop import check_run_folder
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"already holds a run \(last.pt\): pass --resume .* --overwrite"):
        check_run_folder(tmp_path, resume=False, overwrite=False)
    check_run_folder(tmp_path, resume=True, overwrite=False)
    check_run_folder(tmp_path, resume=False, overwrite=True)
    (tmp_path / "last.pt").unlink()
    (tmp_path / "prev.pt").mkdir()
    with pytest.raises(ValueError, match="prev.pt: is a folder where the run writes its prev.pt"):
        check_run_folder(tmp_path, resume=True, overwrite=False)


def test_binary_predictions_cannot_hold_label_9():
    from synthgen.metrics import binarise_prediction
    with pytest.raises(ValueError, match=r"p.nii: prediction is a binary mask \(0/1\) but --label 9 .* --label 1"):
        binarise_prediction(np.array([[[0, 1]]]), 9, "p.nii")
    assert binarise_prediction(np.array([[[0, 3]]]), 9)[0].sum() == 0        # multi-class: found in none (warned)


def test_predict_with_every_scan_bad_is_one_error_listing_each(tmp_path):
    from synthgen.segment import build_unet, predict_files
    kwargs = {"out_channels": 2, "channels": (4, 8), "dropout": 0.0}
    model = (build_unet(**kwargs), {"model": kwargs, "generator": {"crop": [16, 16, 16], "voxel_size": 4.0}})
    (tmp_path / "a.nii.gz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"no scan can be segmented:\n.*a.nii.gz: cannot be read as NIfTI.*\n"
                                         r".*b.nii.gz: no such scan"):
        predict_files(model, [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"], tmp_path / "o", progress=False)


def test_store_problems_and_a_store_folder_in_the_way(tmp_path):
    import nibabel as nib
    from synthgen.data import pack
    m = np.zeros((8, 8, 8), np.uint8)
    m[2:4, 2:4, 2:4] = 1
    (tmp_path / "l").mkdir()
    nib.save(nib.Nifti1Image(m, np.eye(4)), str(tmp_path / "l" / "a.nii.gz"))
    pack(tmp_path / "s", lesions=tmp_path / "l", progress=False, check=False)
    assert store_mod.check_store(tmp_path / "s") == []
    (tmp_path / "s" / "lesions" / "a.npy").unlink()
    (problem,) = store_mod.check_store(tmp_path / "s")
    # the item's file, said once (not "lesions/a: .../lesions/a.npy: cannot be read")
    assert problem.path.endswith("lesions/a.npy") and problem.message.startswith("cannot be read from the store")
    assert str(problem).count("a.npy") == 2                       # the path, and the OS error quoting it
    (problem,) = store_mod.check_store(tmp_path / "nostore")
    assert "not a packed store" in problem.message
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "real").write_text("a file")
    with pytest.raises(ValueError, match="t/real: is a file where the store keeps its real folder"):
        store_mod.check_output_store(tmp_path / "t")


def test_training_config_files_and_packed_grids(tmp_path):
    from synthgen.train import run
    from synthgen.train.config import quick_preset
    from synthgen.train.loop import check_grids
    args = run.parser().parse_args(["--config", str(tmp_path / "none.json")])
    with pytest.raises(FileNotFoundError, match="none.json: no such config file"):
        run.resolve_config(args)
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(ValueError, match=r"bad.json: not a training config \(JSONDecodeError"):
        run.resolve_config(run.parser().parse_args(["--config", str(tmp_path / "bad.json")]))

    class Store:        # the index of a store whose map was packed with 50 mm voxels
        root = tmp_path / "s"
        index = {"sections": {"tissue_maps": {"m": {"shape": [40, 40, 40], "affine": np.diag([50.0, 50, 50, 1])}},
                              "real": {}}}
    with pytest.raises(ValueError, match=r"s/m \(packed\): reslicing to 3 mm voxels would make a 651x651x651"):
        check_grids(quick_preset(), Store())
