"""SynthDataset: one index stream sharded over DataLoader workers and DDP ranks; epochs; items; errors."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import synthgen
from synthgen import GeneratorConfig, SynthDataset

from conftest import phantom_labels

CROP = (10, 12, 8)
N = 6
# DataLoader workers run one torch thread; so does this module, so that bytes compare exactly (CPU reductions may
# differ in the last bit between thread counts)
pytestmark = pytest.mark.usefixtures("one_thread")


def dataset(**kw):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    return SynthDataset(phantom_labels()[0], kw.pop("samples_per_epoch", N), seed=kw.pop("seed", 7),
                        config=GeneratorConfig(crop=CROP), affine=aff, **kw)


def collect(ds, num_workers=0, epoch=None) -> dict:
    """index -> (image, target, affine) over one pass of a DataLoader (batches of 2, as training would)."""
    if epoch is not None:
        ds.set_epoch(epoch)
    out = {}
    for batch in DataLoader(ds, batch_size=2, num_workers=num_workers):
        assert batch["image"].shape[1:] == (1,) + CROP and batch["label"].shape[1:] == (1,) + CROP
        assert batch["label"].dtype == torch.uint8 and batch["affine"].shape[1:] == (4, 4)
        for i, index in enumerate(batch["index"].tolist()):
            assert index not in out, f"sample {index} twice in one pass"
            out[index] = (batch["image"][i], batch["label"][i], batch["affine"][i])
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(all(torch.equal(x, y) for x, y in zip(a[k], b[k])) for k in a)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_same_samples_for_0_1_3_workers_and_each_is_its_seed_and_index():
    ref = collect(dataset(), 0, epoch=0)
    assert sorted(ref) == list(range(N))
    assert same(collect(dataset(), 1, epoch=0), ref)
    assert same(collect(dataset(), 3, epoch=0), ref)
    # independently: sample i is the generator's sample (seed, i), on the map's affine
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=CROP))
    image, target, params = gen(phantom_labels(), seed=7, index=4, return_params=True)
    assert torch.equal(ref[4][0], image[0]) and torch.equal(ref[4][1], target)
    assert torch.allclose(ref[4][2], gen.output_affine(params, np.diag([2.0, 2.0, 2.0, 1.0]))[0])
    images = torch.stack([ref[i][0] for i in range(N)])
    assert len({images[i].sum().item() for i in range(N)}) == N        # distinct samples


def test_ranks_are_disjoint_and_cover_the_epoch_and_pad_evenly():
    ref = collect(dataset(), 0, epoch=0)
    parts = [collect(dataset(rank=r, world_size=2), 1 + r, epoch=0) for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert same({**parts[0], **parts[1]}, ref)
    assert len(dataset(rank=0, world_size=2)) == N // 2
    # 5 samples on 2 ranks: 3 steps each (as DistributedSampler), one sample made twice, all 5 covered
    odd = [dataset(samples_per_epoch=5, rank=r, world_size=2).indices(0) for r in range(2)]
    assert [len(o) for o in odd] == [3, 3] and sorted(set(odd[0] + odd[1])) == list(range(5))
    assert len(dataset(samples_per_epoch=5, rank=1, world_size=2)) == 3


def test_epochs_give_new_samples_by_set_epoch_and_by_passes():
    ds = dataset()
    first, second = collect(ds, 0), collect(ds, 0)              # two passes in this process: epochs 0 and 1
    assert sorted(first) == list(range(N)) and sorted(second) == list(range(N, 2 * N))
    assert not torch.equal(first[0][0], second[N][0])
    again = collect(ds, 2, epoch=1)                              # workers: set_epoch moves them
    assert same(again, second)
    assert same(collect(ds, 2, epoch=0), first)


def test_distributed_rank_is_read_when_initialised(monkeypatch):
    import torch.distributed as dist
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 3)
    ds = dataset()
    assert ds.rank_and_world() == (1, 3) and ds.indices(0) == [1, 4]
    assert dataset(rank=0, world_size=1).rank_and_world() == (0, 1)      # explicit arguments win


def test_pickles_after_use_and_several_maps():
    ds = dataset()
    item = ds.sample(2)
    back = pickle.loads(pickle.dumps(ds))        # DataLoader workers under spawn / forkserver
    assert torch.equal(back.sample(2)["image"], item["image"])
    two = SynthDataset([phantom_labels()[0], phantom_labels((24, 28, 26))[0]], 8, config=GeneratorConfig(crop=CROP))
    maps = [two.sample(i)["map"] for i in range(8)]
    assert set(maps) == {0, 1}


def test_errors():
    tissue = phantom_labels()[0]
    cfg = GeneratorConfig(crop=CROP)
    with pytest.raises(ValueError, match="`tissue` must hold at least one"):
        SynthDataset([], 4)
    with pytest.raises(ValueError, match="`affine` must be one affine or one per map"):
        SynthDataset([tissue, tissue], 4, affine=[np.eye(4)])
    with pytest.raises(ValueError, match=r"`affine\[0\]` must be 4x4"):
        SynthDataset(tissue, 4, affine=np.eye(3))
    with pytest.raises(ValueError, match="`samples_per_epoch` must be a positive int"):
        SynthDataset(tissue, 0)
    with pytest.raises(ValueError, match="`generator` already holds"):
        SynthDataset(tissue, 4, config=cfg, generator=synthgen.SynthGenerator())
    with pytest.raises(ValueError, match="`image_key` and `target_key` must differ"):
        SynthDataset(tissue, 4, image_key="x", target_key="x")
    with pytest.raises(ValueError, match=r"`rank` must be in \[0, world_size\)"):
        SynthDataset(tissue, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="`epoch` must be a non-negative int"):
        SynthDataset(tissue, 4).set_epoch(-1)
    with pytest.raises(ValueError, match="channel-first"):
        SynthDataset(tissue[0], 4)


def test_a_store_of_freesurfer_maps_feeds_the_dataset(tmp_path):
    """A TissueMaps source (here a packed store of FreeSurfer-labelled maps): maps read when drawn, the store's
    label mapping sets the generator's labels, the same samples as from the maps in memory."""
    import nibabel as nib
    from synthgen.data import pack
    from synthgen.data.sources import tissue_maps
    from test_data_training import _freesurfer_map
    for i in range(3):
        nib.save(nib.Nifti1Image(np.roll(_freesurfer_map(), 2 * i, 0), np.diag([2.0, 2, 2, 1])),
                 str(tmp_path / f"fs{i}.nii.gz"))
    pack(tmp_path / "store", tissue_maps=tmp_path, label_map="freesurfer", voxel_size=2.0, progress=False)
    maps = tissue_maps(tmp_path / "store", voxel_size=2.0)
    cfg = GeneratorConfig(crop=CROP, voxel_size=2.0, target="labels")
    ds = SynthDataset(maps, 4, seed=1, config=cfg)
    assert ds.generator.config.labels == maps.labels and maps.reads == 0
    items = [ds.sample(i) for i in range(4)]
    assert maps.reads == 4 and max(int(it["label"].max()) for it in items) > 5      # SynthSeg's structures
    loaded = [maps.load(i) for i in range(3)]
    memory = SynthDataset([m.tensor()[0] for m in loaded], 4, seed=1, generator=ds.generator,
                          affine=[m.affine for m in loaded])
    for i in range(4):
        a, b = items[i], memory.sample(i)
        assert a["map"] == b["map"] and torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
