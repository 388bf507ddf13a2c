"""Which implementation runs an op: the one place that decides, and that can say why.

CPU tensors run the plain-torch reference. CUDA tensors run the fastest registered fast path that can run
(Triton, CUDA C++), falling back to the reference; the generator checks a fast path against the reference once
per configuration and device before trusting it (:func:`synthgen.fast.checked_backend`). ``SYNTHGEN_BACKEND=
torch|triton|cuda`` forces one: a forced backend that cannot run raises with the reason instead of falling back,
and is not checked. Nothing here touches CUDA at import.
"""
from __future__ import annotations

import importlib.util
import os

BACKENDS = ("torch", "triton", "cuda")


def backend_status(device) -> dict[str, str | None]:
    """For each backend, None when it can run on ``device``, else the reason it cannot."""
    import torch

    dev = torch.device(device)
    reasons: dict[str, str | None] = {"torch": None}
    if dev.type != "cuda":
        reasons["triton"] = f"Triton kernels need a CUDA device, got {dev}"
        reasons["cuda"] = f"CUDA kernels need a CUDA device, got {dev}"
        return reasons
    reasons["triton"] = None if importlib.util.find_spec("triton") else "the triton package is not installed"
    reasons["cuda"] = None if importlib.util.find_spec("cupy") else "the cupy package is not installed"
    return reasons


def forced_backend() -> str | None:
    """The backend SYNTHGEN_BACKEND forces, or None."""
    return os.environ.get("SYNTHGEN_BACKEND", "").strip().lower() or None


def select_backend(device, available=("torch",)) -> str:
    """The backend to use on ``device`` among those that implement the op (``available``).

    Raises:
        ValueError: SYNTHGEN_BACKEND names an unknown backend.
        RuntimeError: the forced backend cannot run here or does not implement this op.
    """
    forced = forced_backend()
    status = backend_status(device)
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"SYNTHGEN_BACKEND must be one of {BACKENDS}, got {forced!r}")
        if status[forced] is not None:
            raise RuntimeError(f"SYNTHGEN_BACKEND={forced} cannot run: {status[forced]}")
        if forced not in available:
            raise RuntimeError(f"SYNTHGEN_BACKEND={forced}: this op has no {forced} implementation "
                               f"(it has {', '.join(available)})")
        return forced
    # preference order: Triton first until a GPU run measures the CUDA warp against it (benchmarks/throughput.py)
    for name in ("triton", "cuda"):
        if name in available and status[name] is None:
            return name
    return "torch"
