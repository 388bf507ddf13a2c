"""synthgen.torchio: SynthFromLabels in a SubjectsDataset + SubjectsLoader; history replay; affines; errors."""
import nibabel as nib
import numpy as np
import pytest
import torch

tio = pytest.importorskip("torchio")

from synthgen import GeneratorConfig, SynthGenerator  # noqa: E402
from synthgen.torchio import SynthFromLabels, SynthSample  # noqa: E402

from conftest import agreement, map_affine, phantom_labels  # noqa: E402

CROP = (16, 20, 12)
CONFIG = GeneratorConfig.from_dict({"crop": CROP, "elastic": {"max_std": 0.0}})


@pytest.fixture
def subjects(tmp_path):
    path = tmp_path / "sub-01_tissue.nii.gz"
    nib.save(nib.Nifti1Image(phantom_labels()[0, 0].numpy(), map_affine()), str(path))
    return tio.SubjectsDataset([tio.Subject(label=tio.LabelMap(path)) for _ in range(4)],
                               transform=SynthFromLabels(config=CONFIG))


def run_loader(subjects, seed=0):
    torch.manual_seed(seed)
    return list(tio.SubjectsLoader(subjects, batch_size=2, num_workers=2))


def test_subjects_loader_two_workers_distinct_reproducible_and_placed_on_the_map(subjects):
    first, again, other = run_loader(subjects), run_loader(subjects), run_loader(subjects, seed=1)
    labels = phantom_labels()[0, 0].numpy()
    sums = set()
    for batch, batch2, batch3 in zip(first, again, other):
        image, target = batch["image"]["data"], batch["label"]["data"]
        assert image.shape == (2, 1) + CROP and target.shape == (2, 1) + CROP and target.dtype == torch.uint8
        assert torch.equal(image, batch2["image"]["data"]) and torch.equal(target, batch2["label"]["data"])
        assert not torch.equal(image, batch3["image"]["data"])
        affines = np.asarray(batch["label"]["affine"])
        assert np.allclose(affines, np.asarray(batch["image"]["affine"]))
        for b in range(2):
            assert agreement(target[b, 0].numpy(), affines[b], labels, map_affine()) >= 0.99
            assert agreement(target[b, 0].numpy(), map_affine(), labels, map_affine()) < 0.9
        sums |= {float(x.sum()) for x in image}
    assert len(sums) == 4


def test_history_records_the_seeded_sample_and_replays_it(subjects):
    torch.manual_seed(3)
    subject = subjects[0]
    assert isinstance(subject["image"], tio.ScalarImage) and isinstance(subject["label"], tio.LabelMap)
    assert [type(t) for t in subject.history] == [SynthSample]
    seed = subject.history[0].seed
    replay = subject.get_composed_history()(tio.Subject(label=tio.LabelMap(tensor=phantom_labels()[0].long(),
                                                                            affine=map_affine())))
    assert torch.equal(replay["image"].data, subject["image"].data)
    assert np.allclose(replay["label"].affine, subject["label"].affine)
    image, target = SynthGenerator(CONFIG)(phantom_labels(), seed=seed)       # the generator's own sample
    assert torch.equal(image[0], subject["image"].data) and torch.equal(target, subject["label"].data)


def test_keys_and_errors():
    subject = tio.Subject(tissue=tio.LabelMap(tensor=phantom_labels()[0].long(), affine=map_affine()))
    out = SynthSample(0, label_key="tissue", image_key="t1", target_key="seg", config=CONFIG)(subject)
    assert {"tissue", "t1", "seg"} <= set(out.keys()) and out["seg"].shape == (1,) + CROP
    with pytest.raises(KeyError, match="no image 'label'"):
        SynthFromLabels(config=CONFIG)(subject)
    with pytest.raises(ValueError, match="`generator` already holds"):
        SynthFromLabels(config=CONFIG, generator=SynthGenerator())
    with pytest.raises(ValueError, match="`generator` already holds"):
        SynthSample(0, config=CONFIG, generator=SynthGenerator())
