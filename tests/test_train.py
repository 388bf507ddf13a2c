"""Training loop: exact resume, signals, outputs, config and CLI errors (tiny model, 24^3 crops, CPU)."""
import csv
import json
import math
import os
import signal

import pytest
import torch

import synthgen

from synthgen.train import checkpoint as ckpt_mod
from synthgen.train import run
from synthgen.train.checkpoint import load_checkpoint
from synthgen.train.config import TrainConfig, paper_preset, preset, quick_preset
from synthgen.data.sources import RealScans, TensorTissueMaps
from synthgen.data.training import TrainingBatches, training_lesions
from synthgen.train.loop import amp_dtype, resolve_device, train
from synthgen.train.losses import DiceCE
from synthgen.segment import load_checkpoint_model


def tiny(out, steps=4, **kw) -> TrainConfig:
    cfg = quick_preset()
    cfg.out = str(out)
    cfg.steps = steps
    cfg.log_every = 1
    cfg.val_every = kw.pop("val_every", 0)
    cfg.val_samples = 2
    cfg.ckpt_every = kw.pop("ckpt_every", 0)
    cfg.model.channels = (4, 8, 8)
    cfg.model.dropout = 0.2          # dropout draws from the torch RNG: resume must restore it
    cfg.generator.voxel_size = 4.0
    cfg.generator.crop = (24, 24, 24)
    cfg.generator.target = "tissue"
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


class BlobLesions:
    """A fast stand-in lesion source (a ball in the map, from the key) so these tests do not time the real one."""

    def __init__(self, radius=(2, 4)):
        self.radius = radius

    def sample(self, tissue, keys, affine=None, classes=None, region=None):
        out = torch.zeros(tissue.shape[0], 1, *tissue.shape[2:])
        grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in tissue.shape[2:]],
                                          indexing="ij"), -1)
        for b, key in enumerate(keys):
            u = torch.rand(4, generator=torch.Generator().manual_seed(int(key)))
            centre = torch.tensor(tissue.shape[2:]) * (0.3 + 0.4 * u[:3])
            r = self.radius[0] + (self.radius[1] - self.radius[0]) * u[3]
            out[b, 0] = (((grid - centre) ** 2).sum(-1) < r * r).float() * (tissue[b, 0] > 0)
        return out, out


def lesions():
    return BlobLesions(radius=(2, 4)), BlobLesions(radius=(2, 4))


def test_resume_is_bit_exact(tmp_path):
    """Stopped and resumed == uninterrupted; the interrupted run also makes its batches ahead on a thread."""
    full = train(tiny(tmp_path / "full", generate_ahead="off"), lesions=lesions(), progress=False)
    part = train(tiny(tmp_path / "part", generate_ahead="on"), stop_at=2, lesions=lesions(), progress=False)
    assert part["step"] == 2 and load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 2
    rest = train(tiny(tmp_path / "part", generate_ahead="on"), resume=True, lesions=lesions(), progress=False)
    assert rest["step"] == full["step"] == 4
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    # the losses logged after the resume are those of the uninterrupted run
    rows = {r["step"]: r["loss"] for r in csv.DictReader(open(tmp_path / "full" / "metrics.csv")) if r["loss"]}
    rows_b = {r["step"]: r["loss"] for r in csv.DictReader(open(tmp_path / "part" / "metrics.csv")) if r["loss"]}
    assert rows == rows_b and len(rows) == 4


def test_outputs_and_checkpoint_format(tmp_path):
    cfg = tiny(tmp_path, steps=2, val_every=2, ckpt_every=1)
    umask = os.umask(0o022)
    try:
        out = train(cfg, lesions=lesions(), progress=False)
    finally:
        os.umask(umask)
    assert {"val_dice_lesion", "val_lesion_dice", "loss", "samples_s", "synth_ms"} <= set(out)
    for name in ("config.json", "last.pt", "metrics.csv", "curves.png", "val_samples.png"):
        assert (tmp_path / name).is_file(), name
        # readable by others on a shared server: the umask's mode, as open() gives (mkstemp alone gives 0600)
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]   # no temporary files left
    saved = json.loads((tmp_path / "config.json").read_text())
    assert json.loads(json.dumps(TrainConfig.from_dict(saved).to_dict())) == json.loads(json.dumps(cfg.to_dict()))
    model, config = load_checkpoint_model(tmp_path / "last.pt")     # the inference loader reads it
    assert config["model"]["out_channels"] == 6 and config["steps"] == 2
    x = torch.zeros(1, 1, 24, 24, 24)
    assert model(x).shape == (1, 6, 24, 24, 24)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["step"] for r in rows if r["val_dice_gm"]] == ["0", "2"]     # untrained, then at the end


def test_sigint_finishes_step_saves_and_stops(tmp_path):
    class Interrupting(BlobLesions):
        calls = 0

        def sample(self, tissue, keys, affine=None, classes=None, region=None):
            Interrupting.calls += 1
            if Interrupting.calls == 2:          # during the synthesis of the second step
                os.kill(os.getpid(), signal.SIGINT)
            return super().sample(tissue, keys)

    before = signal.getsignal(signal.SIGINT)
    out = train(tiny(tmp_path, steps=10), lesions=(Interrupting(), None), progress=False)
    assert out["step"] == 2
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before


def test_training_batches_streams_and_real_alternation(tmp_path):
    tissue = torch.zeros(1, 1, 8, 8, 8, dtype=torch.uint8)
    calls = []

    class Gen:
        config = synthgen.GeneratorConfig(crop=(8, 8, 8))
        lesions = None

        def __call__(self, t, seed, index, batch_size, affine=None):
            calls.append(("syn", seed, index))

        def mark_checked(self, t):      # TrainingBatches checks maps where it reads them (SynthGenerator's API)
            pass

    class Augment:
        def __call__(self, scan, mask, seed, index):
            calls.append(("real", seed, index))
            return scan.float(), mask

    maps = TensorTissueMaps([tissue], [torch.eye(4).numpy()])
    TrainingBatches(Gen(), maps, seed=3, batch_size=2, device="cpu")(5)
    assert calls == [("syn", 3, 10)]
    calls.clear()
    data = TrainingBatches(Gen(), maps, seed=3, batch_size=1, device="cpu", real=RealScans(_real_folder(tmp_path / "real")))
    data._augment = Augment()
    for step in range(4):
        data(step)
    assert calls == [("syn", 3, 0), ("real", 3, 0), ("syn", 3, 1), ("real", 3, 1)]


def _known_logits():
    """Two samples of two voxels whose softmax is (1/4, 3/4), (3/4, 1/4) / (1/2, 1/2), (1/4, 3/4), and their labels."""
    l3 = math.log(3.0)
    logits = torch.tensor([[[0.0, l3], [l3, 0.0]],            # sample 0: class-0 logits, class-1 logits
                           [[0.0, 0.0], [0.0, l3]]])          # sample 1
    logits = logits.reshape(2, 2, 1, 1, 2)
    target = torch.tensor([[1, 0], [1, 1]]).reshape(2, 1, 1, 2)
    return logits, target


@pytest.mark.parametrize("background, batch", [(True, False), (False, False), (True, True), (False, True)])
def test_dice_ce_loss_exact_value_on_a_known_input(background, batch):
    """Soft Dice (2 sum p y + s) / (sum p + sum y + s), s = 1e-5, and the voxel-mean cross-entropy, worked out by
    hand for the probabilities of _known_logits."""
    s = 1e-5
    ce = (3 * -math.log(0.75) - math.log(0.5)) / 4
    if batch:     # each class pooled over both samples
        dice = {0: (2 * 0.75 + s) / (1.75 + 1 + s), 1: (2 * 2.0 + s) / (2.25 + 3 + s)}
        dice_loss = (1 - dice[1]) if not background else ((1 - dice[0]) + (1 - dice[1])) / 2
    else:         # per sample and class, then the mean
        d = {(0, 0): (1.5 + s) / (2 + s), (0, 1): (1.5 + s) / (2 + s),
             (1, 0): (0 + s) / (0.75 + s), (1, 1): (2.5 + s) / (3.25 + s)}
        classes = (0, 1) if background else (1,)
        dice_loss = sum(1 - d[b, c] for b in (0, 1) for c in classes) / (2 * len(classes))
    logits, target = _known_logits()
    loss = DiceCE(include_background=background, batch=batch)
    assert float(loss(logits, target)) == pytest.approx(dice_loss + ce, rel=1e-6)
    assert float(DiceCE(2.0, 0.5, background, batch)(logits, target)) == pytest.approx(2 * dice_loss + 0.5 * ce,
                                                                                       rel=1e-6)
    cfg = paper_preset().optim
    cfg.dice_include_background, cfg.dice_batch = background, batch
    assert float(DiceCE.from_config(cfg)(logits, target)) == pytest.approx(dice_loss + ce, rel=1e-6)
    with pytest.raises(ValueError, match="`target` must be"):
        loss(logits, target[:, :, :, :1])


# The paper's recipe (section 2), written out independently of synthgen/train/config.py: every field of the model and
# optimiser, the schedule, crop, batch and iterations.
PAPER_RECIPE = {
    "steps": 600_000, "iters_per_epoch": 500, "batch_size": 1, "baseline": False,
    "model": {"channels": (32, 64, 128, 256, 320, 320), "strides": None, "dropout": 0.2, "num_res_units": 1},
    "optim": {"lr": 1e-4, "weight_decay": 0.01, "betas": (0.9, 0.999), "poly_power": 0.9, "grad_clip": 12.0,
              "dice_weight": 1.0, "ce_weight": 1.0, "dice_include_background": True, "dice_batch": False,
              "amp": "auto"},
    "generator": {"crop": (192, 192, 192), "voxel_size": 1.0, "target": "tissue"},
}


def test_paper_preset_pins_the_recipe(tmp_path):
    cfg = paper_preset().validate()
    d = cfg.to_dict()
    for key in ("steps", "iters_per_epoch", "batch_size", "baseline"):
        assert d[key] == PAPER_RECIPE[key], key
    assert d["model"] == PAPER_RECIPE["model"] and d["optim"] == PAPER_RECIPE["optim"]
    for key, value in PAPER_RECIPE["generator"].items():
        assert d["generator"][key] == value, key
    assert cfg.num_classes == 6 and cfg.model_kwargs()["out_channels"] == 6
    assert preset("paper").to_dict() == d
    # the optimiser and schedule the loop builds from it: AdamW at lr 1e-4, poly (1 - n/N)^0.9 per step
    cfg.out, cfg.steps, cfg.log_every, cfg.val_every, cfg.ckpt_every = str(tmp_path), 4, 1, 0, 0
    cfg.model.channels = (4, 8, 8)
    cfg.generator.crop, cfg.generator.voxel_size = (24, 24, 24), 4.0
    train(cfg, stop_at=1, lesions=lesions(), progress=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["decoupled_weight_decay"] is True and group["initial_lr"] == 1e-4      # AdamW
    assert group["weight_decay"] == 0.01 and tuple(group["betas"]) == (0.9, 0.999)
    assert group["lr"] == pytest.approx(1e-4 * (1 - 1 / 4) ** 0.9, rel=1e-9)
    assert ckpt["config"]["model"]["dropout"] == 0.2


def test_presets():
    assert quick_preset().validate().generator.voxel_size == 3.0
    with pytest.raises(ValueError, match="`preset` must be one of"):
        preset("huge")


@pytest.mark.parametrize("path, value, match", [
    ("preset", "huge", "`preset` must be one of"),
    ("steps", 0, "`steps` must be a positive int"),
    ("val_every", -1, "`val_every` must be a non-negative int"),
    ("device", "tpu", "`device` must be"),
    ("optim.lr", 0.0, "`optim.lr` must be > 0"),
    ("optim.grad_clip", 0.0, "`optim.grad_clip` must be > 0"),
    ("optim.poly_power", -1.0, "`optim.poly_power` must be >= 0"),
    ("optim.ce_weight", -1.0, "`optim.dice_weight` and `optim.ce_weight`"),
    ("optim.amp", "fp8", "`optim.amp` must be"),
    ("generator.voxel_size", 0.0, r"`voxel_size` must be in \[0.1, 16\] mm"),
    ("data.lesion.healthy_probability", 2.0, "`lesion.healthy_probability` must be"),
    ("baseline", True, "`baseline` trains on real scans only"),
    ("generator.crop", (44, 48, 48), "multiples of the network stride 8"),
    ("generate_ahead", "maybe", "`generate_ahead` must be 'auto', 'on' or 'off'"),
    ("generator.work_dtype", "bfloat16", "`work_dtype` must be 'float32' or 'float16'"),
])
def test_config_errors(path, value, match):
    cfg = quick_preset()
    run._set(cfg, path, value)
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def test_device_and_amp_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="`device` must be available"):
        resolve_device("cuda")
    assert amp_dtype(quick_preset(), torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "old card")
    cfg = quick_preset()
    assert amp_dtype(cfg, torch.device("cuda")) is None        # auto -> fp32 without bf16
    cfg.optim.amp = "bf16"
    with pytest.raises(ValueError, match="`optim.amp` must be 'auto' or 'off'.*old card"):
        amp_dtype(cfg, torch.device("cuda"))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")
    ckpt_mod.atomic_torch_save({"model": {}}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"weights.pt: not a resumable.*optimizer"):
        load_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tiny(tmp_path / "new"), resume=True, lesions=lesions(), progress=False)


def test_user_folder_problems_fail_before_training(tmp_path):
    pytest.importorskip("synthgen.data.check")
    empty = tmp_path / "maps"
    empty.mkdir()
    (empty / "broken.nii.gz").write_bytes(b"garbage")
    cfg = tiny(tmp_path / "out")
    cfg.data.tissue_maps = str(empty)
    with pytest.raises(ValueError, match="training data have problems:(.|\n)*broken.nii.gz"):
        train(cfg, lesions=lesions(), progress=False)
    assert not (tmp_path / "out" / "last.pt").exists()


def _real_folder(folder):
    import nibabel as nib
    import numpy as np
    folder.mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    for i in range(2):
        scan = rng.normal(100, 10, (28, 28, 28)).astype(np.float32)
        mask = np.zeros((28, 28, 28), np.uint8)
        mask[10:16, 10:16, 10 + i:16 + i] = 1
        scan[mask > 0] += 50
        nib.save(nib.Nifti1Image(scan, affine), str(folder / f"case{i}_T1w.nii.gz"))
        nib.save(nib.Nifti1Image(mask, affine), str(folder / f"case{i}_mask.nii.gz"))
    return folder


@pytest.mark.parametrize("baseline", [False, True])
def test_real_scans_mixed_and_baseline(tmp_path, baseline):
    real = _real_folder(tmp_path / "real")
    cfg = tiny(tmp_path / "out", steps=2, val_every=2)
    cfg.data.real = cfg.data.real_val = str(real)
    if baseline:
        cfg.baseline, cfg.generator.target = True, "lesion"
    out = train(cfg, lesions=lesions(), progress=False)
    assert out["step"] == 2 and out["loss"] == out["loss"]          # finite
    assert "real_lesion_dice" in out and ("val_lesion_dice" in out) != baseline   # no synthetic val set
    model, config = load_checkpoint_model(tmp_path / "out" / "last.pt")
    assert config["model"]["out_channels"] == (2 if baseline else 6)
    data = TrainingBatches(synthgen.SynthGenerator(cfg.generator), None, 0, 2, "cpu", real=RealScans(str(real)),
                           real_only=True)
    image, target = data(0)
    assert image.shape == (2, 1, 24, 24, 24) and set(target.unique().tolist()) <= {0, 1}


def test_lesion_vs_rest_marginalises_tissue_classes():
    from synthgen.train.loop import lesion_vs_rest
    logits = torch.randn(2, 6, 3, 3, 3)
    p = logits.softmax(1)
    q = lesion_vs_rest(logits).softmax(1)
    assert torch.allclose(q[:, 1], p[:, 5], atol=1e-6) and torch.allclose(q[:, 0], p[:, :5].sum(1), atol=1e-6)


def test_procedural_and_folder_lesion_sources(tmp_path, monkeypatch):
    import nibabel as nib
    import numpy as np
    import synthgen.lesions.masks as masks_mod
    cfg = tiny(tmp_path)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-40, -60, -40]
    train_src, val_src = training_lesions(cfg.data.lesion)
    assert train_src.bank is None and val_src.bank is None          # procedural by default
    folder = tmp_path / "lesions"
    folder.mkdir()
    for i in range(8):
        mask = np.zeros((20, 24, 20), np.uint8)
        mask[8:11, 8 + i:11 + i, 8:11] = 1
        nib.save(nib.Nifti1Image(mask, affine), str(folder / f"les{i}.nii.gz"))
    reads = []
    real_load = masks_mod.load_nifti
    monkeypatch.setattr(masks_mod, "load_nifti", lambda p, *a: (reads.append(p), real_load(p, *a))[1])
    cfg.data.lesion.holdout_fraction = 0.5
    train_src, val_src = training_lesions(cfg.data.lesion, folder=folder)
    assert len(train_src.bank) + len(val_src.bank) == 8 and len(val_src.bank) >= 1
    assert sorted(reads) == sorted(folder.glob("*.nii.gz"))          # one bank, every mask read once
    assert set(train_src.bank.names).isdisjoint(val_src.bank.names)
    assert train_src.bank.crops[0] is not None and val_src.bank.crops   # the splits share the crops


def test_small_lesion_folders_train_with_a_warning(tmp_path):
    import nibabel as nib
    import numpy as np
    from synthgen.lesions import holdout_bucket
    folder = tmp_path / "lesions"
    folder.mkdir()
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    # names chosen by their hash: one all-hold-out folder, one with no hold-out
    names = [f"m{i}.nii.gz" for i in range(40)]
    held = [n for n in names if holdout_bucket(n) < 0.2][:1]
    kept = [n for n in names if holdout_bucket(n) >= 0.2][:3]
    cfg = tiny(tmp_path).data.lesion
    for name, expect in ((held, "all 1 lesion masks fall in the hold-out"), (kept, "no lesion mask of 3")):
        for f in folder.glob("*"):
            f.unlink()
        for n in name:
            nib.save(nib.Nifti1Image(mask, np.eye(4)), str(folder / n))
        with pytest.warns(UserWarning, match=expect):
            train_src, val_src = training_lesions(cfg, folder=folder)
        assert len(train_src.bank) == len(name) and len(val_src.bank) == len(name)


def test_cli_resume_keeps_recipe(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(tiny(out).to_dict()))
    args = run.parser().parse_args(["--out", str(out), "--resume", "--val-every", "5"])
    cfg = run.resolve_config(args)
    assert cfg.val_every == 5 and cfg.model.channels == (4, 8, 8)
    args = run.parser().parse_args(["--out", str(out), "--resume", "--lr", "0.1"])
    with pytest.raises(ValueError, match=r"`--resume` must keep the saved recipe.*optim.lr"):
        run.resolve_config(args)
    with pytest.raises(SystemExit):
        run.parser().parse_args(["--crop", "1,2"])
    args = run.parser().parse_args(["--preset", "quick", "--crop", "32", "--baseline", "--real", "x"])
    cfg = run.resolve_config(args)
    assert cfg.generator.crop == (32, 32, 32) and cfg.num_classes == 2 and cfg.class_names[-1] == "lesion"


def test_real_validation_scores_lesion_vs_rest():
    from synthgen.train.validate import REAL_CLASSES, evaluate

    class Fixed(torch.nn.Module):      # predicts GM everywhere and lesion in the first half of the volume
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 6, *x.shape[2:])
            logits[:, 1] = 1.0
            logits[:, 5, :4] = 2.0
            return logits

    target = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    target[:, :4] = 5                                   # real masks know lesion (5) vs the rest (0)
    m, _ = evaluate(Fixed(), [(torch.zeros(1, 1, 8, 8, 8), target)], ("bg", "gm", "wm", "pv", "csf", "lesion"),
                    prefix="real_", lesion_only=True)
    assert set(m) == {f"real_dice_{c}" for c in REAL_CLASSES} | {"real_lesion_dice"}
    assert m["real_dice_rest"] == 1.0 and m["real_dice_lesion"] == 1.0 and m["real_lesion_dice"] == 1.0


def test_several_contrasts_train_and_the_network_takes_them(tmp_path):
    cfg = tiny(tmp_path / "run", steps=2, val_every=2)
    cfg.generator.channels = 2
    out = train(cfg, lesions=lesions(), progress=False)
    assert out["step"] == 2 and out["loss"] == out["loss"]
    model, saved = load_checkpoint_model(tmp_path / "run" / "last.pt")
    assert saved["model"]["in_channels"] == 2
    cfg.data.real = "somewhere"
    with pytest.raises(ValueError, match="trains on synthetic data only"):
        cfg.validate()
