"""Real-scan branch: geometry shared with the generator's ops, histogram steps, reproducibility, 1:1 sampler."""
import numpy as np
import pytest
import torch

from synthgen.config import GeneratorConfig, HistogramConfig
from synthgen.real import (AlternatingSampler, RealAugmenter, histogram_shift, interp, mixed_source,
                           real_item)

CROP = (9, 11, 13)


def _pair(shape=(17, 24, 31), seed=0):
    g = torch.Generator().manual_seed(seed)
    scan = torch.rand((1, 1) + shape, generator=g) * 500 + 100
    scan[..., :3] = 0                          # a zero background, as in skull-stripped scans
    mask = torch.zeros((1, 1) + shape, dtype=torch.uint8)
    mask[:, :, 6:12, 8:16, 10:20] = 1
    return scan, mask


def _aug(**kw):
    return RealAugmenter(GeneratorConfig(crop=CROP, **kw))


def test_output_shapes_normalised_and_reproducible():
    scan, mask = _pair()
    aug = _aug()
    img, tgt, params = aug(scan, mask, seed=1, index=5, return_params=True)
    assert img.shape == (1, 1) + CROP and img.dtype == torch.float32
    assert tgt.shape == (1,) + CROP and tgt.dtype == torch.uint8 and set(tgt.unique().tolist()) <= {0, 1}
    assert abs(float(img.mean())) < 1e-4 and abs(float(img.std()) - 1) < 1e-2
    img2, tgt2 = aug(scan, mask, seed=1, index=5)
    assert torch.equal(img, img2) and torch.equal(tgt, tgt2)
    img3, _ = aug(scan, mask, params=params)
    assert torch.equal(img, img3)
    img4, _ = aug(scan, mask, seed=1, index=6)
    assert not torch.equal(img, img4)
    img16, _ = aug(scan.half(), mask, seed=1, index=5)   # fp16 as stored in a packed store
    assert torch.allclose(img16, img, atol=0.05)


def test_geometry_is_the_generators_warp():
    # no deformation, no flip, no bias, no gamma: the target is the crop of the mask around the sampled centre
    cfg = dict(elastic={"max_std": 0.0}, affine={"rotation": 0.0, "shear": 0.0, "zoom": 0.0}, flip_probability=0.0,
               bias={"max_std": 0.0}, gamma={"log_std": 0.0})
    aug = RealAugmenter(GeneratorConfig.from_dict({"crop": CROP, **cfg}))
    scan, mask = _pair()
    p = aug.sample_params(scan.shape, seed=3, index=0)
    _, tgt = aug(scan, mask, params=p)
    c = p.geometry.center[0].round().long().tolist()
    lo = [ci - (s - 1) // 2 for ci, s in zip(c, CROP)]
    expect = mask[0, 0, lo[0]:lo[0] + CROP[0], lo[1]:lo[1] + CROP[1], lo[2]:lo[2] + CROP[2]]
    assert torch.equal(tgt[0], expect)


def test_multi_class_labels_survive_and_float_labels_are_read():
    cfg = dict(elastic={"max_std": 0.0}, affine={"rotation": 0.0, "shear": 0.0, "zoom": 0.0}, flip_probability=0.0)
    aug = RealAugmenter(GeneratorConfig.from_dict({"crop": CROP, **cfg}))
    scan, _ = _pair()
    labels = torch.zeros_like(scan, dtype=torch.int16)
    labels[:, :, 4:10, 5:20, 6:25] = 2
    labels[:, :, 9:14, 10:15, 9:22] = 7
    labels[:, :, 2:6, 2:9, 14:30] = 300          # beyond uint8: the label dtype is kept
    p = aug.sample_params(scan.shape, seed=3, index=0)
    _, tgt = aug(scan, labels, params=p)
    c = p.geometry.center[0].round().long().tolist()
    lo = [ci - (s - 1) // 2 for ci, s in zip(c, CROP)]
    expect = labels[0, 0, lo[0]:lo[0] + CROP[0], lo[1]:lo[1] + CROP[1], lo[2]:lo[2] + CROP[2]]
    assert tgt.dtype == torch.int16 and torch.equal(tgt[0], expect) and {2, 7} <= set(tgt.unique().tolist())
    _, tgt_f = aug(scan, labels.float(), params=p)                  # LoadImaged gives labels as float
    assert tgt_f.dtype == torch.int64 and torch.equal(tgt_f, tgt.long())
    _, tgt_rand = _aug()(scan, labels, seed=0, index=2)            # rotated, deformed, flipped: still labels
    assert set(tgt_rand.unique().tolist()) <= {0, 2, 7, 300} and len(tgt_rand.unique()) >= 3
    with pytest.raises(ValueError, match="`mask` must hold integer labels"):
        aug(scan, labels.float() + 0.5, params=p)


def test_multi_channel_scan_one_geometry_each_channel_normalised():
    scan, mask = _pair()
    other = 1000.0 - scan * 0.5 + torch.linspace(0, 50, scan.shape[-1])       # another contrast, same grid
    two = torch.cat([scan, other], 1)
    aug = _aug()
    img, tgt = aug(two, mask, seed=4, index=1)
    assert img.shape == (1, 2) + CROP
    for c in range(2):
        assert abs(float(img[0, c].mean())) < 1e-4 and abs(float(img[0, c].std(unbiased=False)) - 1) < 1e-3
    one, tgt_one = aug(scan, mask, seed=4, index=1)     # channel 0 is what the scan alone gives
    assert torch.allclose(img[:, :1], one, atol=1e-5) and torch.equal(tgt, tgt_one)
    alone, _ = aug(other, mask, seed=4, index=1)
    assert torch.allclose(img[:, 1:], alone, atol=1e-5)


def test_real_and_synthetic_streams_differ():
    from synthgen.sampling import sample_params
    aug = _aug()
    real = aug.sample_params((17, 24, 31), seed=0, index=0).geometry
    synth = sample_params(aug.config, (17, 24, 31), 0, 0, 1)
    assert not torch.equal(real.matrix, synth.matrix)


def test_interp_matches_numpy_and_one_histogram_normalisation_for_training_and_inference():
    from synthgen import ops, segment
    xp = torch.tensor([0.0, 1.0, 3.0, 4.0])
    fp = torch.tensor([0.0, 2.0, 2.5, 5.0])
    x = torch.linspace(-1, 5, 37)
    assert np.allclose(interp(x, xp, fp).numpy(), np.interp(x.numpy(), xp.numpy(), fp.numpy()), atol=1e-6)
    # the op against numpy's percentiles and interp on the foreground (above the minimum)
    v = torch.rand(2, 1, 6, 7, 8, generator=torch.Generator().manual_seed(0)) ** 3 * 100
    v[:, :, :2] = 0
    out = ops.histogram_normalise(v)
    pc = np.array(ops.LANDMARK_PERCENTILES)
    for b in range(2):
        a = v[b, 0].numpy()
        marks = np.percentile(a[a > a.min()], pc)
        marks = marks + np.arange(marks.size) * max(1e-6 * (marks[-1] - marks[0]), 1e-12)
        ref = np.interp(a, marks, (pc - pc[0]) / (pc[-1] - pc[0]))
        assert np.allclose(out[b, 0].numpy(), ref, atol=1e-5)
    assert torch.equal(ops.histogram_normalise(torch.ones(1, 1, 2, 2, 2)), torch.zeros(1, 1, 2, 2, 2))
    # training's real branch and inference normalise alike: the same function
    assert np.array_equal(segment.histogram_normalise(v[0, 0].numpy()), out[0, 0].numpy())


def test_histogram_shift_is_monotone_and_optional():
    x = torch.linspace(0, 1, 101).reshape(1, 1, 101, 1, 1).repeat(2, 1, 1, 1, 1)
    knots = torch.tensor([[0.0, 0.6, 0.8, 1.0], [0.0, 0.6, 0.8, 1.0]])
    out = histogram_shift(x, knots, torch.tensor([True, False]))
    assert torch.equal(out[1], x[1])
    y = out[0].flatten()
    assert bool((y[1:] >= y[:-1]).all()) and abs(float(y[50]) - 0.7) < 1e-5
    aug = RealAugmenter(GeneratorConfig(crop=CROP), HistogramConfig(shift_probability=1.0))
    k = aug.sample_params((17, 24, 31), seed=0, index=0, batch=3).shift_knots
    assert bool((k[:, 1:] >= k[:, :-1]).all()) and torch.all(k[:, 0] == 0) and torch.all(k[:, -1] == 1)


def test_errors():
    scan, mask = _pair()
    aug = _aug()
    with pytest.raises(TypeError, match="`scan` and `mask` must be torch.Tensors"):
        aug(scan.numpy(), mask)
    with pytest.raises(ValueError, match="`scan` must be a float"):
        aug(scan[0], mask)
    with pytest.raises(ValueError, match="`mask` must match `scan`"):
        aug(scan, mask[..., :-1])
    with pytest.raises(TypeError, match="`params` must be RealParams"):
        aug(scan, mask, params={})
    with pytest.raises(ValueError, match="`params` must hold 2 samples, got 1"):
        aug(scan.repeat(2, 1, 1, 1, 1), mask.repeat(2, 1, 1, 1, 1), params=aug.sample_params(scan.shape))
    with pytest.raises(ValueError, match=r"`histogram.shift_probability` must be in \[0, 1\]"):
        HistogramConfig(shift_probability=2).validate()
    with pytest.raises(ValueError, match="`histogram.shift_control_points` must be >= 3"):
        HistogramConfig(shift_control_points=2).validate()


def test_sampler_alternates_exactly_one_to_one_and_resumes():
    sampler = AlternatingSampler(lambda i: ("s", i), lambda i: ("r", i))
    got = [next(sampler) for _ in range(10)]
    assert [s for s, _ in got] == ["synthetic", "real"] * 5
    assert [v for _, v in got] == [("s", 0), ("r", 0), ("s", 1), ("r", 1), ("s", 2), ("r", 2), ("s", 3), ("r", 3),
                                   ("s", 4), ("r", 4)]
    resumed = AlternatingSampler(lambda i: ("s", i), lambda i: ("r", i), start=7)
    assert [next(resumed) for _ in range(3)] == got[7:10]
    assert mixed_source(0, first="real") == ("real", 0)
    with pytest.raises(ValueError, match="`first` must be 'synthetic' or 'real'"):
        mixed_source(0, first="both")
    with pytest.raises(ValueError, match="`step` must be >= 0"):
        AlternatingSampler(None, None, start=-1)


def test_real_item_visits_every_item_once_per_epoch():
    picks = [real_item(5, i, 7) for i in range(21)]
    for e in range(3):
        assert sorted(picks[7 * e:7 * e + 7]) == list(range(7))
    assert picks == [real_item(5, i, 7) for i in range(21)]
    with pytest.raises(ValueError, match="`num_items` must be >= 1"):
        real_item(0, 0, 0)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    scan, mask = _pair()
    aug = RealAugmenter(GeneratorConfig(crop=(32, 32, 32)))
    a, ta = aug(scan, mask, seed=0, index=1)
    b, tb = aug(scan.cuda(), mask.cuda(), seed=0, index=1)
    assert torch.allclose(a, b.cpu(), atol=1e-3) and (ta != tb.cpu()).float().mean() < 1e-3


def test_lesions_pasted_into_a_healthy_scan():
    """A mask bank pastes lesions into healthy real scans: the target gains them where the mask lies (inside the
    head), the scan changes only there, with an intensity drawn from the scan's own range; reproducible."""
    from synthgen.config import FadingConfig, LesionConfig
    from synthgen.lesions import LesionSource
    from synthgen.real import paste_lesions
    scan, _ = _pair(shape=(20, 24, 28))
    healthy = torch.zeros((1, 1, 20, 24, 28), dtype=torch.uint8)
    masks = torch.zeros(1, 20, 24, 28)
    masks[0, 6:12, 8:14, 10:18] = 1
    cfg = LesionConfig(healthy_probability=0.0, fading=FadingConfig(probability=0.0))
    source = LesionSource.from_tensor(masks, config=cfg)
    out, labels = paste_lesions(scan, healthy, source, [7])
    assert torch.equal(labels[0, 0] > 0, masks[0] > 0)                 # Soft-CP keeps the target = the mask
    changed = (out != scan).any(1)[0]
    grown = torch.nn.functional.max_pool3d(masks[None], 7, 1, 3)[0, 0] > 0   # the mask and its Soft-CP edge
    assert changed.any() and not (changed & ~grown).any()
    lo, hi = float(scan[scan > 0].min()), float(scan.max())
    inside = out[0, 0][masks[0] > 0]
    assert float(inside.min()) > lo - 0.5 * (hi - lo) and float(inside.max()) < hi + 0.5 * (hi - lo)
    again, labels2 = paste_lesions(scan, healthy, source, [7])
    assert torch.equal(again, out) and torch.equal(labels2, labels)
    assert not torch.equal(paste_lesions(scan, healthy, source, [8])[0], out)
    # through the augmenter: the lesion appears in the augmented target, multi-class labels kept
    aug = RealAugmenter(GeneratorConfig(crop=(16, 16, 16)), lesions=source, lesion_label=9)
    labels_in = healthy.clone()
    labels_in[:, :, 14:18] = 3
    _, target = aug(scan, labels_in, seed=0, index=0)
    assert {3, 9} <= set(target.unique().tolist())


def test_a_multi_contrast_generator_config_serves_the_real_branch():
    """GeneratorConfig(channels=2) describes synthetic contrasts; a real scan keeps one geometry per sample."""
    scan, mask = _pair()
    img, tgt = RealAugmenter(GeneratorConfig(crop=CROP, channels=2))(scan.repeat(1, 2, 1, 1, 1), mask, seed=3)
    assert img.shape == (1, 2) + CROP and tgt.shape == (1,) + CROP
