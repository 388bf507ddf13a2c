"""What the MONAI, TorchIO and PyTorch adapters share: channel-first inputs as other libraries give them, one
synthetic sample with its output grid's affine, and optional imports that name the extra to install.

Other libraries hand over one subject at a time, channel first and without a batch axis: ``(C, X, Y, Z)``, label
maps often as float (MONAI's ``LoadImaged``). The generator wants ``(B, C, X, Y, Z)`` with integer labels or
float probabilities; :func:`as_tissue` converts, :func:`synth_one` generates one sample and returns it channel
first, with the target's channel axis that losses such as MONAI's ``DiceCELoss`` expect.
"""
from __future__ import annotations

import importlib

import numpy as np
import torch

from .sampling import MAX_TISSUE_CHANNELS


def require(module: str, extra: str):
    """Import an optional dependency, or raise ImportError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"this part of synthgen needs {module.split('.')[0]}: pip install 'synthgen[{extra}]' "
                          f"(or pip install {extra})") from err


def as_tensor(x, name: str) -> torch.Tensor:
    """A plain ``torch.Tensor`` view of a tensor, MetaTensor or numpy array (metadata dropped)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x.as_subclass(torch.Tensor) if type(x) is not torch.Tensor else x


def as_tissue(x, name: str = "label", num_labels: int = MAX_TISSUE_CHANNELS) -> torch.Tensor:
    """A channel-first tissue map ``(C, X, Y, Z)`` as the generator's ``(1, C, X, Y, Z)`` input.

    One channel: integer labels (0 bg, 1 GM, 2 WM, 3 PV, 4 CSF, 5+ extra non-brain tissue; or the
    ``num_labels`` labels of the generator's :class:`synthgen.config.LabelConfig`), of any integer dtype or as
    float holding integer values -> uint8. Two or more float channels: probabilities in that order.

    Raises:
        TypeError / ValueError: naming ``name``: not 4D, non-integer values in a one-channel float map, or labels
            outside ``[0, num_labels - 1]``.
    """
    t = as_tensor(x, name)
    if t.ndim != 4:
        raise ValueError(f"`{name}` must be channel-first (C, X, Y, Z), got shape {tuple(t.shape)}"
                         + (" (add a channel axis, e.g. MONAI EnsureChannelFirstd)" if t.ndim == 3 else ""))
    if t.shape[0] == 1:                                     # one channel: a label map
        if t.is_floating_point() and not (bool(torch.isfinite(t).all()) and bool((t == t.round()).all())):
            raise ValueError(f"`{name}` with one channel must hold integer labels, got non-integer values "
                             f"(probabilities need one channel per class, 2..{MAX_TISSUE_CHANNELS})")
        lo, hi = float(t.min()), float(t.max())
        if lo < 0 or hi > num_labels - 1:
            raise ValueError(f"`{name}` labels must be in [0, {num_labels - 1}] (0 bg, 1 GM, 2 WM, 3 PV, 4 CSF, 5+ "
                             f"other tissue; other label sets: map them with synthgen.data.LabelMapping and set "
                             f"GeneratorConfig.labels), got [{lo:g}, {hi:g}]")
        return t.to(torch.uint8)[None]
    if not t.is_floating_point():
        raise ValueError(f"`{name}` integer labels must have one channel, got shape {tuple(t.shape)} "
                         f"(several channels are probabilities: float)")
    return t.float()[None]


def synth_one(generator, tissue: torch.Tensor, seed: int, index: int = 0, affine=None, device=None):
    """One synthetic sample, channel first, with its output grid's voxel -> world affine.

    Args:
        generator: a :class:`synthgen.SynthGenerator`.
        tissue: ``(1, C, X, Y, Z)`` (see :func:`as_tissue`).
        seed, index: the sample's stream and index (:meth:`SynthGenerator.__call__`).
        affine: the map's ``(4, 4)`` voxel -> world affine (None: identity).
        device: where to generate (default: the map's device).

    Returns:
        ``(image (1, *crop) float, target (1, *crop) uint8, affine (4, 4) float64 CPU tensor)``.
    """
    if device is not None:
        tissue = tissue.to(device)
    map_affine = None if affine is None else np.asarray(affine, dtype=np.float64)
    image, target, params = generator(tissue, seed=int(seed), index=int(index), batch_size=1, return_params=True,
                                      affine=map_affine)     # lesion masks are placed on the map by it
    out_affine = generator.output_affine(params, affine)[0]
    return image[0], target, out_affine


def affine_of(x, default=None) -> np.ndarray:
    """The 4x4 affine of a MetaTensor (``x.affine``), else ``default``, else identity, as float64 numpy."""
    aff = getattr(x, "affine", None)
    if aff is None:
        aff = default
    if aff is None:
        return np.eye(4)
    aff = aff.detach().cpu().numpy() if isinstance(aff, torch.Tensor) else np.asarray(aff)
    aff = np.asarray(aff, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {aff.shape}")
    return aff
