"""The fused fast path against the reference generator, on CPU under TRITON_INTERPRET=1 (tiny volumes)."""

import pytest
import torch

from interpreter import child_process_test, run_here, skip_unless_here

RUN_HERE = run_here()

pytest.importorskip("triton")

import synthgen
from synthgen import fast
from synthgen.config import (AnisotropyConfig, GeneratorConfig, MotionBlurConfig, NoiseConfig,
                             SmoothConfig)

from conftest import phantom_labels
from reference_noise import reference_with_noise


_interpreter_here = skip_unless_here(RUN_HERE)


CROP = (9, 10, 11)
MAP = (13, 12, 14)


def _config(**kw):
    base = dict(crop=CROP, motion=MotionBlurConfig(probability=1.0), anisotropy=AnisotropyConfig(probability=1.0),
                smooth=SmoothConfig(probability=1.0), skull_strip_probability=0.5)
    base.update(kw)
    return GeneratorConfig(**base).validate()


def _params(cfg, B=2, seed=0):
    p = synthgen.SynthGenerator(cfg).sample_params((1, 1, *MAP), seed=seed, batch=B)
    # make the per-sample switches differ inside the batch
    p.skull_strip = torch.tensor([True, False] * (B // 2))
    p.flip = torch.tensor([[True, False, True], [False, True, False]] * (B // 2))
    p.spacing = torch.tensor([[2.5, 2.5, 2.5], [1.0, 3.3, 1.0]] * (B // 2))
    p.motion_fwhm = torch.tensor([[0.0, 2.5, 0.0], [0.0, 0.0, 1.7]] * (B // 2))
    p.gmm_fwhm = torch.tensor([1.3, 0.0] * (B // 2))
    return p


def _probabilities(labels):
    onehot = torch.nn.functional.one_hot(labels[:, 0].long(), 6).permute(0, 4, 1, 2, 3).float()
    soft = torch.nn.functional.avg_pool3d(onehot, 3, 1, 1, count_include_pad=False)
    return (soft / soft.sum(1, keepdim=True)).contiguous()


def _lesion(B):
    g = torch.Generator().manual_seed(7)
    lab = (torch.rand(B, 1, *MAP, generator=g) > 0.6).float()
    lab = torch.nn.functional.avg_pool3d(lab, 3, 1, 1)
    return lab * 0.8, lab


@pytest.mark.parametrize("kind", ["labels", "probs-lesion", "labels-lesion-binary-gaussian"])
def test_fast_matches_reference(kind):
    B = 2
    extra = {}
    if "binary" in kind:
        extra = dict(target="lesion", noise=NoiseConfig(kind="gaussian"))
    cfg = _config(**extra)
    params = _params(cfg, B)
    labels = phantom_labels(MAP)
    tissue = _probabilities(labels) if kind.startswith("probs") else labels
    lesion = _lesion(B) if "lesion" in kind else None
    g = torch.Generator().manual_seed(1)
    texture = torch.randn(B, 1, *CROP, generator=g)
    normals = (torch.randn(B, 1, *CROP, generator=g), torch.randn(B, 1, *CROP, generator=g))
    ref_img, ref_tgt = reference_with_noise(cfg, tissue, params, texture, normals, lesion)
    img, tgt = fast.generate_fast(cfg, tissue, params, lesion, "triton", texture=texture, noise=normals)
    assert img.shape == ref_img.shape and tgt.shape == ref_tgt.shape and tgt.dtype == torch.uint8
    assert torch.equal(tgt, ref_tgt)
    # z-scored output: float32 rounding through ~10 passes and the 2-level histogram clip (measured <= 1.2e-6)
    torch.testing.assert_close(img, ref_img, atol=2e-5, rtol=1e-5)
    if kind == "labels":      # 1-level clip: within 1/4096 of the range (~ 6 z units) of the exact quantile
        img1, _ = fast.generate_fast(cfg, tissue, params, lesion, "triton", texture=texture, noise=normals,
                                     clip_levels=1)
        assert (img1 - ref_img).abs().max() < 6.0 / 4096 and not torch.equal(img1, img)



def _many_labels(n=40):
    """A map of ``n`` labels (beyond the 15 of our convention) and its LabelConfig: tied pairs, a target set."""
    g = torch.Generator().manual_seed(5)
    labels = phantom_labels(MAP).long()
    split = torch.randint(0, 8, labels.shape, generator=g)                 # 8 labels per phantom class
    tissue = torch.where(labels > 0, (labels - 1) * 8 + 1 + split, 0).clamp(max=n - 1).to(torch.uint8)
    from synthgen.config import LabelConfig
    classes = (0,) + tuple(min(1 + (g_ - 1) // 8, 5) for g_ in range(1, n))
    gaussians = (0,) + tuple(1 + (g_ - 1) // 2 for g_ in range(1, n))      # labels 1+2, 3+4, ... share one
    targets = (0,) + tuple(g_ % 7 for g_ in range(1, n))                   # 7 target classes, some background
    return tissue, LabelConfig(classes=classes, gaussians=gaussians, targets=targets)


@pytest.mark.parametrize("target", ["tissue", "labels", "lesion"])
def test_fast_matches_reference_with_many_labels(target):
    """A 40-label map: per-label Gaussians by table lookup and the label -> target table, on both paths."""
    tissue, labels = _many_labels()
    cfg = _config(labels=labels, target=target)
    params = _params(cfg)
    assert params.gmm_mu.shape == (2, 41)
    g = torch.Generator().manual_seed(1)
    texture = torch.randn(2, 1, *CROP, generator=g)
    normals = (torch.randn(2, 1, *CROP, generator=g), torch.randn(2, 1, *CROP, generator=g))
    lesion = _lesion(2)
    ref_img, ref_tgt = reference_with_noise(cfg, tissue, params, texture, normals, lesion)
    img, tgt = fast.generate_fast(cfg, tissue, params, lesion, "triton", texture=texture, noise=normals)
    assert torch.equal(tgt, ref_tgt)
    torch.testing.assert_close(img, ref_img, atol=2e-5, rtol=1e-5)
    lesion_class = {"tissue": 5, "labels": 7, "lesion": 1}[target]
    assert int(tgt.max()) == lesion_class and (tgt == lesion_class).any()


def test_the_pass_plan_is_what_runs(monkeypatch):
    """generate_fast launches exactly the axis passes of fast.pass_plan, in its order (the roofline model costs it)."""
    from synthgen.kernels import triton_blur, triton_noise
    launched = []
    for module, name in ((triton_blur, "blur_axis"), (triton_blur, "resample_axis"), (triton_noise, "randn")):
        real = getattr(module, name)

        def record(*a, _real=real, _name=name, **k):
            launched.append(("randn", None) if _name == "randn" else
                            ("blur" if _name == "blur_axis" else "resample", k["axis"]))
            return _real(*a, **k)
        monkeypatch.setattr(module, name, record)
    cfg = _config()
    for seed in range(3):
        params = _params(cfg, seed=seed)
        params.smooth_fwhm = torch.tensor([0.0, 1.1 * seed])
        launched.clear()
        fast.generate_fast(cfg, phantom_labels(MAP), params)
        plan = [(p.name, p.axis) for p in fast.pass_plan(cfg, params) if p.name in ("randn", "blur", "resample")]
        assert launched == plan and len(plan) > 4


def _auto_fast_path(monkeypatch):
    """The generator's automatic choice made to pick Triton on this CPU (the interpreter runs it)."""
    import synthgen.generator as generator_module
    monkeypatch.delenv("SYNTHGEN_BACKEND", raising=False)
    monkeypatch.delenv("SYNTHGEN_SELF_CHECK", raising=False)
    monkeypatch.setattr(generator_module, "select_backend", lambda device, available: "triton")
    monkeypatch.setattr(fast, "_checked", {})


def test_self_check_passes_and_the_fast_path_runs(monkeypatch, recwarn):
    _auto_fast_path(monkeypatch)
    calls = []
    real = fast.generate_fast
    monkeypatch.setattr(fast, "generate_fast", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    gen = synthgen.SynthGenerator(_config())
    gen(phantom_labels(MAP), seed=0)
    gen(phantom_labels(MAP), seed=1)
    assert len(calls) == 3 and not [w for w in recwarn if "disagrees" in str(w.message)]   # checked once
    ok, found = fast.self_check(_config(), phantom_labels(MAP), None, "triton")
    assert ok and "max |image - reference|" in found


def test_a_corrupted_fast_path_falls_back_to_the_reference_with_a_warning(monkeypatch):
    from synthgen.kernels import triton_warp
    _auto_fast_path(monkeypatch)
    real = triton_warp.warp_sample

    def corrupted(args, minmax=False):        # a compiler bug: one voxel in a thousand off by a lot
        out = real(args, minmax=minmax)
        args.image.view(-1)[::997] += 50.0
        return out
    monkeypatch.setattr(triton_warp, "warp_sample", corrupted)
    cfg = _config()
    tissue = phantom_labels(MAP)
    with pytest.warns(RuntimeWarning, match=r"triton fast path disagrees with the reference .*max \|image"):
        image, target = synthgen.SynthGenerator(cfg)(tissue, seed=2, batch_size=2)
    import synthgen.generator as generator_module
    monkeypatch.setattr(generator_module, "select_backend", lambda device, available: "torch")
    ref_image, ref_target = synthgen.SynthGenerator(cfg)(tissue, seed=2, batch_size=2)
    assert torch.equal(image, ref_image) and torch.equal(target, ref_target)       # the reference ran
    # a failure to compile or launch falls back alike, naming the exception
    monkeypatch.setattr(triton_warp, "warp_sample", lambda args, minmax=False: 1 / 0)
    ok, found = fast.self_check(cfg, tissue, None, "triton")
    assert not ok and "ZeroDivisionError" in found


def test_a_forced_or_unchecked_fast_path_does_not_fall_back(monkeypatch, recwarn):
    import synthgen.backend as backend
    import synthgen.generator as generator_module
    from synthgen.kernels import triton_warp
    _auto_fast_path(monkeypatch)
    real = triton_warp.warp_sample

    def corrupted(args, minmax=False):
        out = real(args, minmax=minmax)
        args.image.view(-1)[::997] += 50.0
        return out
    monkeypatch.setattr(triton_warp, "warp_sample", corrupted)
    cfg, tissue = _config(), phantom_labels(MAP)
    monkeypatch.setattr(generator_module, "select_backend", lambda device, available: "torch")
    reference = synthgen.SynthGenerator(cfg)(tissue, seed=2, batch_size=2)[0]
    monkeypatch.setattr(backend, "backend_status", lambda device: {"torch": None, "triton": None, "cuda": None})
    monkeypatch.setattr(generator_module, "select_backend", backend.select_backend)
    monkeypatch.setenv("SYNTHGEN_BACKEND", "triton")                  # forced: runs, no check, no fallback
    forced = synthgen.SynthGenerator(cfg)(tissue, seed=2, batch_size=2)[0]
    monkeypatch.delenv("SYNTHGEN_BACKEND")
    monkeypatch.setenv("SYNTHGEN_SELF_CHECK", "0")                    # unchecked: the same
    unchecked = synthgen.SynthGenerator(cfg)(tissue, seed=2, batch_size=2)[0]
    assert not torch.equal(forced, reference) and torch.equal(forced, unchecked) and fast._checked == {}
    assert not [w for w in recwarn if "disagrees" in str(w.message)]


def test_float16_work_volumes_keep_the_output():
    """Half-precision intermediates: same target, same normalisation, image within ~0.01 z units of float32."""
    cfg32, cfg16 = _config(crop=(12, 11, 13)), _config(crop=(12, 11, 13), work_dtype="float16")
    tissue = phantom_labels(MAP)
    params = synthgen.SynthGenerator(cfg32).sample_params(tissue.shape, seed=1, batch=2)
    a, ta = fast.generate_fast(cfg32, tissue, params)
    b, tb = fast.generate_fast(cfg16, tissue, params)
    assert torch.equal(ta, tb) and b.dtype == torch.float32
    diff = (a - b).abs()
    assert 0 < float(diff.max()) < 0.03 and float(diff.mean()) < 4e-3     # measured 0.008 / 0.001
    torch.testing.assert_close(b.flatten(1).mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(b.flatten(1).std(1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)


def test_float16_work_volumes_need_the_triton_warp():
    cfg = _config(work_dtype="float16")
    with pytest.raises(ValueError, match="needs the triton backend"):
        fast.generate_fast(cfg, phantom_labels(MAP), _params(cfg), backend="cuda")


test_interpreter_child_process = child_process_test(__file__, RUN_HERE)


def test_self_check_crop_keeps_each_sizes_divisibility_by_16():
    # Triton specialises integer arguments on divisibility by 16: the check's crop must give the config's kernels
    for n in range(1, 400):
        m = fast.self_check_size(n, 32)
        assert m % 16 == n % 16 and m <= 47 and (m == n or n > 47)
    cfg = GeneratorConfig(crop=(192, 97, 100))
    assert fast._self_check_config(cfg).crop == (32, 33, 36)
    # products keep their remainders too: the strides and voxel counts the kernels get
    assert (192 * 97 * 100) % 16 == (32 * 33 * 36) % 16 and (97 * 100) % 16 == (33 * 36) % 16


def test_self_check_compares_the_kernels_own_noise(monkeypatch):
    """The check runs the fast path's Philox texture and noise (what training runs), not injected volumes: a
    texture drawn from the wrong counter, or acquisition noise from the wrong seed, fails it."""
    from synthgen.kernels import triton_blur, triton_noise
    cfg, tissue = _config(), phantom_labels(MAP)
    ok, found = fast.self_check(cfg, tissue, None, "triton")
    assert ok, found
    real_randn = triton_noise.randn
    monkeypatch.setattr(triton_noise, "randn", lambda out, seeds, stream: real_randn(out, seeds, stream + 3))
    ok, found = fast.self_check(cfg, tissue, None, "triton")
    assert not ok and "max |image - reference|" in found
    monkeypatch.setattr(triton_noise, "randn", real_randn)
    real_epilogue = triton_blur.Epilogue

    def other_seed(std=None, seeds=None, *a, **k):
        return real_epilogue(std, None if seeds is None else seeds + 1, *a, **k)
    monkeypatch.setattr(triton_blur, "Epilogue", other_seed)
    ok, found = fast.self_check(cfg, tissue, None, "triton")
    assert not ok and "max |image - reference|" in found


def test_self_check_rule_excuses_only_what_a_changed_class_reaches():
    """One voxel of another class: the image may differ there and where the blurs carry it, nowhere else."""
    B, crop = 1, (9, 10, 11)
    params = _params(_config(), B=2).select(1)          # slice profile on axis 1, smoothing off
    params.motion_fwhm = torch.zeros(1, 3)
    params.spacing = torch.ones(1, 3)
    params.smooth_fwhm = torch.tensor([0.8])
    params.flip = torch.tensor([[False, False, False]])
    ref_img, ref_tgt = torch.zeros(B, 1, *crop), torch.ones(B, *crop, dtype=torch.uint8)
    tgt = ref_tgt.clone()
    tgt[0, 4, 5, 5] = 2                                 # one voxel changed class
    img = ref_img.clone()
    img[0, 0, 4, 5, 5] = 2.0                            # its class contrast
    img[0, 0, 4, 5, 6] = 0.3                            # what the smoothing (FWHM 0.8: taps ~0.06) carries next door
    diff, agree = fast._compare(img, ref_img, tgt, ref_tgt, params)
    assert diff == 0.0 and agree == pytest.approx(1 - 1 / (9 * 10 * 11))
    img[0, 0, 0, 0, 0] = 0.01                           # a voxel no blur reaches from there
    diff, _ = fast._compare(img, ref_img, tgt, ref_tgt, params)
    assert diff == pytest.approx(0.01)
