"""The bad-input catalogue: one row per case, its entry point and the expected outcome.

Every row runs an entry point's ``main`` in this process (tiny NIfTI fixtures built with nibabel; training rows use
``test_train.tiny`` configs, CPU, two steps) and fails on a Python traceback, on exit status 0 for garbage, and on an
error that does not name the file or argument. Outcomes:

- ``error``: exit status 2, a line ``error: ...`` naming every expected name, nothing else done;
- ``warning``: exit status 0 and a ``warning`` line naming them;
- ``works``: exit status 0, no error line;
- ``partial``: exit status 1 (some cases of a batch failed), the bad ones named;
- ``diverged``: exit status 1 (training stopped, the loss was not finite);
- ``signal``: exit status 128 + 15 (SIGTERM) after the checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from synthgen import preview, sample
from synthgen.data.__main__ import main as data_main
from synthgen.segment import build_unet, save_model_checkpoint
from synthgen.metrics import cli as evaluate
from synthgen.segment import cli as predict
from synthgen.train import run

from conftest import phantom_labels
from test_train import BlobLesions, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

MAINS = {"check": lambda argv: data_main(["check", "--no-progress"] + argv),
         "pack": lambda argv: data_main(["pack", "--no-progress"] + argv),
         "train": lambda argv: run.main(["--no-progress"] + argv),
         "predict": lambda argv: predict.main(["--no-tta", "--device", "cpu"] + argv),
         "evaluate": evaluate.main, "preview": preview.main, "sample": sample.main}
EXIT = {"error": 2, "warning": 0, "works": 0, "partial": 1, "diverged": 1, "signal": 128 + signal.SIGTERM}

MNI4 = np.diag([4.0, 4.0, 4.0, 1.0])
MNI4[:3, 3] = [-40, -52, -36]          # a 4 mm RAS grid around the MNI brain


def save(path, data, affine=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else np.asarray(affine, float)), str(path))
    return path


def scan(path, shape=(24, 20, 16), voxel=1.0, seed=0) -> Path:
    """A scan-like volume: a bright head-sized blob in noise, on a ``voxel`` mm grid."""
    data = np.random.default_rng(seed).normal(100, 10, shape).astype(np.float32)
    data[tuple(slice(n // 4, 3 * n // 4) for n in shape)] += 80
    return save(path, data, np.diag([voxel, voxel, voxel, 1.0]))


def tissue_map(path, shape=(20, 24, 18), affine=MNI4) -> Path:
    return save(path, phantom_labels(shape)[0, 0].numpy(), affine)


def lesion(path, shift=0, shape=(20, 24, 18)) -> Path:
    m = np.zeros(shape, np.uint8)
    m[8:11, 9 + shift:12 + shift, 8:11] = 1
    return save(path, m, MNI4)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny 2-class model (trained at 4 mm, 16^3 window): a good checkpoint, one with NaN weights and one with a
    flipped byte inside a weight (it would load silently without a checksum)."""
    folder = tmp_path_factory.mktemp("ckpt")
    kwargs = {"out_channels": 2, "channels": (4, 8), "dropout": 0.0}
    config = {"generator": {"crop": [16, 16, 16], "voxel_size": 4.0}}
    torch.manual_seed(0)
    model = build_unet(**kwargs).eval()
    good = save_model_checkpoint(folder / "good.pt", model, kwargs, config)
    weight = next(p for p in model.parameters() if p.ndim > 1)
    with torch.no_grad():
        weight.fill_(0.123)
        flipped = save_model_checkpoint(folder / "flipped.pt", model, kwargs, config)
        raw = bytearray(flipped.read_bytes())
        at = raw.find(np.float32(0.123).tobytes() * 4)
        raw[at + 1] ^= 0x40                    # one byte of one weight: still a finite float
        flipped.write_bytes(bytes(raw))
        weight.fill_(float("nan"))
        nan = save_model_checkpoint(folder / "nan.pt", model, kwargs, config)
    good_model = build_unet(**kwargs).eval()
    fine_voxels = save_model_checkpoint(folder / "fine_voxels.pt", good_model, kwargs,
                                        {"generator": {"crop": [16, 16, 16], "voxel_size": 0.01}})
    stride_crop = save_model_checkpoint(folder / "stride_crop.pt", good_model, kwargs,     # stride 2: a 2^3 window
                                        {"generator": {"crop": [2, 2, 2], "voxel_size": 4.0}})
    return {"good": good, "nan": nan, "flipped": flipped, "fine_voxels": fine_voxels, "stride_crop": stride_crop}


def read_only(monkeypatch, path):
    """``path`` reads as not writable (chmod does not stop root, which runs CI containers)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == Path(path) and mode & os.W_OK
                        else real(p, mode, *a, **k))


def train_config(tmp, name="run", **changes) -> Path:
    cfg = tiny(tmp / name, steps=2)
    for key, value in changes.items():
        obj = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, leaf, value)
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def store_with(tmp, edit) -> Path:
    """A packed store of two lesion masks whose index.json ``edit(index)`` has damaged (returns the new JSON)."""
    for i in range(2):
        lesion(tmp / "les" / f"m{i}.nii.gz", i)
    assert data_main(["pack", "--no-progress", "--lesions", str(tmp / "les"), "--out", str(tmp / "store")]) == 0
    index = json.loads((tmp / "store" / "index.json").read_text())
    (tmp / "store" / "index.json").write_text(json.dumps(edit(index)))
    return tmp / "store"


def _drop_affine(index):
    next(iter(index["sections"]["lesions"].values())).pop("affine")
    return index


@dataclass
class Case:
    entry: str
    build: object        # (tmp, checkpoints, monkeypatch) -> (argv, names the answer must contain)
    expect: str


def _file(tmp, name="file.txt") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_text("not a folder")
    return tmp / name


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ---- predict -------------------------------------------------------------------------------------------------------
def _predict(make_scan, ckpt="good", out=lambda t: t / "out", prepare=None, extra=(), names=None):
    def build(t, ck, mp):
        if prepare is not None:
            prepare(t, mp)
        path = make_scan(t)
        argv = ["--checkpoint", str(ck[ckpt]), "--out", str(out(t)), *extra, str(path)]
        return argv, [path.name] if names is None else names
    return build


def _good_scan(t):
    return scan(t / "s.nii.gz")


def _nan_voxels(t):
    data = nib.load(scan(t / "s.nii.gz")).get_fdata().astype(np.float32)
    data[::3, ::3, ::3] = np.nan
    return save(t / "holes.nii.gz", data)


def _speck(t):          # 8 bright voxels in a 42^3 view: 0.01 % foreground
    return save(t / "speck.nii.gz", np.pad(np.ones((2, 2, 2), np.float32), ((10, 30),) * 3))


def _read_only_out(t, mp):
    (t / "ro").mkdir()
    read_only(mp, t / "ro")


# ---- evaluate ------------------------------------------------------------------------------------------------------
def _evaluate(pred_value=1, extra=(), out=lambda t: t / "res" / "scores.csv", prepare=None, names=()):
    def build(t, ck, mp):
        if prepare is not None:
            prepare(t, mp)
        truth = np.zeros((10, 10, 10), np.uint8)
        truth[3:6, 3:6, 3:6] = 1
        for case in ("a", "b"):
            save(t / "truth" / f"{case}.nii.gz", truth)
            save(t / "pred" / f"{case}.nii.gz", truth * pred_value)
        argv = ["--pred", str(t / "pred"), "--truth", str(t / "truth"), "--out", str(out(t)), *extra]
        return argv, list(names)
    return build


def _folder(t):
    (t / "res").mkdir()
    return t / "res"


# ---- check and pack ------------------------------------------------------------------------------------------------
def _check_map(make_map, extra=()):
    def build(t, ck, mp):
        path = make_map(t / "maps" / "m.nii.gz")
        return ["--tissue-maps", str(t / "maps"), *extra], [path.name]
    return build


def _check(argv_of, names=()):
    def build(t, ck, mp):
        return argv_of(t), list(names)
    return build


def _constant_real(t):
    save(t / "r" / "c_T1w.nii.gz", np.zeros((20, 24, 18), np.float32), MNI4)
    lesion(t / "r" / "c_mask.nii.gz")
    return ["--real", str(t / "r")]


def _pack(out, prepare=None, maps=None, names=()):
    def build(t, ck, mp):
        if prepare is not None:
            prepare(t, mp)
        data = (["--tissue-maps", str(maps(t).parent)] if maps
                else ["--lesions", str(lesion(t / "l" / "m.nii.gz").parent)])
        return data + ["--out", str(out(t))], list(names)
    return build


# ---- train ---------------------------------------------------------------------------------------------------------
def _train(prepare=None, names=(), **changes):
    def build(t, ck, mp):
        if prepare is not None:
            prepare(t, mp)
        return ["--config", str(train_config(t, "run", **{k: v(t) if callable(v) else v
                                                          for k, v in changes.items()}))], list(names)
    return build


def _finished_run(t, mp):
    (t / "run").mkdir()
    (t / "run" / "last.pt").write_bytes(b"a finished run's checkpoint")


def _constant_maps(t):
    save(t / "maps" / "m.nii.gz", np.ones((20, 24, 18), np.uint8), MNI4)
    return str(t / "maps")


def _trained_run(t, steps=2):
    """A finished tiny run in ``t/run`` (last.pt at step ``steps``, prev.pt at ``steps - 1``) and its config."""
    import synthgen.train.loop as loop
    real = loop.training_lesions
    loop.training_lesions = lambda *a, **k: (BlobLesions(), BlobLesions())
    try:
        config = train_config(t, steps=steps, ckpt_every=1)
        assert run.main(["--no-progress", "--config", str(config)]) == 0
    finally:
        loop.training_lesions = real
    return config


def _rewrite_last(t, edit, keep_prev=False):
    """Replace ``t/run/last.pt`` by ``edit(checkpoint)`` with a valid checksum (a foreign or inconsistent file, not a
    damaged one); prev.pt is removed unless ``keep_prev``."""
    from synthgen.segment.model import with_checksum
    last = t / "run" / "last.pt"
    torch.save(with_checksum(edit(torch.load(last, weights_only=True))), last)
    if not keep_prev:
        (t / "run" / "prev.pt").unlink()


def _at_step(step):
    def edit(ckpt):
        ckpt["step"] = step
        ckpt["scheduler"]["last_epoch"] = step
        return ckpt
    return edit


def _foreign_net(**build):
    """A checkpoint whose network is another UNet (``build`` changes its build_unet arguments)."""
    def edit(ckpt):
        kwargs = {**ckpt["config"]["model"], **build}
        ckpt["model"] = build_unet(**kwargs).state_dict()
        ckpt["config"]["model"] = kwargs
        return ckpt
    return edit


def _resume(edit, keep_prev=False, names=()):
    def build(t, ck, mp):
        config = _trained_run(t)
        _rewrite_last(t, edit, keep_prev)
        mp.setattr("synthgen.train.loop.training_lesions", lambda *a, **k: (BlobLesions(), BlobLesions()))
        return ["--config", str(config), "--out", str(t / "run"), "--resume"], ["last.pt", *names]
    return build


def _store_labels_99(t):
    """A store of one label map whose packed array was rewritten with label 99 (no Gaussian for it)."""
    tissue_map(t / "maps" / "m.nii.gz")
    assert data_main(["pack", "--quiet", "--tissue-maps", str(t / "maps"), "--out", str(t / "store")]) == 0
    npy = t / "store" / "tissue_maps" / "m.npy"
    labels = np.load(npy)
    labels[labels == 2] = 99
    np.save(npy, labels)
    return t / "store"


def _full_mask(t, values=None):
    save(t / "l" / "m.nii.gz", np.ones((20, 24, 18), np.uint8) if values is None else values, MNI4)
    return ["--lesions", str(t / "l")]


COARSE = np.diag([50.0, 50.0, 50.0, 1.0])
SHAPE = (24, 20, 16)

CASES = {
    # predict: degenerate scans are refused before any work, naming the file and the threshold
    "predict/all-zero scan": Case("predict", _predict(lambda t: save(t / "zero.nii.gz", np.zeros(SHAPE, np.float32))),
                                  "error"),
    "predict/constant scan": Case("predict", _predict(lambda t: save(t / "c.nii.gz", np.full(SHAPE, 7.0, np.float32))),
                                  "error"),
    "predict/5x5x5 scan": Case("predict", _predict(lambda t: scan(t / "tiny.nii.gz", (5, 5, 5))), "error"),
    "predict/50 mm voxels": Case("predict", _predict(lambda t: scan(t / "coarse.nii.gz", voxel=50.0)), "error"),
    "predict/NaN voxels (set to 0)": Case("predict", _predict(_nan_voxels), "warning"),
    "predict/a speck in an empty view": Case("predict", _predict(_speck), "warning"),
    "predict/NaN weights": Case("predict", _predict(_good_scan, "nan", names=["nan.pt", "not finite"]), "error"),
    "predict/one flipped byte in the checkpoint": Case("predict", _predict(_good_scan, "flipped",
                                                                           names=["flipped.pt", "corrupt"]), "error"),
    "predict/--device cuda without CUDA": Case("predict", _predict(_good_scan, extra=["--device", "cuda"],
                                                                   prepare=lambda t, mp: _no_cuda(mp),
                                                                   names=["device", "cuda"]), "error"),
    "predict/--out is a file": Case("predict", _predict(_good_scan, out=_file, names=["file.txt"]), "error"),
    "predict/--out under a file": Case("predict", _predict(_good_scan, out=lambda t: _file(t) / "preds",
                                                           names=["file.txt"]), "error"),
    "predict/--out read-only": Case("predict", _predict(_good_scan, out=lambda t: t / "ro", prepare=_read_only_out,
                                                        names=["ro", "not writable"]), "error"),
    "predict/a folder where an output file goes": Case("predict", _predict(
        _good_scan, prepare=lambda t, mp: (t / "out" / "s_lesion.nii.gz").mkdir(parents=True),
        names=["s_lesion.nii.gz"]), "error"),
    "predict/4D scan with one volume": Case("predict", _predict(lambda t: save(t / "s4.nii.gz", nib.load(
        _good_scan(t)).get_fdata()[..., None].astype(np.float32))), "works"),
    "predict/.NII.GZ scan": Case("predict", _predict(lambda t: scan(t / "UPPER.NII.GZ")), "works"),
    "predict/checkpoint with 0.01 mm training voxels": Case("predict", _predict(
        _good_scan, "fine_voxels", names=["fine_voxels.pt", "voxel size"]), "error"),
    "predict/checkpoint whose crop is one network stride": Case("predict", _predict(
        _good_scan, "stride_crop", names=["stride_crop.pt", "crop"]), "error"),
    "predict/--window of one network stride": Case("predict", _predict(_good_scan, extra=["--window", "2"],
                                                                       names=["--window", "at least 4"]), "error"),
    "predict/good scan": Case("predict", _predict(_good_scan), "works"),

    # evaluate: a bad --out fails before scoring; a label that selects nothing is not silent
    "evaluate/--label 9 in no prediction": Case("evaluate", _evaluate(3, ["--label", "9"], names=["--label 9"]),
                                                "warning"),
    "evaluate/--label 9 of binary predictions": Case("evaluate", _evaluate(1, ["--label", "9"],
                                                                           names=["a.nii.gz", "b.nii.gz"]), "partial"),
    "evaluate/--label abc": Case("evaluate", _evaluate(extra=["--label", "abc"], names=["--label", "abc"]), "error"),
    "evaluate/--label 0": Case("evaluate", _evaluate(extra=["--label", "0"], names=["--label", "background"]),
                               "error"),
    "evaluate/--out is a folder": Case("evaluate", _evaluate(out=_folder, names=["res"]), "error"),
    "evaluate/--out under a file": Case("evaluate", _evaluate(out=lambda t: _file(t) / "s.csv", names=["file.txt"]),
                                        "error"),
    "evaluate/--out in a read-only folder": Case("evaluate", _evaluate(out=lambda t: t / "ro" / "s.csv",
                                                                       prepare=_read_only_out, names=["ro"]), "error"),
    "evaluate/no such folder": Case("evaluate", _check(lambda t: ["--pred", str(t / "nope"), "--truth", str(t),
                                                                  "--out", str(t / "s.csv")], ["nope"]), "error"),
    "evaluate/good": Case("evaluate", _evaluate(), "works"),

    # check: the rules training reads with (tests/test_data_training.py: check == train)
    "check/constant map (all GM)": Case("check", _check_map(lambda p: save(p, np.ones((20, 24, 18), np.uint8), MNI4)),
                                        "error"),
    "check/5x5x5 map": Case("check", _check_map(lambda p: tissue_map(p, (5, 5, 5))), "error"),
    "check/50 mm voxels": Case("check", _check_map(lambda p: tissue_map(p, affine=COARSE)), "error"),
    "check/--voxel-size 0.1 (500 M voxels)": Case("check", _check_map(tissue_map, ["--voxel-size", "0.1"]), "error"),
    "check/4D label map with one volume": Case("check", _check_map(lambda p: save(p, phantom_labels(
        (20, 24, 18))[0, 0].numpy()[..., None], MNI4)), "works"),
    "check/label outside the mapping": Case("check", _check_map(lambda p: save(p, np.where(
        phantom_labels((20, 24, 18))[0, 0].numpy() == 1, 3, 999).astype(np.int16), MNI4),
        ["--label-map", "freesurfer"]), "error"),
    "check/constant real scan": Case("check", _check(_constant_real, ["c_T1w.nii.gz", "constant"]), "error"),
    "check/.NII.GZ lesion masks": Case("check", _check(lambda t: ["--lesions", str(lesion(
        t / "l" / "A_LESION.NII.GZ").parent), "--lesion-pattern", "*_lesion.nii.gz"]), "works"),
    "check/store index without sections": Case("check", _check(lambda t: ["--store", str(store_with(
        t, lambda ix: {"version": 1}))], ["index.json", "sections"]), "error"),
    "check/store entry without an affine": Case("check", _check(lambda t: ["--store", str(store_with(
        t, _drop_affine))], ["index.json", "affine"]), "error"),
    "check/mask of ones (the whole volume)": Case("check", _check(_full_mask, ["m.nii.gz", "every voxel"]), "error"),
    "check/--mask-threshold below every value": Case("check", _check(lambda t: _full_mask(t, np.full(
        (20, 24, 18), 0.5, np.float32)) + ["--mask-threshold", "0.2"], ["m.nii.gz", "every voxel", "0.2"]), "error"),
    "check/store label map with a label the generator refuses": Case("check", _check(lambda t: [
        "--store", str(_store_labels_99(t))], ["tissue_maps/m", "labels must be in [0, 14]"]), "error"),
    "check/store index not a JSON object": Case("check", _check(lambda t: ["--store", str(store_with(
        t, lambda ix: [ix]))], ["index.json", "JSON object"]), "error"),

    # pack: the output is checked before any file is read
    "pack/--out is a file": Case("pack", _pack(_file, names=["file.txt"]), "error"),
    "pack/--out under a file": Case("pack", _pack(lambda t: _file(t) / "s", names=["file.txt"]), "error"),
    "pack/--out read-only": Case("pack", _pack(lambda t: t / "ro", _read_only_out, names=["ro"]), "error"),
    "pack/index.json is a folder": Case("pack", _pack(lambda t: t / "s", lambda t, mp: (
        t / "s" / "index.json").mkdir(parents=True), names=["index.json"]), "error"),
    "pack/50 mm-voxel map (was: out of memory)": Case("pack", _pack(lambda t: t / "s", maps=lambda t: tissue_map(
        t / "m" / "m.nii.gz", (40, 40, 40), COARSE), names=["m.nii.gz", "coarser than 10 mm"]), "error"),
    "pack/corrupt store index": Case("pack", _pack(lambda t: store_with(t, lambda ix: "x"), names=["index.json"]),
                                     "error"),

    # train (tiny CPU configs): refused before the first step, or stopped with the reason
    "train/a finished run without --resume": Case("train", _train(_finished_run, ["run", "--resume"]), "error"),
    "train/--out is a file": Case("train", _train(lambda t, mp: _file(t, "run"), ["run"]), "error"),
    "train/--device cuda without CUDA": Case("train", _train(lambda t, mp: _no_cuda(mp), ["device"], device="cuda"),
                                             "error"),
    "train/--voxel-size 0.1 of the bundled map": Case("train", _train(names=["bundled", "0.1 mm"],
                                                                      **{"generator.voxel_size": 0.1}), "error"),
    "train/--crop 1000": Case("train", _train(names=["crop"], **{"generator.crop": (1000, 1000, 1000)}), "error"),
    "train/constant tissue map": Case("train", _train(names=["m.nii.gz", "constant"],
                                                      **{"data.tissue_maps": _constant_maps}), "error"),
    "train/NaN optim.poly_power (was: diverged, blaming --lr)": Case("train", _train(
        names=["optim.poly_power", "finite"], **{"optim.poly_power": float("nan")}), "error"),
    "train/NaN optim.weight_decay": Case("train", _train(names=["optim.weight_decay"],
                                                         **{"optim.weight_decay": float("nan")}), "error"),
    "train/Inf in optim.betas": Case("train", _train(names=["optim.betas[1]"],
                                                     **{"optim.betas": (0.9, float("inf"))}), "error"),
    "train/NaN data.lesion.procedural field": Case("train", _train(
        names=["data.lesion.procedural.roughness"], **{"data.lesion.procedural.roughness": float("nan")}),
        "error"),
    "train/elastic.control_points 8.5": Case("train", _train(names=["generator.elastic.control_points", "int"],
                                                             **{"generator.elastic.control_points": 8.5}), "error"),
    "train/--crop of one network stride": Case("train", _train(names=["generator.crop", "at least 8"],
                                                               **{"generator.crop": (4, 4, 4)}), "error"),
    "train/store label map with a label the generator refuses": Case("train", _train(
        names=["m (packed)", "labels must be in"], **{"data.store": lambda t: str(_store_labels_99(t))}), "error"),
    "train/every lesion mask too large": Case("train", _train(
        names=["m.nii.gz", "max_volume_ml"], **{"data.lesions": lambda t: str(lesion(t / "l" / "m.nii.gz").parent),
                                                 "data.lesion.max_volume_ml": 1e-3}), "error"),
    "train/--resume from a last.pt past the schedule": Case("train", _resume(_at_step(1000), names=[
        "step 1000", "schedule 0..2"]), "error"),
    "train/--resume from a last.pt at step -3": Case("train", _resume(_at_step(-3), names=["step -3"]), "error"),
    "train/--resume from a last.pt whose scheduler is at the end": Case("train", _resume(lambda c: {
        **c, "step": 1}, names=["scheduler is at step 2"]), "error"),
    "train/--resume from a last.pt of another architecture (prev.pt intact)": Case("train", _resume(
        _foreign_net(channels=[4, 8, 16]), keep_prev=True, names=["architecture", "prev.pt (step 1)"]), "warning"),
    "train/--resume from a last.pt with another class count": Case("train", _resume(
        _foreign_net(out_channels=2), names=["2 classes, this run 6"]), "error"),
    "train/--lr 1e6 diverges": Case("train", _train(names=["diverged", "--lr"], steps=12, **{"optim.lr": 1e6}),
                                    "diverged"),

    # preview and sample
    "preview/--crop 2": Case("preview", _check(lambda t: ["--crop", "2", "2", "2", "-n", "1"], ["crop"]), "error"),
    "preview/--out is a folder": Case("preview", _check(lambda t: ["--crop", "16", "16", "16", "-n", "1", "--out",
                                                               str(t)], ["montage.png"]), "error"),
    "preview/--lesions folder that does not exist": Case("preview", _check(lambda t: [
        "--crop", "16", "16", "16", "-n", "1", "--lesions", str(t / "nope")], ["nope"]), "error"),
    "sample/--out is a file": Case("sample", _check(lambda t: ["--out", str(_file(t)), "-n", "1", "--crop", "16", "16",
                                                               "16"], ["file.txt"]), "error"),
    "sample/4D label map with one volume": Case("sample", _check(lambda t: [
        "--out", str(t / "o"), "-n", "1", "--crop", "8", "8", "8", "--lesions", "none", "--tissue-map",
        str(save(t / "m.nii.gz", phantom_labels((20, 24, 18))[0, 0].numpy()[..., None], MNI4))]), "works"),
}


def answer(entry, argv, capsys) -> tuple[int, str]:
    """Exit status and everything printed by one entry point."""
    try:
        code = MAINS[entry](argv)
    except SystemExit as err:            # argparse: usage errors
        code = err.code
    return code, "\n".join(capsys.readouterr())


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gets_a_clear_answer(name, tmp_path, checkpoints, monkeypatch, capsys):
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    argv, names = case.build(tmp_path, checkpoints, monkeypatch)
    code, text = answer(case.entry, argv, capsys)
    assert "Traceback" not in text, text
    assert code == EXIT[case.expect], (code, text)
    kind = {"error": "error:", "partial": "error:", "diverged": "error:", "warning": "warning:"}.get(case.expect)
    if kind is None:
        assert "error:" not in text, text
        return
    lines = [line for line in text.splitlines() if kind in line]
    assert lines, text
    for n in names:
        assert any(n in line for line in lines), (n, text)


# ---- the cases that need more than an exit status -------------------------------------------------------------------

@pytest.mark.parametrize("corruption", ["header", "data"])
def test_batch_predict_with_one_corrupt_scan_writes_the_good_two_and_names_the_bad_one(tmp_path, checkpoints, capsys,
                                                                                     corruption):
    good = [scan(tmp_path / f"good{i}.nii.gz", seed=i) for i in range(2)]
    bad = tmp_path / "bad.nii.gz"
    raw = scan(bad, seed=2).read_bytes()
    # an unreadable header is found before any work, truncated data only when the scan is read
    bad.write_bytes(b"\x1f\x8bnot a nifti" if corruption == "header" else raw[: len(raw) // 2])
    code, text = answer("predict", ["--checkpoint", str(checkpoints["good"]), "--out", str(tmp_path / "o"),
                                    str(good[0]), str(bad), str(good[1])], capsys)
    assert code == 1 and "Traceback" not in text
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["good0_labels.nii.gz", "good0_lesion.nii.gz",
                                                                  "good1_labels.nii.gz", "good1_lesion.nii.gz"]
    summary = [line for line in text.splitlines() if "cases done; failed" in line]
    assert summary == [f"2 of 3 cases done; failed: {bad}"], text


def _held_out_names(n):
    from synthgen.lesions import holdout_bucket
    return [name for name in (f"case{i}_lesion.nii.gz" for i in range(200)) if holdout_bucket(name) < 0.2][:n]


def test_a_3_mask_lesion_folder_trains_for_2_steps(tmp_path, capsys):
    """All three masks fall in the 20 % hold-out (names chosen by their hash), one is named .NII.GZ: training
    takes every mask with a warning, where it once stopped with "no lesion mask left ... {'split': 3}"."""
    names = _held_out_names(3)
    names[1] = names[1].replace(".nii.gz", ".NII.GZ")         # the hold-out hashes the name: still held out
    from synthgen.lesions import holdout_bucket
    assert len(names) == 3 and all(holdout_bucket(n) < 0.2 for n in names)
    for i, name in enumerate(names):
        lesion(tmp_path / "masks" / name, i)
    config = train_config(tmp_path, **{"data.lesions": str(tmp_path / "masks"), "data.lesion.mask_pattern":
                                       "*_lesion.nii.gz", "val_every": 2})
    with pytest.warns(UserWarning, match="all 3 lesion masks fall in the hold-out"):
        code, text = answer("train", ["--config", str(config)], capsys)
    assert code == 0 and "done: step 2" in text, text
    from synthgen.train.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2


def test_sigterm_stops_after_the_checkpoint_with_status_143_and_resumes(tmp_path, monkeypatch, capsys):
    class Terminating(BlobLesions):
        calls = 0

        def sample(self, tissue, keys, affine=None, classes=None, region=None):
            Terminating.calls += 1
            if Terminating.calls == 2:                     # while step 2 is made
                os.kill(os.getpid(), signal.SIGTERM)
            return super().sample(tissue, keys)

    import synthgen.train.loop as loop
    monkeypatch.setattr(loop, "training_lesions", lambda *a, **k: (Terminating(), BlobLesions()))
    config = train_config(tmp_path, steps=4)
    code, text = answer("train", ["--config", str(config)], capsys)
    assert code == 128 + signal.SIGTERM and "stopped by signal 15 after step 2" in text, text
    from synthgen.train.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2
    code, text = answer("train", ["--config", str(config), "--out", str(tmp_path / "run"), "--resume"], capsys)
    assert code == 0 and "done: step 4" in text, text


def _tamper(path, nan=False):
    """Change one weight of a checkpoint and save it with its old checksum (silent bit rot), or make it NaN with a
    matching checksum (what a diverged run saved before training checked its loss)."""
    from synthgen.segment.model import with_checksum
    ckpt = torch.load(path, weights_only=True)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["model"][key].view(-1)[0] = float("nan") if nan else ckpt["model"][key].view(-1)[0] + 1e-3
    torch.save(with_checksum(ckpt) if nan else ckpt, path)


@pytest.mark.parametrize("damage", ["checksum", "nan", "missing"])
def test_resume_falls_back_to_prev_pt_when_last_pt_is_damaged(tmp_path, monkeypatch, capsys, damage):
    import synthgen.train.loop as loop
    from synthgen.train.checkpoint import load_checkpoint
    monkeypatch.setattr(loop, "training_lesions", lambda *a, **k: (BlobLesions(), BlobLesions()))
    config = train_config(tmp_path, steps=3, ckpt_every=1)
    code, _ = answer("train", ["--config", str(config)], capsys)
    run_dir = tmp_path / "run"
    assert code == 0 and load_checkpoint(run_dir / "prev.pt")["step"] == 2
    assert load_checkpoint(run_dir / "last.pt")["step"] == 3
    if damage == "missing":
        (run_dir / "last.pt").unlink()
    else:
        _tamper(run_dir / "last.pt", nan=damage == "nan")
        with pytest.raises(ValueError, match="corrupt: its checksum" if damage == "checksum" else "not finite"):
            load_checkpoint(run_dir / "last.pt")
    code, text = answer("train", ["--config", str(config), "--out", str(run_dir), "--resume"], capsys)
    assert code == 0 and "resuming from" in text and "prev.pt (step 2)" in text, text
    assert load_checkpoint(run_dir / "last.pt")["step"] == 3            # step 3 made again from step 2
    if damage != "missing":                                             # both damaged: nothing to resume from
        _tamper(run_dir / "last.pt", nan=True)
        _tamper(run_dir / "prev.pt")
        code, text = answer("train", ["--config", str(config), "--out", str(run_dir), "--resume"], capsys)
        assert code == 2 and "no checkpoint to resume from" in text and "last.pt" in text and "prev.pt" in text


def test_stale_temporaries_of_killed_writers_are_removed_on_the_next_start(tmp_path, checkpoints, capsys):
    import subprocess
    import sys

    from synthgen import io
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    tag = io._temporary_tag().rsplit("-", 1)[1]
    out = tmp_path / "o"
    out.mkdir()
    stale = out / f".s_lesion.nii.gz.tmp-{dead}-{tag}-abcd1234.nii.gz"
    live = out / f".s_labels.nii.gz.tmp-{os.getpid()}-{tag}-abcd1234.nii.gz"      # this process: a live writer
    mine = out / ".notes.tmp-1-zzzz"                                               # not ours: never touched
    for p in (stale, live, mine):
        p.write_bytes(b"half written")
    code, _ = answer("predict", ["--checkpoint", str(checkpoints["good"]), "--out", str(out),
                                 str(scan(tmp_path / "s.nii.gz"))], capsys)
    assert code == 0 and not stale.exists() and live.exists() and mine.exists()


def test_debug_shows_the_traceback(tmp_path, checkpoints, monkeypatch, capsys):
    argv = ["--checkpoint", str(checkpoints["good"]), "--out", str(tmp_path / "o"),
            str(save(tmp_path / "z.nii.gz", np.zeros((24, 20, 16), np.float32)))]
    assert answer("predict", argv, capsys)[0] == 2
    with pytest.raises(ValueError, match="z.nii.gz: scan is constant"):
        MAINS["predict"](argv + ["--debug"])
    monkeypatch.setenv("SYNTHGEN_DEBUG", "1")
    with pytest.raises(ValueError, match="z.nii.gz: scan is constant"):
        MAINS["predict"](argv)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """--lr 1e6 with a checkpoint every step: training stops at the first non-finite loss, and the checkpoint left
    behind is the last finite one (it loads, checksum and weights verified), never a NaN one."""
    import re

    import synthgen.train.loop as loop
    from synthgen.train.checkpoint import load_checkpoint
    monkeypatch.setattr(loop, "training_lesions", lambda *a, **k: (BlobLesions(), BlobLesions()))
    config = train_config(tmp_path, steps=12, ckpt_every=1, **{"optim.lr": 1e6})
    code, text = answer("train", ["--config", str(config)], capsys)
    assert code == 1 and "training diverged: the " in text, text
    found = re.search(r"stopped after step (\d+).*last.pt \(step (\d+)\) is the last good checkpoint, kept", text)
    assert found, text
    stopped, kept = map(int, found.groups())
    assert 0 < kept < stopped and load_checkpoint(tmp_path / "run" / "last.pt")["step"] == kept


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_an_all_background_tissue_tensor_warns_once(kind):
    """The Python API: a map of background only made noise images with an empty target, silently."""
    import warnings

    import synthgen
    from synthgen.config import GeneratorConfig
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=(8, 8, 8)))
    tissue = (torch.zeros(1, 1, 12, 12, 12, dtype=torch.uint8) if kind == "labels"
              else torch.cat([torch.ones(1, 1, 12, 12, 12), torch.zeros(1, 4, 12, 12, 12)], 1))
    with pytest.warns(UserWarning, match="`tissue` holds background only"):
        _, target = gen(tissue)
    assert int(target.max()) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # a map with a brain: no warning
        gen(phantom_labels((12, 12, 12)))


def test_warning_and_error_lines_of_predict_start_their_own_line_above_the_progress_bar(tmp_path, checkpoints,
                                                                                          capsys):
    """A case's warning (NaN voxels) and error (truncated data) are printed while the cases' bar runs on stderr: they
    start after the bar is cleared ("\\r"), never glued to its text."""
    good = scan(tmp_path / "good.nii.gz")
    raw = scan(tmp_path / "cut.nii.gz", seed=1).read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])           # found only when its data are read
    code = predict.main(["--no-tta", "--device", "cpu", "--checkpoint", str(checkpoints["good"]), "--out",
                         str(tmp_path / "o"), str(_nan_voxels(tmp_path)), str(tmp_path / "cut.nii.gz"), str(good)])
    err = capsys.readouterr().err
    assert code == 1 and "segmenting" in err, err
    said = [line.rsplit("\r", 1)[-1] for line in err.split("\n") if "warning:" in line or "error:" in line]
    assert any("holes.nii.gz" in line for line in said) and any("cut" in line for line in said), err
    assert all(line.startswith(("warning: ", "error: ")) for line in said), said
