"""Host -> device copies that never make the host wait (the one helper every per-batch path uses)."""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on ``device`` without a host sync: on CUDA through pinned memory and a non-blocking copy
    (torch's pinned-memory allocator keeps the block until the copy has run). A plain ``.to("cuda")`` of a host
    tensor waits for the stream, i.e. for every kernel queued before it, and the host could not run ahead."""
    device = torch.device(device)
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.contiguous().pin_memory().to(device, non_blocking=True)
    return t.to(device)
