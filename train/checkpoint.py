"""Training checkpoints: atomic writes and the random state needed to resume bit for bit.

A checkpoint is the ``synthgen.segment`` format (``{"model": state_dict, "config": {..., "model": build_unet
kwargs}}``, readable by ``load_checkpoint_model``) plus ``optimizer``, ``scheduler``, ``step`` and ``rng``
(the torch CPU / CUDA generator states of every rank). Synthesis needs no saved state: sample ``i`` of a step
is a pure function of ``(seed + rank, step * batch_size + i)``.
"""
from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from synthgen.io import atomic_path

LAST = "last.pt"


def atomic_torch_save(obj, path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (never half-written)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


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
    """
    net = model.module if hasattr(model, "module") else model
    cfg = dict(config)
    cfg["model"] = dict(model_kwargs)
    return atomic_torch_save({
        "model": net.state_dict(), "config": cfg, "train_config": config,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": int(step), "rng": list(rng), **extra}, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable, or missing the entries needed to resume (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (nothing to resume)")
    try:
        ckpt = torch.load(str(path), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: cannot be read as a checkpoint ({type(err).__name__}: {err})") from err
    need = ("model", "optimizer", "scheduler", "step", "rng", "train_config")
    missing = [k for k in need if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a resumable training checkpoint, missing {missing}")
    return ckpt
