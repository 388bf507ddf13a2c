"""The training data layer at scale: maps read by index and ahead, one lesion bank, label sets of any size,
and check == train (synthgen.data.sources, synthgen.data.training)."""
import nibabel as nib
import numpy as np
import pytest
import torch

import synthgen
from synthgen.config import GeneratorConfig, LabelConfig, LesionConfig
from synthgen.data import check
from synthgen.data.sources import FolderTissueMaps, TensorTissueMaps, tissue_maps
from synthgen.data.tissue import freesurfer_mapping
from synthgen.data.training import TrainingBatches, training_lesions, validation_set
from synthgen.lesions import holdout_bucket

from conftest import phantom_labels
from test_train import tiny

pytestmark = pytest.mark.usefixtures("one_thread")

VOX = np.diag([4.0, 4.0, 4.0, 1.0])
VOX[:3, 3] = [-40, -52, -36]          # a 4 mm RAS grid around the MNI brain


def _save(path, data, affine=VOX):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def _maps(n, shape=(20, 24, 18)):
    """``n`` different phantom label maps (each shifted by its index) as in-memory tissue maps."""
    base = phantom_labels(shape)
    return TensorTissueMaps([torch.roll(base, i, 2) for i in range(n)], [VOX] * n)


def _masks(folder, n, shape=(20, 24, 18)):
    rng = np.random.default_rng(1)
    for i in range(n):
        m = np.zeros(shape, np.uint8)
        lo = rng.integers(5, 11, 3)
        m[lo[0]:lo[0] + 3, lo[1]:lo[1] + 4, lo[2]:lo[2] + 3] = 1
        _save(folder / f"sub-{i:03d}_lesion.nii.gz", m)
    return folder


def _gen(**kw):
    return synthgen.SynthGenerator(GeneratorConfig(crop=(16, 16, 16), voxel_size=4.0, **kw))


def test_run_on_30_maps_and_40_masks_reads_each_mask_once(tmp_path, monkeypatch):
    import synthgen.data.tissue as tissue_mod
    import synthgen.lesions.masks as masks_mod
    for i in range(30):
        _save(tmp_path / "maps" / f"m{i:02d}.nii.gz", torch.roll(phantom_labels((20, 24, 18)), i, 2)[0, 0].numpy())
    _masks(tmp_path / "masks", 40)
    # the training loader's reads (the check before training reads every file once more, to validate it)
    mask_reads, map_reads = [], []
    load_mask, load_map = masks_mod.load_nifti, tissue_mod.read_tissue_map
    monkeypatch.setattr(masks_mod, "load_nifti", lambda p, *a, **k: (mask_reads.append(p), load_mask(p, *a, **k))[1])
    monkeypatch.setattr(tissue_mod, "read_tissue_map",
                        lambda p, *a, **k: (map_reads.append(p), load_map(p, *a, **k))[1])
    cfg = tiny(tmp_path / "run", steps=3, val_every=3)
    cfg.data.tissue_maps, cfg.data.lesions = str(tmp_path / "maps"), str(tmp_path / "masks")
    from synthgen.train.loop import train
    out = train(cfg, progress=False)
    assert out["step"] == 3 and np.isfinite(out["loss"])
    masks = sorted((tmp_path / "masks").glob("*.nii.gz"))
    assert sorted(mask_reads) == masks                          # one bank for 30 maps and both splits
    # maps are read when a step (or a validation sample) uses them, not all up front
    assert len(map_reads) <= cfg.steps + cfg.val_samples and len(set(map_reads)) < 30


class CountingMaps(TensorTissueMaps):
    """Records how many maps were read ahead of what the consumer has used."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.loaded, self.used, self.ahead = 0, 0, 0

    def load(self, i):
        self.loaded += 1
        self.ahead = max(self.ahead, self.loaded - self.used)
        return super().load(i)


@pytest.mark.parametrize("prefetch", [1, 4])
def test_read_ahead_is_bounded_and_gives_the_same_bytes(prefetch):
    maps = _maps(30)
    steps = range(10)
    inline = TrainingBatches(_gen(), maps, seed=5, batch_size=1, device="cpu")
    want = [inline(s) for s in steps]              # no read-ahead: every input read when its step asks
    counting = CountingMaps(maps.maps, maps.affines)
    with TrainingBatches(_gen(), counting, seed=5, batch_size=1, device="cpu", prefetch=prefetch) as data:
        data.start(0, len(steps))
        for s in steps:
            image, target = data(s)
            counting.used += 1
            assert torch.equal(image, want[s][0]) and torch.equal(target, want[s][1])
            assert data.resident_maps() == 1
    # the queue holds `prefetch` steps, the reader one more, the consumer the step it makes
    assert counting.ahead <= prefetch + 2 and counting.loaded <= len(steps)
    # one map set or thirty: a sample depends on its map and (seed, index) only
    which = inline.map_index(3)
    single = TensorTissueMaps([maps.maps[which]], [VOX])
    one = _gen()(single.load(0).tensor(), seed=5, index=3, batch_size=1, affine=VOX)
    assert torch.equal(one[0], want[3][0])


def test_a_repeated_map_is_not_read_again():
    counting = CountingMaps(_maps(1).maps, [VOX])
    data = TrainingBatches(_gen(), counting, seed=0, batch_size=1, device="cpu").start(0, 6)
    for s in range(6):
        data(s)
    assert counting.loaded == 1


def test_held_out_lesions_never_reach_a_training_sample(tmp_path):
    folder = _masks(tmp_path / "masks", 30)
    config = LesionConfig(healthy_probability=0.0, holdout_fraction=0.3)
    train_src, val_src = training_lesions(config, folder=folder)
    held = {f.name for f in folder.glob("*.nii.gz") if holdout_bucket(f.name) < 0.3}
    assert held and set(val_src.bank.names) == held and not held & set(train_src.bank.names)
    pasted = []
    for src in (train_src, val_src):
        paste = src.bank.paste
        src.bank.paste = lambda i, out, aff, _p=paste, _b=src.bank, **kw: (pasted.append(_b.names[i]),
                                                                           _p(i, out, aff, **kw))[1]
    data = TrainingBatches(_gen(), _maps(3), seed=1, batch_size=2, device="cpu", lesions=train_src)
    for s in range(15):
        data(s)
    assert len(pasted) >= 20 and not held & set(pasted)
    pasted.clear()
    validation_set(_gen(), _maps(3), seed=99, n=6, device="cpu", lesions=val_src)
    assert pasted and set(pasted) <= held


def _freesurfer_map(shape=(24, 28, 22)):
    """A small FreeSurfer-labelled head: cortex / WM / ventricles per hemisphere, CSF, deep nuclei, head tissues."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    r = np.sqrt((grid ** 2).sum(-1))
    left = grid[..., 0] < 0
    lab = np.select([r < 0.2, r < 0.35, r < 0.6, r < 0.75, r < 0.8, r < 0.9, r < 0.97],
                    [np.where(left, 4, 43), np.where(left, 10, 49), np.where(left, 2, 41), np.where(left, 3, 42),
                     24, 515, 507], 0)
    return lab.astype(np.int16)


@pytest.mark.parametrize("target, classes", [("tissue", 6), ("labels", 34)])
def test_a_freesurfer_label_map_trains(tmp_path, target, classes):
    _save(tmp_path / "maps" / "seg.nii.gz", _freesurfer_map())
    cfg = tiny(tmp_path / "run", steps=2, val_every=2)
    cfg.data.tissue_maps, cfg.data.label_map, cfg.generator.target = str(tmp_path / "maps"), "freesurfer", target
    from synthgen.train.loop import train
    from synthgen.train.model import load_checkpoint_model
    out = train(cfg, progress=False)
    assert out["step"] == 2 and np.isfinite(out["loss"])
    _, saved = load_checkpoint_model(tmp_path / "run" / "last.pt")
    assert saved["model"]["out_channels"] == classes
    assert len(saved["generator"]["labels"]["classes"]) == freesurfer_mapping().num_labels
    if target == "labels":     # the target holds SynthSeg's structures, not the 6 tissue classes
        gen = synthgen.SynthGenerator(GeneratorConfig.from_dict(saved["generator"]))
        item = FolderTissueMaps(tmp_path / "maps", "freesurfer", 4.0).load(0)
        _, t = gen(item.tensor(), seed=0, affine=item.affine)
        names = gen.config.target_class_names
        present = {names[c] for c in t.unique().tolist()}
        assert {"left_cerebral_white_matter", "right_thalamus", "CSF"} <= present


def test_synthseg_training_map_trains_with_a_parcellation_target(shared_data, tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "training_seg_01.nii.gz").symlink_to(shared_data / "synthseg_label_maps" / "training_seg_01.nii.gz")
    assert not check.has_errors(check.check_folders(tissue_maps=folder, label_map="freesurfer", progress=False))
    cfg = tiny(tmp_path / "run", steps=2)
    cfg.data.tissue_maps, cfg.data.label_map, cfg.generator.target = str(folder), "freesurfer", "labels"
    from synthgen.train.loop import train
    assert train(cfg, progress=False)["step"] == 2


def _trains(path, label_map) -> bool:
    """Whether training takes the map: read by the training loader, then one sample by the generator."""
    try:
        maps = FolderTissueMaps(path, label_map, voxel_size=4.0)
        item = maps.load(0)
        labels = maps.labels or LabelConfig()
        synthgen.SynthGenerator(GeneratorConfig(crop=(8, 8, 8), voxel_size=4.0, labels=labels))(item.tensor())
        return True
    except ValueError:
        return False


def test_check_and_training_agree_on_every_map(tmp_path):
    good = phantom_labels((10, 12, 9))[0, 0].numpy()
    fs = _freesurfer_map((10, 12, 9))
    soft = np.stack([(good == k).astype(np.float32) for k in range(6)], -1)
    cases = {
        "ours": (good, None, True),
        "ours_int32": (good.astype(np.int32), None, True),
        "label_20": (np.where(good == 5, 20, good), None, False),     # beyond our convention's 15 labels
        "no_gm": (np.where(good == 1, 2, good), None, False),
        "freesurfer_mapped": (fs, "freesurfer", True),
        "freesurfer_unmapped": (fs, None, False),
        "unknown_label": (np.where(fs == 24, 999, fs), "freesurfer", False),
        "float_labels": (good.astype(np.float32), None, True),
        "fractional": (good.astype(np.float32) + 0.5, None, False),
        "negative": (good.astype(np.int16) - 1, None, False),
        "soft": (soft, None, True),
        "soft_with_mapping": (soft, "freesurfer", False),
        "soft_16_channels": (np.concatenate([soft, np.zeros(soft.shape[:3] + (10,), np.float32)], -1), None,
                             False),
        "soft_above_one": (soft * 2, None, False),
        # degenerate maps (synthgen.validate): refused by both, naming the file
        "constant_gm": (np.ones_like(good), None, False),
        "constant_soft": (np.broadcast_to(soft[:1, :1, :1], soft.shape).copy(), None, False),
        "tiny_5x5x5": (good[:5, :5, :5], None, False),
        "voxels_50mm": (good, None, False, np.diag([50.0, 50.0, 50.0, 1.0])),
        "labels_4d_singleton": (good[..., None], None, True),          # some tools save label maps so
        "freesurfer_no_brain": (np.where(np.isin(fs, freesurfer_mapping().gm + freesurfer_mapping().wm), 24, fs),
                                "freesurfer", False),
    }
    for name, (data, mapping, expected, *affine) in cases.items():
        path = _save(tmp_path / name / f"{name}.nii.gz", data, *affine)
        report = check.check_tissue_map(path, mapping)
        usable = not any(p.severity == "error" for p in report.problems)
        assert usable == _trains(tmp_path / name, mapping) == expected, (name, report.problems)
        if not usable:
            assert all(str(path) == p.path for p in report.problems)


def test_sources_read_by_index(tmp_path):
    for i in range(3):
        _save(tmp_path / "maps" / f"m{i}.nii.gz", np.roll(phantom_labels((10, 12, 9))[0, 0].numpy(), i, 0))
    maps = tissue_maps(folder=tmp_path / "maps", voxel_size=4.0, cache=1)
    assert len(maps) == 3 and maps.reads == 0                 # listing reads no map
    a = maps.load(1)
    assert maps.reads == 1 and maps.load(1) is a and maps.reads == 1       # cached
    maps.load(2)
    maps.load(1)
    assert maps.reads == 3                                    # the cache holds one map
    with pytest.raises(IndexError, match=r"`index` must be an int in \[0, 3\)"):
        maps.load(3)
    from synthgen.data import pack
    store = pack(tmp_path / "store", tissue_maps=tmp_path / "maps", voxel_size=4.0, progress=False)
    assert store["packed"] == 3
    packed = tissue_maps(tmp_path / "store", voxel_size=4.0)
    item = packed.load(1)
    assert type(packed).__name__ == "StoreTissueMaps" and np.array_equal(item.data, a.data)
    assert isinstance(item.data, np.memmap)                   # at the packed voxel size: memory-mapped
    resliced = tissue_maps(tmp_path / "store", voxel_size=8.0).load(1)
    assert resliced.data.shape == tuple((np.array(a.data.shape) - 1) // 2 + 1)


def test_read_ahead_survives_a_generate_ahead_thread_and_the_end_of_its_range():
    """The loop's order: start() first, then another thread asks for the steps in order; past the end, and after
    the range, steps are read inline (no StopIteration), with the same bytes."""
    import threading
    maps = CountingMaps(_maps(6).maps, _maps(6).affines)
    inline = TrainingBatches(_gen(), _maps(6), seed=2, batch_size=1, device="cpu")
    data = TrainingBatches(_gen(), maps, seed=2, batch_size=1, device="cpu", prefetch=2).start(0, 5)
    got = {}

    def ask():
        for s in range(5):
            got[s] = data(s)
            maps.used += 1
    t = threading.Thread(target=ask)
    t.start()
    t.join()
    assert data._ahead is not None and data._next == 5          # the read-ahead was used for every step
    extra = data(5)                                               # beyond the started range: read inline
    for s in range(5):
        assert torch.equal(got[s][0], inline(s)[0])
    assert torch.equal(extra[0], inline(5)[0])
    real_only = TrainingBatches(_gen(), None, seed=0, batch_size=1, device="cpu", real=object())
    assert real_only.real_only


@pytest.mark.parametrize("lesions", ["procedural", "none", "real scans"])
def test_training_steps_over_several_maps_never_read_the_device_back(lesions, monkeypatch, tmp_path):
    """Training batches made on meta tensors, which refuse every read back to the host (.item(), bool(), .cpu()
    and the min/max of a map check): a new map on most steps, the reference pipeline with its blurs, thick
    slices and flips, lesions placed, so nothing on the device path waits for the device."""
    import synthgen.reference as generator_mod    # the reference pipeline draws its generators there
    from synthgen.lesions import LesionSource
    real = generator_mod.generator_for      # meta tensors take no torch.Generator: draw unseeded there
    monkeypatch.setattr(generator_mod, "generator_for", lambda k, d="cpu": None if str(d) == "meta" else real(k, d))
    gen = _gen()
    src = LesionSource.procedural(affine=VOX, config=LesionConfig(healthy_probability=0.0)) \
        if lesions == "procedural" else None
    real = None
    if lesions == "real scans":             # odd steps real (the paper's 1:1 mixing), augmented on the device
        from synthgen.data.sources import RealScans
        from test_train import _real_folder
        real = RealScans(folder=str(_real_folder(tmp_path / "real")))
    with TrainingBatches(gen, _maps(5), seed=1, batch_size=2, device="meta", lesions=src, real=real,
                         prefetch=2) as data:
        data.start(0, 8)
        for step in range(8):
            image, target = data(step)
            assert image.device.type == "meta" and image.shape == (2, 1, 16, 16, 16) and target.shape == (2, 16, 16, 16)
        synthetic = [s for s in range(8) if not data.is_real(s)]
        changes = sum(data.map_index(a) != data.map_index(b) for a, b in zip(synthetic[1:], synthetic))
    assert real is not None or changes >= 3     # the premise: new maps, so no check result is reused
    with pytest.raises((RuntimeError, NotImplementedError)):     # the premise: meta tensors cannot be read
        bool(image.any())


def test_a_bad_map_is_refused_where_it_is_read(monkeypatch):
    maps = _maps(2)
    maps.maps[1] = maps.maps[1].clone().fill_(200)        # a label the generator does not know
    gen = _gen()
    # only the read-time check on the host copy may refuse it: the generator's own device check is off
    monkeypatch.setattr(gen, "_check_tissue_once", lambda tissue: None)
    with TrainingBatches(gen, maps, seed=0, batch_size=1, device="cpu") as data:
        bad = next(s for s in range(50) if data.map_index(s) == 1)
        with pytest.raises(ValueError, match=r"labels must be in \[0, \d+\]"):
            data(bad)
