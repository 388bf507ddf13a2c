"""Fast backends against the reference on a CUDA device at 96^3 and 192^3 (skipped without a GPU)."""
import importlib.util

import pytest
import torch

import synthgen
from synthgen import fast
from synthgen.config import GeneratorConfig
from synthgen.data.default_map import default_tissue_map

from reference_noise import reference_with_noise

BACKENDS = ["triton", pytest.param("cuda", marks=pytest.mark.skipif(importlib.util.find_spec("cupy") is None,
                                                                      reason="cupy is not installed"))]


def _inputs(size, B=2, seed=0):
    cfg = GeneratorConfig(crop=(size, size, size))
    tissue = default_tissue_map(device="cuda")
    params = synthgen.SynthGenerator(cfg).sample_params(tissue.shape, seed=seed, batch=B)
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (B, 1, size, size, size)
    texture = torch.randn(shape, generator=g, device="cuda")
    normals = (torch.randn(shape, generator=g, device="cuda"), torch.randn(shape, generator=g, device="cuda"))
    return cfg, tissue, params, texture, normals


@pytest.mark.gpu
@pytest.mark.parametrize("size", [96, 192])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_reference_on_device(monkeypatch, backend, size):
    cfg, tissue, params, texture, normals = _inputs(size)
    ref_img, ref_tgt = reference_with_noise(cfg, tissue, params, texture, normals)
    img, tgt = fast.generate_fast(cfg, tissue, params, None, backend, texture=texture, noise=normals)
    # nearest-label ties at exactly .5 and fma contraction may flip a handful of voxels
    assert (tgt != ref_tgt).float().mean() < 1e-5
    close = (img - ref_img).abs() <= 1e-3 + 1e-4 * ref_img.abs()
    assert close.float().mean() > 0.9999


@pytest.mark.gpu
def test_triton_and_cuda_warps_agree_on_device():
    pytest.importorskip("cupy")
    cfg, tissue, params, texture, normals = _inputs(96)
    a = fast.generate_fast(cfg, tissue, params, None, "triton", texture=texture, noise=normals)
    b = fast.generate_fast(cfg, tissue, params, None, "cuda", texture=texture, noise=normals)
    assert (a[1] != b[1]).float().mean() < 1e-5
    torch.testing.assert_close(a[0], b[0], atol=1e-3, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_device_noise_reproducible_and_memory_bounded(backend):
    cfg, tissue, params, _, _ = _inputs(192, B=4)
    fast.generate_fast(cfg, tissue, params, None, backend)           # compile outside the measurement
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    a, ta = fast.generate_fast(cfg, tissue, params, None, backend)
    torch.cuda.synchronize()
    outputs = a.numel() * a.element_size() + ta.numel()
    extra = torch.cuda.max_memory_allocated() - base - outputs
    assert extra <= 4 * outputs, f"extra {extra / 2**20:.0f} MiB for {outputs / 2**20:.0f} MiB of outputs"
    b, tb = fast.generate_fast(cfg, tissue, params, None, backend)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    flat = a.flatten(1).float()
    torch.testing.assert_close(flat.mean(1), torch.zeros(4, device="cuda"), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(4, device="cuda"), atol=1e-3, rtol=0)


@pytest.mark.gpu
def test_generator_uses_the_fast_path_on_cuda(monkeypatch):
    monkeypatch.delenv("SYNTHGEN_BACKEND", raising=False)
    calls = []
    real = fast.generate_fast
    monkeypatch.setattr(fast, "generate_fast", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=(96, 96, 96)))
    tissue = default_tissue_map(device="cuda")
    image, target = gen(tissue, seed=0, batch_size=2)
    assert calls and calls[0] in ("triton", "cuda")
    assert image.is_cuda and image.shape == (2, 1, 96, 96, 96) and target.dtype == torch.uint8
    # the same geometry as the CPU reference (targets up to nearest-label ties; the noise differs by device)
    _, cpu_target = gen(tissue.cpu(), seed=0, batch_size=2)
    assert (target.cpu() != cpu_target).float().mean() < 1e-4 and torch.isfinite(image).all()


@pytest.mark.gpu
def test_float16_work_volumes_on_device():
    import dataclasses
    cfg, tissue, params, _, _ = _inputs(192)
    a, ta = fast.generate_fast(cfg, tissue, params)
    b, tb = fast.generate_fast(dataclasses.replace(cfg, work_dtype="float16"), tissue, params)
    assert torch.equal(ta, tb)
    diff = (a - b).abs().flatten(1)
    # float16 rounds the warped intensity by up to 2^-11 of it; the gamma maps u = (x - lo) / span in [0, 1] to u^g,
    # Lipschitz (constant g) for g >= 1 but only Hoelder (|a^g - b^g| <= |a - b|^g) for g < 1, so near the image's
    # minimum one rounding can move a voxel by (2^-11 x / span)^g of the span: no fixed bound on the maximum there.
    # The bulk is bounded for every gamma, the maximum where g >= 1.
    assert float(diff.mean()) < 4e-3 and float(torch.quantile(diff[:, ::7].float(), 0.999)) < 0.05
    steep = params.gamma.to(diff.device) >= 1
    if bool(steep.any()):
        assert float(diff[steep].max()) < 0.05


@pytest.mark.gpu
def test_batches_made_ahead_on_a_side_stream_equal_the_inline_ones():
    from synthgen.data.prefetch import Prefetcher
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=(96, 96, 96)))
    tissue = default_tissue_map(device="cuda")

    def make(i):
        return gen(tissue, seed=3, index=2 * i, batch_size=2)

    inline = [make(i) for i in range(3)]
    with Prefetcher(make, range(3), depth=1, device="cuda") as ahead:
        for (a, ta), (b, tb) in zip(inline, ahead):
            assert torch.equal(a, b) and torch.equal(ta, tb)


def _never_waits(gen, tissue, affine=None):
    """Batches after the first (compile; the map's and the path's one-off checks) make no host sync."""
    gen(tissue, seed=0, batch_size=2, affine=affine)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(3):
            gen(tissue, seed=0, index=2 * i, batch_size=2, affine=affine)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_generation_never_waits_for_the_device(monkeypatch):
    """No host sync in a batch (after the map's one-off check): the host can queue batches ahead of the GPU."""
    monkeypatch.delenv("SYNTHGEN_BACKEND", raising=False)
    _never_waits(synthgen.SynthGenerator(GeneratorConfig(crop=(96, 96, 96))), default_tissue_map(device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["labels", "soft-lesion", "float16"])
def test_self_check_passes_on_the_device(kind, recwarn):
    """The first use of a configuration checks the fast path against the reference on this GPU: it must agree."""
    import dataclasses
    from synthgen.lesions import LesionSource
    monkey = {"float16": dict(work_dtype="float16")}.get(kind, {})
    cfg = dataclasses.replace(GeneratorConfig(crop=(96, 96, 96)), **monkey)
    tissue = default_tissue_map(device="cuda")
    if kind.startswith("soft"):
        tissue = torch.nn.functional.one_hot(tissue[:, 0].long(), 6).permute(0, 4, 1, 2, 3).float()
    ok, found = fast.self_check(cfg, tissue, (1,) if "lesion" in kind else None, "triton")   # (1,): "has a lesion"
    assert ok, found
    gen = synthgen.SynthGenerator(cfg, lesions=LesionSource.procedural() if "lesion" in kind else None)
    gen(tissue, seed=0)
    assert not [w for w in recwarn if "disagrees" in str(w.message)]


@pytest.mark.gpu
def test_mask_lesions_on_the_device_never_wait_for_it(monkeypatch):
    """Pasting masks from a bank, Soft-CP and fading inside the crop's reach: no host sync per batch."""
    from synthgen.lesions import LesionSource
    monkeypatch.delenv("SYNTHGEN_BACKEND", raising=False)
    tissue, affine = default_tissue_map(device="cuda", with_affine=True)
    masks = torch.zeros(3, *tissue.shape[2:])
    masks[0, 60:80, 90:120, 70:90] = 1
    masks[1, 120:140, 100:130, 60:85] = 1
    masks[2, 0:10, 0:10, 0:10] = 1
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=(96, 96, 96)), lesions=LesionSource.from_tensor(masks))
    _never_waits(gen, tissue, affine)


@pytest.mark.gpu
def test_procedural_lesions_on_the_device_never_wait_for_it(monkeypatch):
    """Procedural lesions (centres, boxes, growth, Soft-CP and fading over the crop's reach): no host sync per
    batch, and the same lesion masks as on the CPU (up to the scores' float rounding)."""
    from synthgen.config import LesionConfig
    from synthgen.lesions import LesionSource
    monkeypatch.delenv("SYNTHGEN_BACKEND", raising=False)
    tissue, affine = default_tissue_map(device="cuda", with_affine=True)
    src = LesionSource.procedural(affine, LesionConfig(healthy_probability=0.0))
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=(96, 96, 96)), lesions=src)
    _never_waits(gen, tissue, affine)
    keys = [3, 4]
    on_gpu, _ = src.sample_masks(tissue.expand(2, -1, -1, -1, -1), keys)
    on_cpu, _ = src.sample_masks(tissue.cpu().expand(2, -1, -1, -1, -1), keys)
    for a, b in zip(on_gpu.cpu(), on_cpu):         # each sample's lesion, not the map's background
        # a score tie broken otherwise by float rounding swaps one voxel in and one out (2 voxels of a XOR b): two
        # such ties, or 1 % of the lesion, whichever is more (Dice = 1 - |a XOR b| / (|a| + |b|))
        size, apart = float(a.sum() + b.sum()), float((a ^ b).sum())
        assert b.any() and apart <= max(4.0, 0.01 * size), (apart, size)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["fast", "torch"])
def test_training_batches_over_several_maps_never_wait(monkeypatch, backend):
    """The training data path on the device: a new map on most steps (read ahead, checked on the host copy),
    procedural lesions, the fast path or the reference on the device: no host sync after the first step."""
    from synthgen.config import LesionConfig
    from synthgen.data.sources import TensorTissueMaps
    from synthgen.data.training import TrainingBatches
    from synthgen.lesions import LesionSource
    if backend == "torch":
        monkeypatch.setenv("SYNTHGEN_BACKEND", "torch")
    else:
        monkeypatch.delenv("SYNTHGEN_BACKEND", raising=False)
    tissue, affine = default_tissue_map(with_affine=True)
    maps = TensorTissueMaps([torch.roll(tissue, 3 * i, 2) for i in range(5)], [affine] * 5)
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=(96, 96, 96)))
    src = LesionSource.procedural(affine, LesionConfig(healthy_probability=0.0))
    with TrainingBatches(gen, maps, seed=1, batch_size=2, device="cuda", lesions=src) as data:
        data.start(0, 8)
        data(0)                                 # compile, the path's one-off self-check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step in range(1, 8):
                data(step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert sum(data.map_index(s) != data.map_index(s - 1) for s in range(1, 8)) >= 3


@pytest.mark.gpu
@pytest.mark.parametrize("ahead", ["on", "off"])
def test_single_gpu_training_reaches_its_last_step(tmp_path, ahead):
    """``python train/run.py`` on one GPU: an index-less ``cuda`` device, with and without generate-ahead (the
    read-ahead thread once died on ``set_device(cuda)`` and step 0 waited forever)."""
    from synthgen.lesions import LesionSource
    from test_train import tiny
    from synthgen.train.loop import train
    cfg = tiny(tmp_path / "run", steps=3, ckpt_every=0)
    cfg.device, cfg.generate_ahead = "cuda", ahead
    lesions = (LesionSource.procedural(config=cfg.data.lesion), LesionSource.procedural(config=cfg.data.lesion))
    assert train(cfg, lesions=lesions, progress=False)["step"] == 3


@pytest.mark.gpu
def test_device_philox_noise_is_the_reference_draw():
    """The compiled Philox kernel on the GPU draws synthgen.ops.philox's normals (every stream, 64-bit seeds),
    and the normals are standard: mean 0, variance 1, within 5 standard errors over 2 x 96^3 draws."""
    from synthgen.kernels import triton_noise
    from synthgen.ops import philox
    seeds = torch.tensor([5, 2 ** 62 + 11], device="cuda")
    for stream in (0, 1, 2):
        out = triton_noise.randn(torch.empty(2, 96, 96, 96, device="cuda"), seeds, stream).reshape(2, -1)
        torch.testing.assert_close(out, philox.randn(seeds, out.shape[1], stream), atol=1e-5, rtol=1e-5)
        n = out.numel()
        assert abs(float(out.mean())) < 5 / n ** 0.5 and abs(float(out.var()) - 1) < 5 * (2 / n) ** 0.5
