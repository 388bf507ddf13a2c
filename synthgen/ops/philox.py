"""Triton's counter-based normals (``tl.randn``: Philox4x32-10, then Box-Muller) in plain torch, on any device.

The fast path draws its texture and acquisition noise with ``tl.randn(seed, offset)`` (see
:mod:`synthgen.kernels.triton_noise`). This is the same function, bit for bit up to the float rounding of
``log`` / ``cos``, so that the self-check can compare the kernels' noise itself with the reference on the device,
and tests can check it without a GPU. Unsigned 32-bit arithmetic runs in int64 with 16-bit halves for the high
product words.
"""
from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` (``a`` a 32-bit constant, ``b`` uint32 values in int64)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    lo_part = a_lo * b                                   # < 2^48
    hi_part = a_hi * b                                   # < 2^48
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = (((hi_part & 0xFFFF) << 16) + lo_part) & _MASK
    return hi, lo


def philox4x32(seed: torch.Tensor, offset: torch.Tensor, rounds: int = 10):
    """Triton's ``randint4x(seed, offset)`` for int64 ``seed`` ``(B, 1)`` and int32-range ``offset`` ``(N,)``:
    four ``(B, N)`` words as int64 in ``[0, 2^32)``."""
    c0 = (offset.to(torch.int64) & _MASK).expand(seed.shape[0], -1)
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0 = (seed & _MASK).expand_as(c0)
    k1 = ((seed >> 32) & _MASK).expand_as(c0)
    for _ in range(rounds):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK, (k1 + _KEY_B) & _MASK
    return c0, c1, c2, c3


def _uniform(x: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for 32-bit words: [0, 1) float32."""
    signed = torch.where(x >= 2 ** 31, x - 2 ** 32, x)                 # the bitcast to int32
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32, device=x.device)


def randn(seeds: torch.Tensor, n: int, stream: int = 0) -> torch.Tensor:
    """``(B, n)`` float32 standard normals: sample ``b``'s voxel ``i`` is ``tl.randn(seeds[b], stream * n + i)``,
    as :func:`synthgen.kernels.triton_noise.randn` and its epilogues draw them (streams 0 texture, 1-2 noise)."""
    seeds = seeds.reshape(-1, 1).to(torch.int64)
    offset = stream * n + torch.arange(n, device=seeds.device, dtype=torch.int64)
    if int(stream * n + n) > 2 ** 31:
        raise ValueError(f"offsets up to {stream * n + n} overflow the kernels' int32 offsets")
    i1, i2, _, _ = philox4x32(seeds, offset)
    u1 = _uniform(i1).clamp(min=1.0e-7)
    th = 6.283185307179586 * _uniform(i2)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(th)
