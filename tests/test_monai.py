"""synthgen.monai: RandSynthd / RandRealAugmentd in a MONAI Compose + DataLoader; randomness; affines; errors."""
import nibabel as nib
import numpy as np
import pytest
import torch

monai = pytest.importorskip("monai")
from monai.data import DataLoader, Dataset, MetaTensor  # noqa: E402
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged  # noqa: E402
from monai.utils import set_determinism  # noqa: E402

from synthgen import GeneratorConfig, SynthGenerator  # noqa: E402
from synthgen.monai import SEED_KEY, RandRealAugmentd, RandSynthd  # noqa: E402

from conftest import agreement, map_affine, phantom_labels  # noqa: E402

CROP = (16, 20, 12)
CONFIG = GeneratorConfig.from_dict({"crop": CROP, "elastic": {"max_std": 0.0}})


@pytest.fixture
def label_file(tmp_path):
    path = tmp_path / "sub-01_tissue.nii.gz"
    nib.save(nib.Nifti1Image(phantom_labels()[0, 0].numpy(), map_affine()), str(path))
    return path


def run_loader(path, num_workers=2, seed=0):
    set_determinism(seed)
    pipeline = Compose([LoadImaged("label"), EnsureChannelFirstd("label"), RandSynthd("label", config=CONFIG)])
    loader = DataLoader(Dataset([{"label": str(path)}] * 4, transform=pipeline), batch_size=2,
                        num_workers=num_workers)
    return list(loader)


def test_compose_dataloader_two_workers_distinct_reproducible_and_placed_on_the_map(label_file):
    first, again = run_loader(label_file), run_loader(label_file)
    other = run_loader(label_file, seed=1)
    labels = phantom_labels()[0, 0].numpy()
    images = []
    for batch, batch2, batch3 in zip(first, again, other):
        image, target = batch["image"], batch["label"]
        assert isinstance(image, MetaTensor) and isinstance(target, MetaTensor)
        assert image.shape == (2, 1) + CROP and target.shape == (2, 1) + CROP and target.dtype == torch.uint8
        assert torch.equal(image, batch2["image"]) and torch.equal(target, batch2["label"])
        assert not torch.equal(image, batch3["image"])
        assert torch.equal(image.affine, target.affine) and image.affine.shape == (2, 4, 4)
        for b in range(2):
            assert agreement(target[b, 0].numpy(), image.affine[b].numpy(), labels, map_affine()) >= 0.99
            assert agreement(target[b, 0].numpy(), map_affine(), labels, map_affine()) < 0.9   # the map's affine
        assert str(label_file) in batch["image"].meta["filename_or_obj"][0]
        images += list(image)
    assert len({float(x.sum()) for x in images}) == 4          # four different samples


def test_set_random_state_replays_and_float_or_int_labels_agree():
    lab = phantom_labels()[0]
    t = RandSynthd("label", config=CONFIG)
    a = t.set_random_state(5)({"label": MetaTensor(lab.float(), affine=torch.as_tensor(map_affine()))})
    b = t.set_random_state(5)({"label": MetaTensor(lab.to(torch.int16), affine=torch.as_tensor(map_affine()))})
    c = t.set_random_state(6)({"label": lab.float()})      # a plain tensor: identity affine
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])
    # the seed in the metadata replays the sample with the generator itself
    gen = SynthGenerator(CONFIG)
    image, target = gen(lab[None], seed=a["image"].meta[SEED_KEY])
    assert torch.equal(image[0], a["image"].as_tensor()) and torch.equal(target, a["label"].as_tensor())
    params = gen.sample_params(lab.shape, seed=c["image"].meta[SEED_KEY])
    assert torch.allclose(c["image"].affine, gen.output_affine(params)[0])      # no map affine: voxel -> voxel


def test_target_works_with_dice_ce_loss():
    from monai.losses import DiceCELoss
    out = RandSynthd("label", config=CONFIG)({"label": phantom_labels()[0]})
    target = out["label"][None]
    logits = torch.randn(1, 6, *CROP, requires_grad=True)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None


def test_real_augmentd_keeps_labels_and_channels_and_places_them(tmp_path):
    labels = np.zeros((30, 36, 32), np.int16)
    labels[5:20, 8:30, 6:26] = 1
    labels[10:25, 12:22, 10:20] = 3
    scan = np.stack([labels * 100.0 + 50, 500.0 - labels * 80], 0).astype(np.float32)
    aff = torch.as_tensor(map_affine())
    t = RandRealAugmentd(("image", "label"), config=CONFIG).set_random_state(3)
    out = t({"image": MetaTensor(torch.from_numpy(scan), affine=aff),
             "label": MetaTensor(torch.from_numpy(labels[None]).float(), affine=aff)})
    img, tgt = out["image"], out["label"]
    assert img.shape == (2,) + CROP and tgt.shape == (1,) + CROP and set(tgt.unique().tolist()) == {0, 1, 3}
    assert agreement(tgt[0].numpy(), tgt.affine.numpy(), labels, map_affine(), to_target=None) >= 0.99
    again = t.set_random_state(3)({"image": MetaTensor(torch.from_numpy(scan), affine=aff),
                                   "label": MetaTensor(torch.from_numpy(labels[None]), affine=aff)})
    assert torch.equal(again["image"], img) and torch.equal(again["label"].long(), tgt.long())
    with pytest.raises(ValueError, match="must lie on one grid"):
        t({"image": MetaTensor(torch.from_numpy(scan), affine=aff),
           "label": MetaTensor(torch.from_numpy(labels[None]), affine=torch.eye(4, dtype=torch.float64))})
    with pytest.raises(ValueError, match="`label` must be channel-first"):
        t({"image": torch.from_numpy(scan), "label": torch.from_numpy(labels)})
    with pytest.raises(ValueError, match=r"`keys` must be \(scan key, label key\)"):
        RandRealAugmentd("image")
    with pytest.raises(KeyError, match="keys \\['label'\\] are not in the data"):
        t({"image": torch.from_numpy(scan)})
    assert RandRealAugmentd(("image", "label"), allow_missing_keys=True)({"x": 1}) == {"x": 1}


def test_errors():
    lab = phantom_labels()[0]
    t = RandSynthd("label", config=CONFIG)
    with pytest.raises(ValueError, match="`keys` must name one tissue map"):
        RandSynthd(("a", "b"))
    with pytest.raises(ValueError, match="`generator` already holds"):
        RandSynthd("label", config=CONFIG, generator=SynthGenerator())
    with pytest.raises(KeyError, match="key 'label' is not in the data"):
        t({"image": lab})
    assert RandSynthd("label", allow_missing_keys=True)({"x": 1}) == {"x": 1}
    with pytest.raises(ValueError, match="`label` with one channel must hold integer labels"):
        t({"label": lab.float() + 0.25})
    with pytest.raises(ValueError, match="EnsureChannelFirstd"):
        t({"label": lab[0]})
    with pytest.raises(ValueError, match=r"`label` labels must be in \[0, 14\]"):
        t({"label": lab.float() * 10})
    with pytest.raises(ValueError, match="`label` integer labels must have one channel"):
        t({"label": lab.repeat(2, 1, 1, 1)})
