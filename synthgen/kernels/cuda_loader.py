"""CUDA C++ kernels (``csrc/*.cu``) compiled at run time with CuPy (NVRTC); the only module that imports CuPy.

Nothing is compiled at install: the first launch reads ``csrc/synth_warp.cu`` and builds it for the current
device (cached by CuPy). The same source builds as host C++ (``csrc/host_shim.cpp``) so tests run its logic on CPU
through :func:`kernel_args` + ctypes.
"""
from __future__ import annotations

import functools
from pathlib import Path



def _csrc_dir() -> Path:
    """The CUDA sources: the copy an installed wheel ships beside this module, else ``csrc/`` of the source tree."""
    here = Path(__file__).resolve().parent
    shipped = here / "csrc"
    return shipped if (shipped / "synth_warp.cu").is_file() else here.parents[1] / "csrc"


CSRC = _csrc_dir()
WARP_SOURCE = CSRC / "synth_warp.cu"
THREADS = 256


def spline_scale(n_ctrl: int, n_out: int) -> float:
    """Control-grid units per dense voxel, as in :func:`synthgen.fields.bspline_matrix`."""
    return (n_ctrl - 1) / (n_out - 1) if n_out > 1 else 0.0


def kernel_args(a, pmin=None, pmax=None):
    """Arguments of ``synth_warp_kernel`` as ``(kind, value)``: kind "p" pointer, "i" int32, "q" int64, "f" float32.

    ``a``: a :class:`synthgen.fast.WarpArgs` (float32 / uint8 tensors, contiguous; ``tissue`` uint8 labels or
    float32 probabilities); ``pmin`` / ``pmax`` ``(B, blocks)`` float32 partials filled with +inf / -inf, or None
    for no min/max.
    """
    D, H, W = a.crop
    labels = not a.tissue.is_floating_point()
    n1, n2, n3 = a.elastic.shape[2:]
    m1, m2, m3 = a.bias.shape[2:]
    ptr = lambda t: ("p", t.data_ptr() if t is not None else 0)   # noqa: E731
    return [ptr(a.tissue if labels else None), ptr(None if labels else a.tissue),
            ("i", 1 if labels else a.tissue.shape[1]), ("q", a.tissue_bstride), *[("i", s) for s in a.tissue.shape[2:]],
            ptr(a.lesion), ("q", a.lesion_bstride),
            *[("i", s) for s in (a.lesion.shape[2:] if a.lesion is not None else (1, 1, 1))],
            *[("i", int(o)) for o in a.lesion_offset], ("f", a.threshold), ptr(a.matrix), ptr(a.center),
            ptr(a.elastic), ("i", n1), ("i", n2), ("i", n3),
            ("f", spline_scale(n1, D)), ("f", spline_scale(n2, H)), ("f", spline_scale(n3, W)),
            ptr(a.bias), ("i", m1), ("i", m2), ("i", m3),
            ("f", spline_scale(m1, D)), ("f", spline_scale(m2, H)), ("f", spline_scale(m3, W)),
            ptr(a.mu), ptr(a.sigma), ("i", a.mu.shape[1]), ptr(a.texture), ptr(a.tex_scale), ptr(a.flip),
            ("i", D), ("i", H), ("i", W), ptr(a.image), ptr(a.target), ptr(a.classes), ("i", int(a.lesion_class)),
            ptr(pmin), ptr(pmax)]


@functools.lru_cache(maxsize=None)
def _kernel(name: str):
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError("the cuda backend needs CuPy (pip install cupy-cuda12x or cupy-cuda13x); "
                           "or set SYNTHGEN_BACKEND=triton") from err
    if not WARP_SOURCE.is_file():
        raise FileNotFoundError(f"CUDA source {WARP_SOURCE} is missing (an installed synthgen ships it in synthgen/kernels/csrc: reinstall the package)")
    module = cupy.RawModule(code=WARP_SOURCE.read_text(), options=("-std=c++17",))
    return module.get_function(name)


def warp_sample(args, minmax: bool = False):
    """Launch ``synth_warp_kernel`` on the current torch CUDA stream (``args``: a :class:`synthgen.fast.WarpArgs`).
    Returns the image's per-sample ``(min, max)``, each ``(B,)``, with ``minmax``; else None."""
    import numpy as np
    import torch
    kernel = _kernel("synth_warp_kernel")
    image = args.image
    B, N = image.shape[0], image[0].numel()
    blocks = (N + THREADS - 1) // THREADS
    pmin = pmax = None
    if minmax:
        pmin = torch.full((B, blocks), float("inf"), device=image.device)
        pmax = torch.full((B, blocks), float("-inf"), device=image.device)
    cast = {"p": np.uint64, "i": np.int32, "q": np.int64, "f": np.float32}
    values = tuple(cast[k](v) for k, v in kernel_args(args, pmin=pmin, pmax=pmax))
    import cupy
    with cupy.cuda.Device(image.device.index):
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(image.device).cuda_stream)
        kernel((blocks, B), (THREADS,), values, stream=stream)
    return (pmin.amin(1), pmax.amax(1)) if minmax else None
