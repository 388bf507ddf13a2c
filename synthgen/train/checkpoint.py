"""Training checkpoints: atomic writes, a checksum, the previous one kept, and the random state needed to resume bit
for bit.

A checkpoint is the ``synthgen.segment`` format (``{"model": state_dict, "config": {..., "model": build_unet
kwargs}}``, readable by ``load_checkpoint_model``) plus ``optimizer``, ``scheduler``, ``step`` and ``rng``
(the torch CPU / CUDA generator states of every rank) and ``checksum`` (SHA-256 of all of it,
:func:`synthgen.segment.model.state_digest`). Synthesis needs no saved state: sample ``i`` of a step is a pure function
of ``(seed + rank, step * batch_size + i)``.

A run folder holds ``last.pt`` and ``prev.pt`` (the checkpoint before it): writing a new one renames ``last.pt`` to
``prev.pt`` only once the new file is complete. :func:`load_resume_checkpoint` takes ``last.pt`` and falls back to
``prev.pt``, with a warning, when ``last.pt`` is missing, corrupt (checksum), holds non-finite weights or contradicts
the run (its step outside the schedule, another architecture or class count).
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from synthgen.io import atomic_path
from synthgen.segment.model import read_checkpoint, verify_checkpoint, with_checksum

LAST = "last.pt"
PREV = "prev.pt"            # the checkpoint before last.pt, the fallback when last.pt is damaged


def atomic_torch_save(obj, path, keep_previous: bool = False) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (never half-written); with
    ``keep_previous`` the file already at ``path`` becomes :data:`PREV` beside it once the new one is complete."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        if keep_previous and path.is_file():
            os.replace(path, path.with_name(PREV))
    return path


def rng_state(device: torch.device) -> dict:
    """The global random states this process uses (torch CPU, the CUDA device's, and Python/numpy for safety)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # plain types and tensors only, so that ``torch.load(weights_only=True)`` reads the checkpoint
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path, *, model, optimizer, scheduler, step: int, config: dict, model_kwargs: dict,
                    rng: list, **extra) -> Path:
    """Write a resumable checkpoint atomically.

    Args:
        model: the network (a DDP wrapper is unwrapped).
        config: the resolved ``TrainConfig.to_dict()``; stored as ``config`` with ``config["model"]``
            replaced by ``model_kwargs`` so that ``synthgen.segment.load_checkpoint_model`` can rebuild the net,
            and in full as ``train_config``.
        rng: one :func:`rng_state` per rank, in rank order.

    The checkpoint gets its checksum; the one it replaces is kept as :data:`PREV`.
    """
    net = model.module if hasattr(model, "module") else model
    cfg = dict(config)
    cfg["model"] = dict(model_kwargs)
    return atomic_torch_save(with_checksum({
        "model": net.state_dict(), "config": cfg, "train_config": config,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": int(step), "rng": list(rng), **extra}), path, keep_previous=True)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable, corrupt (checksum), weights not finite, or missing the entries needed to resume
            (the message names the file).
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location, missing="checkpoint not found (nothing to resume)")
    need = ("model", "optimizer", "scheduler", "step", "rng", "train_config")
    missing = [k for k in need if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a resumable training checkpoint, missing {missing}")
    verify_checkpoint(ckpt, path)
    return ckpt


def load_resume_checkpoint(out, map_location="cpu", fits=None) -> tuple[dict, Path]:
    """The checkpoint a run in folder ``out`` resumes from: ``last.pt``, or ``prev.pt`` (with a warning on stderr)
    when ``last.pt`` is missing or damaged, or when ``fits(ckpt, path)`` refuses it (raises ``ValueError``: a
    checkpoint that contradicts the run, :func:`synthgen.validate.check_resume_fits`).

    Returns:
        ``(checkpoint, path)``.

    Raises:
        FileNotFoundError: neither file exists (nothing to resume).
        ValueError: both are damaged (each reason listed).
    """
    out = Path(out)
    reasons = []
    for name in (LAST, PREV):
        path = out / name
        if not path.is_file():
            reasons.append(f"{path}: missing")
            continue
        try:
            ckpt = load_checkpoint(path, map_location)
            if fits is not None:
                fits(ckpt, path)
        except ValueError as err:
            reasons.append(str(err))
            continue
        if reasons:
            print(f"warning: {reasons[0]}; resuming from {path} (step {int(ckpt['step'])}) instead", file=sys.stderr)
        return ckpt, path
    if all(r.endswith(": missing") for r in reasons):
        raise FileNotFoundError(f"{out / LAST}: checkpoint not found (nothing to resume)")
    raise ValueError("no checkpoint to resume from: " + "; ".join(reasons))    # one line naming both files
