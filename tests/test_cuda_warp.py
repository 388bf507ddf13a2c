"""CUDA C++ warp: nvcc compiles it; its logic runs on CPU through the host build (g++ + ctypes)."""
import ctypes
import shutil
import subprocess

import pytest
import torch

from synthgen import fast, ops
from synthgen.config import GeneratorConfig
from synthgen.reference import label_tables, warp_sample_ref
from synthgen.kernels import cuda_loader
from synthgen.sampling import sample_params

from conftest import phantom_labels

CROP = (9, 10, 11)
MAP = (13, 12, 14)


def make_case(kind: str, B: int = 2, seed: int = 0):
    """Tissue, lesion, params, texture and flips of a small batch whose samples differ."""
    labels = phantom_labels(MAP)
    if kind.startswith("probs"):
        onehot = torch.nn.functional.one_hot(labels[:, 0].long(), 6).permute(0, 4, 1, 2, 3).float()
        soft = torch.nn.functional.avg_pool3d(onehot, 3, 1, 1, count_include_pad=False)
        tissue = (soft / soft.sum(1, keepdim=True) * 0.98).contiguous()     # 2 % outside mass -> background
    else:
        tissue = labels
    g = torch.Generator().manual_seed(seed + 11)
    lesion = None
    if "lesion" in kind:
        lab = torch.nn.functional.avg_pool3d((torch.rand(B, 1, *MAP, generator=g) > 0.6).float(), 3, 1, 1)
        lesion = (lab * 0.7, lab)
    params = sample_params(GeneratorConfig(crop=CROP), MAP, seed, 0, B)
    params.flip = torch.tensor([[True, False, True], [False, True, False]] * (B // 2))
    texture = torch.randn(B, 1, *CROP, generator=g)
    return tissue, lesion, params, texture


def tables(config=None):
    return label_tables(config or GeneratorConfig(crop=CROP), "cpu")


def reference_warp(tissue, lesion, params, texture, threshold=0.5, config=None):
    """The generator's reference warp stage (:func:`synthgen.reference.warp_sample_ref`), target flipped as
    the kernels write it."""
    B = len(params)
    image, target = warp_sample_ref(tissue.expand(B, *tissue.shape[1:]), lesion, params, texture, CROP,
                                    *tables(config), threshold)
    return image[:, 0], ops.flip(target, params.flip)[:, 0]


def prepared_args(tissue, lesion, params, texture, threshold=0.5, config=None):
    """The warp launch arguments exactly as synthgen.fast prepares them (outputs pre-filled with garbage)."""
    B = len(params)
    image = torch.full((B, *CROP), float("nan"))
    target = torch.full((B, *CROP), 255, dtype=torch.uint8)
    return fast.warp_args(tissue, lesion, params, texture.reshape(B, *CROP).contiguous(), torch.ones(B), image,
                          target, tables(config), threshold)


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is absent")
    out = tmp_path_factory.mktemp("host") / "libsynth_host.so"
    subprocess.run(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Werror",
                    str(cuda_loader.CSRC / "host_shim.cpp"), "-o", str(out)], check=True, capture_output=True)
    return ctypes.CDLL(str(out))


def _run_host(lib, args, threads=64):
    """Run the host build; returns the (B, blocks) min/max partials it filled."""
    kinds = {"p": ctypes.c_void_p, "i": ctypes.c_int, "q": ctypes.c_longlong, "f": ctypes.c_float}
    B, N = args.image.shape[0], args.image[0].numel()
    blocks = (N + threads - 1) // threads
    pmin, pmax = torch.full((B, blocks), float("inf")), torch.full((B, blocks), float("-inf"))
    values = [kinds[k](v) for k, v in cuda_loader.kernel_args(args, pmin=pmin, pmax=pmax)]
    lib.synth_warp_host(ctypes.c_uint(blocks), ctypes.c_uint(B), ctypes.c_uint(threads), *values)
    return pmin, pmax


def many_labels_case(B: int = 2):
    """A 40-label map with tied Gaussians and a label -> target table (labels target), lesion included."""
    from synthgen.config import LabelConfig
    labels = phantom_labels(MAP).long()
    split = torch.randint(0, 8, labels.shape, generator=torch.Generator().manual_seed(3))
    tissue = torch.where(labels > 0, (labels - 1) * 8 + 1 + split, 0).clamp(max=39).to(torch.uint8)
    config = GeneratorConfig(crop=CROP, target="labels", labels=LabelConfig(
        classes=(0,) + (1,) * 39, gaussians=(0,) + tuple(1 + (g - 1) // 2 for g in range(1, 40)),
        targets=(0,) + tuple(g % 7 for g in range(1, 40))))
    _, lesion, _, texture = make_case("labels-lesion", B)
    params = sample_params(config, MAP, 0, 0, B)
    return tissue, lesion, params, texture, config


@pytest.mark.parametrize("kind", ["labels", "probs", "labels-lesion", "probs-lesion", "many-labels",
                                  "labels-lesion-box"])
def test_host_build_matches_reference(host_lib, kind):
    config = None
    if kind == "many-labels":
        tissue, lesion, params, texture, config = many_labels_case()
    else:
        tissue, lesion, params, texture = make_case(kind)
    if kind.endswith("-box"):       # weights over a box of the map, zero elsewhere
        lo, hi = (2, 3, 1), (10, 12, 9)
        lesion = tuple(w[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].contiguous() for w in lesion) + (lo,)
    args = prepared_args(tissue, lesion, params, texture, config=config)
    pmin, pmax = _run_host(host_lib, args)
    ref_img, ref_tgt = reference_warp(tissue, lesion, params, texture, config=config)
    if kind == "many-labels":
        assert int(ref_tgt.max()) == 7 and len(ref_tgt.unique()) == 8      # 7 target classes and the lesion
    assert torch.equal(args.target, ref_tgt)
    # float32 spline/affine arithmetic in another order: coordinates agree to ~1e-5 voxel
    torch.testing.assert_close(args.image, ref_img, atol=2e-4, rtol=2e-6)   # measured <= 3e-7 relative
    # block partials of the image's range (the last block is partly outside the volume)
    blocks = torch.nn.functional.pad(args.image.flatten(1), (0, 64 * pmin.shape[1] - args.image[0].numel()),
                                     value=float("nan")).reshape(len(params), -1, 64)
    torch.testing.assert_close(pmin, blocks.nan_to_num(float("inf")).amin(2))
    torch.testing.assert_close(pmax, blocks.nan_to_num(float("-inf")).amax(2))


@pytest.mark.parametrize("case", ["random", "negative-zero", "zeros-only", "infinities"])
def test_float_atomics_by_integer_order(host_lib, case):
    """sg_atomic_min / sg_atomic_max order floats by their int32 / uint32 bits, as the device's integer atomics do
    (the host build runs that code): equal to numpy's min / max, -0.0 included (its bits are INT_MIN as an int)."""
    import numpy as np
    rng = np.random.default_rng(0)
    vals = {"random": rng.standard_normal(2000).astype(np.float32) * 100,
            "negative-zero": np.array([-3.5, -0.0, -1e-30, -2.0], np.float32),
            "zeros-only": np.array([-0.0, -0.0, 0.0, -0.0], np.float32),
            "infinities": np.array([-np.inf, -0.0, np.inf, 7.0], np.float32)}[case]
    if case == "random":
        vals[::97] = -0.0
    lo, hi = ctypes.c_float(float("inf")), ctypes.c_float(float("-inf"))
    host_lib.sg_minmax_host(vals.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(len(vals)), ctypes.byref(lo),
                            ctypes.byref(hi))
    assert lo.value == vals.min() and hi.value == vals.max(), (lo.value, hi.value)


def test_nvcc_compiles_the_kernel(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is absent")
    out = tmp_path / "synth_warp.cubin"
    res = subprocess.run([nvcc, "-cubin", "-arch=sm_90", "-std=c++17", str(cuda_loader.WARP_SOURCE), "-o", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size > 0


def test_missing_cupy_is_a_clear_error(monkeypatch):
    import sys
    cuda_loader._kernel.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(RuntimeError, match="the cuda backend needs CuPy"):
        cuda_loader._kernel("synth_warp_kernel")
    cuda_loader._kernel.cache_clear()


def test_missing_source_is_a_clear_error(monkeypatch, tmp_path):
    import sys
    import types
    cuda_loader._kernel.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    monkeypatch.setattr(cuda_loader, "WARP_SOURCE", tmp_path / "gone.cu")
    with pytest.raises(FileNotFoundError, match="gone.cu is missing"):
        cuda_loader._kernel("synth_warp_kernel")
    cuda_loader._kernel.cache_clear()


def test_host_build_flips_each_axis_alone(host_lib):
    """One sample per flipped axis: the target lands reversed along that axis only, as the reference flips it."""
    tissue, lesion, params, texture = make_case("labels-lesion", B=3)
    params.flip = torch.eye(3, dtype=torch.bool)
    args = prepared_args(tissue, lesion, params, texture)
    _run_host(host_lib, args)
    assert torch.equal(args.target, reference_warp(tissue, lesion, params, texture)[1])
