"""Every Triton kernel against the reference ops, on CPU under TRITON_INTERPRET=1 (odd sizes, batch 2)."""

import pytest
import torch

from interpreter import child_process_test, run_here, skip_unless_here

RUN_HERE = run_here()

pytest.importorskip("triton")

import synthgen
from synthgen import fast, ops
from synthgen.config import GeneratorConfig
from synthgen.kernels import triton_blur, triton_noise, triton_warp

from conftest import phantom_labels
from test_cuda_warp import CROP, make_case, many_labels_case, prepared_args, reference_warp


_interpreter_here = skip_unless_here(RUN_HERE)


SHAPE = (17, 12, 13)


@pytest.mark.parametrize("kind, tissue_dtype", [("labels", None), ("labels", torch.int64), ("probs", None),
                                                 ("probs", torch.float16), ("probs-lesion", None)])
def test_warp_matches_reference(kind, tissue_dtype):
    tissue, lesion, params, texture = make_case(kind)
    if tissue_dtype is not None:
        tissue = tissue.to(tissue_dtype)
    args = prepared_args(tissue, lesion, params, texture)       # the kernel reads fp16 probabilities directly
    triton_warp.warp_sample(args)
    ref_img, ref_tgt = reference_warp(tissue, lesion, params, texture)
    assert torch.equal(args.target, ref_tgt)
    torch.testing.assert_close(args.image, ref_img, atol=2e-4, rtol=2e-6)


def test_warp_reads_a_lesion_box_as_the_whole_map_with_zeros_around():
    tissue, lesion, params, texture = make_case("labels-lesion")
    lo, hi = (3, 2, 4), (11, 9, 12)
    box = tuple(w[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].contiguous() for w in lesion)
    full = tuple(torch.zeros_like(w) for w in lesion)
    for f, b in zip(full, box):
        f[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = b
    args = prepared_args(tissue, box + (lo,), params, texture)
    triton_warp.warp_sample(args)
    ref_img, ref_tgt = reference_warp(tissue, full, params, texture)       # zeros outside: the same sample
    assert torch.equal(args.target, ref_tgt) and (ref_tgt == 5).any()
    torch.testing.assert_close(args.image, ref_img, atol=2e-4, rtol=2e-6)
    img2, tgt2 = reference_warp(tissue, box + (lo,), params, texture)      # the reference reads the box alike
    assert torch.equal(tgt2, ref_tgt)
    torch.testing.assert_close(img2, ref_img, atol=2e-4, rtol=2e-6)   # grid_sample normalises by the box size


def test_warp_with_many_labels_matches_reference():
    tissue, lesion, params, texture, config = many_labels_case()
    args = prepared_args(tissue, lesion, params, texture, config=config)
    triton_warp.warp_sample(args)
    ref_img, ref_tgt = reference_warp(tissue, lesion, params, texture, config=config)
    assert torch.equal(args.target, ref_tgt) and int(ref_tgt.max()) == 7
    torch.testing.assert_close(args.image, ref_img, atol=2e-4, rtol=2e-6)


def test_warp_reads_a_batch_of_maps_with_its_own_stride():
    tissue, _, params, texture = make_case("labels")
    both = torch.cat([tissue, torch.flip(tissue, [2])])              # two different maps
    args = prepared_args(both, None, params, texture)
    triton_warp.warp_sample(args)
    ref_img, ref_tgt = reference_warp(both, None, params, texture)
    assert torch.equal(args.target, ref_tgt)
    torch.testing.assert_close(args.image, ref_img, atol=2e-4, rtol=2e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_blur_axis_matches_reference_per_sample(axis):
    g = torch.Generator().manual_seed(axis)
    x = torch.randn(2, *SHAPE, generator=g) * 10 + 50
    fwhm = torch.zeros(2, 3)
    fwhm[0, axis], fwhm[1, axis] = 2.7, 0.9                           # different kernels in one launch
    table, radius, _ = fast._kernel_table("cpu", fwhm[:, axis].tolist())
    y = triton_blur.blur_axis(x, torch.empty_like(x), table, radius, axis)
    ref = ops.gaussian_blur(x[:, None], fwhm)[:, 0]
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-6)


def test_blur_applies_the_folded_gamma_on_every_tap():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, *SHAPE, generator=g) * 100
    gamma_exp = torch.tensor([0.6, 1.8])
    lo, hi = x.flatten(1).amin(1), x.flatten(1).amax(1)
    gam = torch.stack([lo, (hi - lo).clamp(min=1e-6), gamma_exp], 1).contiguous()
    fwhm = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    table, radius, _ = fast._kernel_table("cpu", fwhm[:, 1].tolist())
    y = triton_blur.blur_axis(x, torch.empty_like(x), table, radius, 1, gam)
    ref = ops.gaussian_blur(ops.gamma_transform(x[:, None], gamma_exp), fwhm)[:, 0]
    torch.testing.assert_close(y, ref, atol=2e-4, rtol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("motion", [False, True])
def test_thick_slices_match_reference(axis, motion):
    """One composed blur (motion blur + slice profile) and the resample, as ops.thick_slices."""
    g = torch.Generator().manual_seed(10 + axis)
    x = torch.randn(2, *SHAPE, generator=g)
    spacing, motion_fwhm = torch.ones(2, 3), torch.zeros(2, 3)
    spacing[0, axis], spacing[1, axis] = 3.3, 1.0                     # sample 1 is not resampled
    if motion:
        motion_fwhm[0, axis], motion_fwhm[1, axis] = 1.4, 2.2
    r = spacing[:, axis]
    profile = torch.where(r > 1, r, torch.zeros(()))
    table, radius, _ = fast._kernel_table("cpu", motion_fwhm[:, axis].tolist(), profile.tolist())
    blurred = triton_blur.blur_axis(x, torch.empty_like(x), table, radius, axis)
    n = SHAPE[axis]
    n_low = torch.tensor([len(torch.arange(0, n - 1 + 1e-6, float(v), dtype=torch.float64)) for v in r],
                         dtype=torch.int32)
    y = triton_blur.resample_axis(blurred, torch.empty_like(x), r.contiguous(), n_low, axis)
    ref = ops.thick_slices(x[:, None], spacing, motion_fwhm)[:, 0]
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    if not motion:
        assert torch.equal(y[1], x[1])


@pytest.mark.parametrize("rician", [True, False])
def test_noise_from_given_normals_matches_reference(rician):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, *SHAPE, generator=g) * 100
    n1, n2 = torch.randn(2, *SHAPE, generator=g), torch.randn(2, *SHAPE, generator=g)
    std = torch.tensor([3.0, 0.0])
    ep = triton_blur.Epilogue(std, normals=(n1, n2), rician=rician, minmax=True)
    y = triton_blur.blur_axis(x, torch.empty_like(x), *_identity(2), 1, epilogue=ep)   # noise in the epilogue
    s = std.view(-1, 1, 1, 1)
    ref = torch.sqrt((x + n1 * s) ** 2 + (n2 * s) ** 2) if rician else x + n1 * s
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-6)
    assert torch.equal(ep.range[0], y.flatten(1).amin(1)) and torch.equal(ep.range[1], y.flatten(1).amax(1))


def _identity(B):
    return torch.ones(B, 1), torch.zeros(B, dtype=torch.int32)


@pytest.mark.parametrize("axis", [0, 2])
def test_epilogues_of_the_resample_pass(axis):
    """Philox noise and min/max ride on a resample pass exactly as on a blur pass (same voxels, same draws)."""
    g = torch.Generator().manual_seed(6)
    x = torch.rand(2, *SHAPE, generator=g) * 50
    std, seeds = torch.tensor([2.0, 5.0]), torch.tensor([11, 12])
    spacing, n_low = torch.tensor([2.5, 1.0]), torch.tensor([len(torch.arange(0, SHAPE[axis] - 1 + 1e-6, 2.5)),
                                                             SHAPE[axis]], dtype=torch.int32)
    plain = triton_blur.resample_axis(x, torch.empty_like(x), spacing, n_low, axis)
    ep = triton_blur.Epilogue(std, seeds, minmax=True)
    noisy = triton_blur.resample_axis(x, torch.empty_like(x), spacing, n_low, axis, epilogue=ep)
    ep2 = triton_blur.Epilogue(std, seeds)
    again = triton_blur.blur_axis(plain, torch.empty_like(x), *_identity(2), axis, epilogue=ep2)
    assert torch.equal(noisy, again)
    assert torch.equal(ep.range[0], noisy.flatten(1).amin(1)) and torch.equal(ep.range[1], noisy.flatten(1).amax(1))
    assert not torch.equal(noisy, plain)


def test_philox_noise_is_reproducible_and_seeded_per_sample():
    x = torch.zeros(2, *SHAPE)
    seeds = torch.tensor([123, 2 ** 61 + 7])
    a = triton_noise.randn(torch.empty_like(x), seeds, 0)
    b = triton_noise.randn(torch.empty_like(x), seeds, 0)
    c = triton_noise.randn(torch.empty(1, *SHAPE), seeds[1:], 0)
    d = triton_noise.randn(torch.empty_like(x), seeds, 1)
    assert torch.equal(a, b)                                          # same seed -> same bytes
    assert torch.equal(a[1], c[0])                                    # independent of the batch
    assert not torch.equal(a[0], a[1]) and not torch.equal(a, d)      # other seed / stream -> other noise


def test_philox_texture_statistics():
    """Blurred Philox texture: mean 0, variance 1 after the L2 scaling, lag-1 correlation of the kernel."""
    shape = (40, 40, 40)
    seeds = torch.tensor([1, 2])
    z = triton_noise.randn(torch.empty(2, *shape), seeds, 0)
    assert abs(float(z.mean())) < 4 / (z.numel() ** 0.5) and abs(float(z.var()) - 1) < 0.03
    fwhms = {"texture": [[[1.5, 1.5]]] * 3}                            # both samples, every axis
    blurs = [fast._blur_launch(fast.Pass("blur", "texture", a), fwhms, "cpu") for a in range(3)]
    t, _ = fast._run(blurs, z, torch.empty_like(z))
    k = ops.gaussian_kernel1d(1.5, dtype=torch.float64)
    t = t / float(k.pow(2).sum().sqrt() ** 3)
    inner = t[:, 8:-8, 8:-8, 8:-8]                                    # away from replicate borders
    rho = float((k[1:] * k[:-1]).sum() / k.pow(2).sum())              # expected lag-1 correlation per axis
    # ~2 * 24^3 effective samples / kernel correlation volume: 5 sigma ~ 0.05
    assert abs(float(inner.mean())) < 0.1 and abs(float(inner.var()) - 1) < 0.1
    for dim in (1, 2, 3):
        a, b = inner.narrow(dim, 0, inner.shape[dim] - 1), inner.narrow(dim, 1, inner.shape[dim] - 1)
        lag1 = float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))
        assert abs(lag1 - rho) < 0.05, (dim, lag1, rho)


def _minmax(x):
    """Per-sample (min, max) recorded in the epilogue of an identity blur pass, as the fast path records them."""
    ep = triton_blur.Epilogue(minmax=True)
    triton_blur.blur_axis(x, torch.empty_like(x), *_identity(x.shape[0]), 0, epilogue=ep)
    return ep.range


def test_minmax_and_histogram_quantiles_bound():
    g = torch.Generator().manual_seed(8)
    x = torch.cat([torch.randn(1, *SHAPE, generator=g) * 30 + 100,
                   torch.rand(1, *SHAPE, generator=g) ** 4 * 1e3])      # skewed second sample
    lo, hi = _minmax(x)
    assert torch.equal(lo, x.flatten(1).amin(1)) and torch.equal(hi, x.flatten(1).amax(1))
    qs = (0.0, 0.01, 0.5, 0.99, 1.0)
    ref = ops.quantiles(x, qs)
    span = (hi - lo).view(-1, 1)
    q1 = fast.hist_quantiles(x, lo, hi, qs, levels=1)
    q2 = fast.hist_quantiles(x, lo, hi, qs, levels=2)
    assert ((q1 - ref).abs() <= span / 4096 * 1.001).all()
    assert ((q2 - ref).abs() <= 4 * span / 4096 ** 2).all()


def test_constant_image_quantiles_are_the_constant():
    x = torch.full((2, *SHAPE), 7.5)
    lo, hi = _minmax(x)
    assert torch.equal(fast.hist_quantiles(x, lo, hi, (0.01, 0.99)), torch.full((2, 2), 7.5))


@pytest.fixture(scope="module")
def philox_sample():
    if not RUN_HERE:
        pytest.skip("runs in a child process")
    cfg = GeneratorConfig(crop=CROP)
    tissue, _, params, _ = make_case("labels")
    return cfg, tissue, params, fast.generate_fast(cfg, tissue, params)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_output(philox_sample, out_dtype):
    import dataclasses
    cfg, tissue, params, (img32, t32) = philox_sample
    img, t = fast.generate_fast(dataclasses.replace(cfg, image_dtype=str(out_dtype)[6:]), tissue, params)
    assert img.dtype == out_dtype and t.dtype == torch.uint8 and torch.equal(t, t32)
    # fp16: half an ulp (round to nearest); bf16: one ulp (the interpreter's cast truncates, the GPU's rounds)
    tol = 2 ** -11 if out_dtype == torch.float16 else 2 ** -7
    assert ((img.float() - img32).abs() <= tol * img32.abs() + 1e-7).all()


def test_in_kernel_noise_path_is_reproducible_and_normalised(philox_sample):
    cfg, tissue, params, (a, ta) = philox_sample
    b, tb = fast.generate_fast(cfg, tissue, params)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    mean, std = a.flatten(1).mean(1), a.flatten(1).std(1, unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(2), atol=1e-4, rtol=0)


def test_generator_dispatches_to_the_fast_path(monkeypatch):
    import synthgen.backend as backend
    monkeypatch.setattr(backend, "backend_status", lambda device: {"torch": None, "triton": None, "cuda": None})
    monkeypatch.setenv("SYNTHGEN_BACKEND", "triton")
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=CROP, target="lesion"))
    tissue = phantom_labels((13, 12, 14))
    image, target, params = gen(tissue, seed=2, batch_size=2, return_params=True)
    monkeypatch.setenv("SYNTHGEN_BACKEND", "torch")
    ref_image, ref_target = gen(tissue, params=params)
    assert torch.equal(target, ref_target)                            # the target does not depend on noise
    assert image.shape == ref_image.shape and not torch.equal(image, ref_image)   # Philox, not torch.randn


def test_generate_fast_rejects_bad_arguments():
    cfg = GeneratorConfig(crop=CROP)
    tissue, _, params, _ = make_case("labels")
    with pytest.raises(ValueError, match="`backend` must be 'triton' or 'cuda'"):
        fast.generate_fast(cfg, tissue, params, backend="torch")
    with pytest.raises(ValueError, match="`clip_levels` must be 1 or 2"):
        fast.generate_fast(cfg, tissue, params, clip_levels=3)
    with pytest.raises(ValueError, match="`config.image_dtype` must be one of"):
        fast.generate_fast(GeneratorConfig(crop=CROP, image_dtype="int8"), tissue, params)
    with pytest.raises(TypeError, match="`config` must be a GeneratorConfig"):
        fast.generate_fast({}, tissue, params)
    with pytest.raises(TypeError, match="`params` must be SampleParams"):
        fast.generate_fast(cfg, tissue, {})
    with pytest.raises(ValueError, match="`tissue` must be"):
        fast.generate_fast(cfg, tissue[0], params)
    with pytest.raises(ValueError, match="`texture` must be"):
        fast.generate_fast(cfg, tissue, params, texture=torch.zeros(3))
    with pytest.raises(ValueError, match="`noise` must be two"):
        fast.generate_fast(cfg, tissue, params, noise=(torch.zeros(3),))
    with pytest.raises(ValueError, match="`lesion` must be"):          # a box sticking out of the map
        fast.generate_fast(cfg, tissue, params, lesion=(torch.zeros(2, 1, 3, 3, 3),) * 2 + ((12, 0, 0),))
    with pytest.raises(ValueError, match="`lesion` must be"):
        fast.generate_fast(cfg, tissue, params, lesion=(torch.zeros(2, 1, 3, 3, 3), torch.zeros(2, 1, 3, 3, 4)))


test_interpreter_child_process = child_process_test(__file__, RUN_HERE)


def test_philox_reference_is_the_kernels_noise():
    """synthgen.ops.philox (plain torch, what the self-check compares the device's noise with) draws the
    kernels' tl.randn normals: every stream, 64-bit seeds, odd sizes."""
    from synthgen.ops import philox
    seeds = torch.tensor([123, 2 ** 61 + 7, 2 ** 32 - 1])
    for stream in (0, 1, 2):
        out = triton_noise.randn(torch.empty(3, *SHAPE), seeds, stream).reshape(3, -1)
        ref = philox.randn(seeds, out.shape[1], stream)
        torch.testing.assert_close(ref, out, atol=2e-6, rtol=2e-6)
