"""Counter-based noise (Triton, Philox via ``tl.randn``): sample ``b`` draws from seed ``seed[b]`` at offset
``stream * N + voxel``, so a sample's noise depends only on its seed, never on the batch or the launch.
The acquisition noise has no pass of its own: :func:`noisy` runs in the epilogue of the pass before it.

Streams: 0 the texture field, 1 and 2 the real and imaginary noise channels.
"""
from __future__ import annotations

import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _randn_kernel(out_ptr, seed_ptr, N, stream, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    seed = tl.load(seed_ptr + b)
    z = tl.randn(seed, stream * N + offs)
    tl.store(out_ptr + b.to(tl.int64) * N + offs, z, mask=mask)


@triton.jit
def noisy(v, b, offs, mask, N, std_ptr, seed_ptr, n1_ptr, n2_ptr,
          PHILOX: tl.constexpr, RICIAN: tl.constexpr):
    """``v`` (voxels ``offs`` of sample ``b``) plus Gaussian or Rician noise of std ``std[b]``: normals from
    Philox (``seed[b]``, streams 1-2) or loaded from ``n1``/``n2``. Called in the epilogue of the last axis pass."""
    boff = b.to(tl.int64) * N
    s = tl.load(std_ptr + b)
    if PHILOX:
        seed = tl.load(seed_ptr + b)
        z1 = tl.randn(seed, N + offs)
    else:
        z1 = tl.load(n1_ptr + boff + offs, mask=mask, other=0.0)
    v = v + z1 * s
    if RICIAN:
        if PHILOX:
            z2 = tl.randn(seed, 2 * N + offs)
        else:
            z2 = tl.load(n2_ptr + boff + offs, mask=mask, other=0.0)
        q = z2 * s
        v = tl.sqrt(v * v + q * q)
    return v


def randn(out, seeds, stream: int):
    """Fill ``out`` ``(B, ...)`` (float32 or float16) with standard normals from ``seeds`` ``(B,)`` int64 on
    ``stream``."""
    B = out.shape[0]
    N = out[0].numel()
    _randn_kernel[(triton.cdiv(N, BLOCK), B)](out, seeds, N, stream, BLOCK=BLOCK)
    return out
