"""Lesions made only where the crop can see them: the reach box, boxed weights equal to the full-grid ones there,
the same samples end to end, and no host sync in the mask path."""
import numpy as np
import pytest
import torch

import synthgen
from synthgen import ops
from synthgen.config import AffineConfig, ElasticConfig, GeneratorConfig, LesionConfig
from synthgen.lesions import LesionSource

from conftest import phantom_labels

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (30, 36, 32)


def _masks():
    """Four masks on the tissue grid: inside, touching the border, empty, and one far off the crop's reach."""
    m = torch.zeros(4, *SHAPE)
    m[0, 12:18, 14:20, 12:17] = 1
    m[1, 0:5, 20:27, 25:32] = 1           # touches three faces of the map
    m[3, 25:30, 0:4, 0:5] = 1             # a corner: outside the region below
    return m


def test_reach_box_holds_every_coordinate_the_crop_samples():
    cfg = GeneratorConfig(crop=(16, 18, 14), elastic=ElasticConfig(max_std=6.0), affine=AffineConfig(rotation=30))
    gen = synthgen.SynthGenerator(cfg)
    for seed in range(4):
        p = gen.sample_params((1, 1, *SHAPE), seed=seed, batch=3)
        lo, hi = ops.reach_box(cfg.crop, p.matrix, p.center, p.elastic, SHAPE, margin=0)
        coords = ops.affine_elastic_coords(cfg.crop, p.matrix, p.center, p.elastic).reshape(-1, 3)
        inside = coords.clamp(min=0)
        inside = torch.minimum(inside, torch.tensor(SHAPE, dtype=coords.dtype) - 1)  # the map's own clip
        assert (inside.floor() >= torch.tensor(lo)).all() and (inside.ceil() < torch.tensor(hi)).all()
    p = gen.sample_params((1, 1, *SHAPE), seed=0, batch=1)
    assert ops.reach_box(cfg.crop, p.matrix, p.center + 500.0, p.elastic, SHAPE) is None   # misses the map


def test_boxed_weights_equal_the_full_grid_inside_the_region():
    tissue = phantom_labels(SHAPE).expand(8, -1, -1, -1, -1)
    src = LesionSource.from_tensor(_masks(), config=LesionConfig(healthy_probability=0.3, count=(1, 2),
                                                                  clip_to="none"))
    region = ((0, 8, 8), (20, 36, 32))
    keys = list(range(40, 48))
    full_i, full_l = src.sample_dense(tissue, keys)
    part_i, part_l = src.sample_dense(tissue, keys, region=region)
    inner = (slice(None), slice(None), *(slice(a, b) for a, b in zip(*region)))
    assert torch.equal(part_i[inner], full_i[inner]) and torch.equal(part_l[inner], full_l[inner])
    outside = torch.ones_like(part_l, dtype=torch.bool)
    outside[inner] = False
    assert not part_l[outside].any() and full_l[outside].any()      # nothing is made beyond the region
    boxed = src.sample(tissue, keys, region=region)
    assert boxed is not None and all(a >= r for a, r in zip(boxed[2], region[0]))
    assert np.prod(boxed[0].shape[2:]) < np.prod(SHAPE)
    # a batch whose lesions all lie outside the region (or that is lesion-free) gives no weights at all
    far = LesionSource.from_tensor(_masks()[3:], config=LesionConfig(healthy_probability=0.0))
    assert far.sample(tissue[:1], [1], region=region) is None
    healthy = LesionSource.from_tensor(_masks(), config=LesionConfig(healthy_probability=1.0))
    assert healthy.sample(tissue[:2], [1, 2]) is None


def test_crop_only_lesions_give_the_same_samples(monkeypatch):
    """The generator's boxed, crop-only lesions and the old full-grid weights make the same bytes."""
    monkeypatch.setenv("SYNTHGEN_BACKEND", "torch")
    tissue = phantom_labels(SHAPE)
    cfg = GeneratorConfig(crop=(16, 18, 14))
    src = LesionSource.from_tensor(_masks()[:2], config=LesionConfig(healthy_probability=0.0))

    class FullGrid:              # the weights on the whole map, as before the lesion box existed
        def sample(self, tissue, keys, affine=None, classes=None, region=None):
            return src.sample_dense(tissue, keys, affine, classes)

    a = synthgen.SynthGenerator(cfg, lesions=src)(tissue, seed=3, batch_size=3)
    b = synthgen.SynthGenerator(cfg, lesions=FullGrid())(tissue, seed=3, batch_size=3)
    assert torch.equal(a[1], b[1]) and (a[1] == 5).any()
    # the reference's trilinear pull normalises coordinates by the volume's size: last-bit differences of the
    # weights (the kernels subtract the box's integer offset, exactly)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)


def test_mask_lesions_make_no_host_sync():
    """The mask path runs on meta tensors, which refuse any read back to the host (.item(), bool(), .cpu())."""
    tissue = torch.zeros(2, 1, *SHAPE, dtype=torch.uint8, device="meta")
    src = LesionSource.from_tensor(_masks(), config=LesionConfig(healthy_probability=0.0, count=(1, 2)))
    out = src.sample(tissue, [5, 6], region=((0, 0, 0), SHAPE))
    assert out is not None and out[0].device.type == "meta"
    with pytest.raises((RuntimeError, NotImplementedError)):     # the check itself: meta tensors cannot sync
        bool(tissue.any())


def test_a_voxel_space_bank_ignores_the_maps_affine():
    """Masks given on the tissue grid itself (from_tensor without an affine) stay where they are, whatever
    affine the map carries (training always passes the map's)."""
    tissue = phantom_labels(SHAPE)
    src = LesionSource.from_tensor(_masks()[:1], config=LesionConfig(healthy_probability=0.0, clip_to="none"))
    mni = np.diag([2.0, 2.0, 2.0, 1.0])
    mni[:3, 3] = [-30, -36, -32]
    plain = src.sample_dense(tissue, [3])[1]
    placed = src.sample_dense(tissue, [3], affine=mni)[1]
    assert torch.equal(plain, placed) and int((plain > 0.5).sum()) == int(_masks()[0].sum())


def test_boxed_weights_of_a_sample_do_not_depend_on_its_batch():
    """The fading is evaluated on the lesion's own box, not on the batch's region: the same key gives the same
    bytes alone and beside other samples."""
    tissue = phantom_labels(SHAPE)
    src = LesionSource.from_tensor(_masks()[:2], config=LesionConfig(healthy_probability=0.0))
    alone = src.sample_dense(tissue, [11], region=((0, 0, 0), (20, 36, 32)))
    both = src.sample_dense(tissue.expand(2, -1, -1, -1, -1), [11, 12], region=((0, 0, 0), (30, 36, 32)))
    inside = (slice(None), slice(None), slice(0, 20))
    assert torch.equal(alone[0][inside], both[0][:1][inside]) and torch.equal(alone[1][inside], both[1][:1][inside])


def test_seeing_box_holds_every_output_voxel_that_reaches_the_lesion_box():
    cfg = GeneratorConfig(crop=(16, 18, 14), elastic=ElasticConfig(max_std=6.0), affine=AffineConfig(rotation=30))
    gen = synthgen.SynthGenerator(cfg)
    lo, hi = (9, 12, 10), (15, 20, 14)
    for seed in range(4):
        p = gen.sample_params((1, 1, *SHAPE), seed=seed, batch=2)
        coords = ops.affine_elastic_coords(cfg.crop, p.matrix, p.center, p.elastic)
        boxes = ops.seeing_box(cfg.crop, p.matrix, p.center, p.elastic, lo, hi, margin=0)
        for b, box in enumerate(boxes):
            # voxels whose trilinear footprint touches the box: coordinate in [lo - 1, hi)
            near = ((coords[b] > torch.tensor(lo) - 1) & (coords[b] < torch.tensor(hi))).all(-1)
            if box is None:
                assert not near.any()
                continue
            inside = torch.zeros_like(near)
            inside[tuple(slice(a, z) for a, z in zip(*box))] = True
            assert not (near & ~inside).any()
    # without elastic displacement the box is that of the lesion seen through the affine: a part of the crop
    rigid = synthgen.SynthGenerator(GeneratorConfig(crop=(24, 24, 24), elastic=ElasticConfig(max_std=0.0)))
    p = rigid.sample_params((1, 1, *SHAPE), seed=0, batch=1)
    (box,) = ops.seeing_box((24, 24, 24), p.matrix, p.center, p.elastic, lo, hi)
    assert box is not None and np.prod([z - a for a, z in zip(*box)]) < 24 ** 3 / 4


@pytest.mark.parametrize("soft", [False, True])
def test_procedural_lesions_make_no_host_sync(soft):
    """Procedural lesions run on meta tensors too: centres, boxes and growth never read the device back (the
    operations that run are fixed by the key's draws on the host, not by the map's voxels)."""
    if soft:
        tissue = torch.zeros(2, 6, *SHAPE, dtype=torch.float32, device="meta")
    else:
        tissue = torch.zeros(2, 1, *SHAPE, dtype=torch.uint8, device="meta")
    src = LesionSource.procedural(None, LesionConfig(healthy_probability=0.0, count=(1, 2)))
    region = ((2, 0, 4), (28, 36, 30))
    out = src.sample(tissue, [5, 6], region=region)
    assert out is not None and out[0].device.type == "meta"
    assert tuple(out[2]) == region[0] and tuple(out[0].shape[2:]) == tuple(b - a for a, b in zip(*region))
    # per sample, its own crop's reach (None: it sees none of the map): the weights cover their union
    out = src.sample(tissue, [5, 6], region=[((2, 0, 4), (20, 30, 30)), ((6, 3, 1), (28, 36, 12))])
    assert tuple(out[2]) == (2, 0, 1) and tuple(out[0].shape[2:]) == (26, 36, 29)
    out = src.sample(tissue, [5, 6], region=[None, ((6, 3, 1), (28, 36, 12))])
    assert tuple(out[2]) == (6, 3, 1) and tuple(out[0].shape[2:]) == (22, 33, 11)
    assert src.sample(tissue, [5, 6], region=[None, None]) is None


def test_procedural_weights_do_not_depend_on_their_box(monkeypatch):
    """A CPU boxes procedural weights by the lesion's voxels, a GPU by the crop's reach alone (no read back):
    the same bytes, and within a region those of the whole map."""
    import synthgen.lesions.source as source
    tissue = phantom_labels(SHAPE).expand(3, -1, -1, -1, -1)
    src = LesionSource.procedural(None, LesionConfig(healthy_probability=0.2))
    keys = [21, 22, 23]
    tight = src.sample_dense(tissue, keys)
    region = ((4, 6, 3), (26, 30, 29))
    part = src.sample_dense(tissue, keys, region=region)
    monkeypatch.setattr(source, "components_box", lambda comps, shape: ((0, 0, 0), tuple(shape)))
    whole = src.sample_dense(tissue, keys)
    assert (tight[1] > 0.5).any()
    for a, b in zip(tight, whole):
        assert torch.equal(a, b)
    inner = (slice(None), slice(None), *(slice(a, b) for a, b in zip(*region)))
    assert torch.equal(part[0][inner], tight[0][inner]) and torch.equal(part[1][inner], tight[1][inner])
    assert not part[1].sum() > tight[1].sum()


@pytest.mark.parametrize("soft", [False, True])
def test_reference_blends_the_lesion_only_where_it_is_seen(soft):
    """The reference warp pulls and blends a lesion only where output voxels see its box: the image and target of
    gmm_sample's blend of the weights pulled over the whole crop (an independent full-grid computation)."""
    from synthgen.reference import label_tables, warp_sample_ref
    from synthgen.lesions.source import dense_weights
    tissue = phantom_labels(SHAPE).expand(2, -1, -1, -1, -1)
    cfg = GeneratorConfig(crop=(16, 18, 14))
    p = synthgen.SynthGenerator(cfg).sample_params((1, 1, *SHAPE), seed=2, batch=2)
    masks = torch.zeros(2, *SHAPE)
    masks[0, 8:20, 10:24, 9:22] = 1
    masks[1, 0:9, 20:36, 20:32] = 1       # at the map's border
    src = LesionSource.from_tensor(masks, config=LesionConfig(healthy_probability=0.0, count=(2, 2), clip_to="none"))
    lesion = src.sample(tissue, [1, 2])
    if soft:
        tissue = torch.nn.functional.one_hot(tissue[:, 0].long(), 6).permute(0, 4, 1, 2, 3).float()
    texture = torch.randn(2, 1, *cfg.crop, generator=torch.Generator().manual_seed(0))
    table, lesion_class = label_tables(cfg, "cpu")
    image, target = warp_sample_ref(tissue, lesion, p, texture, cfg.crop, table, lesion_class, cfg.lesion_threshold)
    coords = ops.affine_elastic_coords(cfg.crop, p.matrix, p.center, p.elastic)
    # the lesion weights of the whole map, pulled at every output voxel (less the box offset the boxed pull
    # subtracts, so both interpolate at the same coordinates)
    lo = torch.tensor(lesion[2], dtype=coords.dtype)
    # the map boxes the generator pulls from (the weights' own, the crop's reach): a box's normalised grid
    # rounds float32 coordinates its own way, a few 1e-6 voxel, which a class edge turns into 1e-4 of intensity
    w = ops.grid_pull(torch.cat(lesion[:2], 1), coords - lo, "linear", ((0, 0, 0), lesion[0].shape[2:]))
    reach = ops.reach_box(cfg.crop, p.matrix, p.center, p.elastic, SHAPE)
    if soft:
        probs = ops.grid_pull(tissue, coords, "linear", reach)
        warped = torch.cat([probs[:, :1] + (1 - probs.sum(1, keepdim=True)).clamp(min=0), probs[:, 1:]], 1)
        labels = table[warped.argmax(1, keepdim=True)]
    else:
        warped = ops.grid_pull(tissue, coords, "nearest", reach)
        labels = table[warped.long()]
    expected = ops.bias_field(ops.gmm_sample(warped, p.gmm_mu, p.gmm_sigma, texture, w[:, :1].clamp(0, 1)), p.bias)
    labels = torch.where(w[:, 1:] > cfg.lesion_threshold, torch.tensor(lesion_class, dtype=torch.uint8), labels)
    assert (labels == lesion_class).any() and torch.equal(target, labels)
    # the trilinear pull over a part of the crop rounds the last bits differently (vector lanes vs the tail)
    torch.testing.assert_close(image, expected, atol=1e-4, rtol=1e-6)
    assert dense_weights(lesion, tissue)[1].any()
