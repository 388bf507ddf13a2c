"""The bundled default tissue map: hard labels derived from the MNI152 2009a template.

The file ``default/mni152_2009a_tissue_labels.nii.gz`` ships with the package (licence in
``default/LICENSE.txt``) and is made by ``scripts/derive_default_tissue_map.py``; nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

DEFAULT_TISSUE_LABELS: dict[str, int] = {
    "background": 0,  # air, outside the head
    "gm": 1,
    "wm": 2,
    "pv": 3,  # GM/WM partial volume
    "csf": 4,
    "non_brain": 5,  # inside the intracranial mask but neither brain nor CSF: dura, sinuses, vessels
    "head_inner": 6,  # the head outside the intracranial mask, by depth: 0-5.5 mm,
    "head_middle": 7,  # 5.5-9 mm
    "head_outer": 8,  # 9-11 mm (layers measured on SynthSeg's whole-head label maps; see the script)
}
DEFAULT_TISSUE_MAP_SHAPE = (197, 233, 189)
_FILENAME = "mni152_2009a_tissue_labels.nii.gz"


def default_tissue_map_path() -> Path:
    """Return the path of the bundled MNI152 2009a tissue label map (.nii.gz)."""
    return Path(__file__).resolve().parent / "default" / _FILENAME


@functools.lru_cache(maxsize=4)
def _load_labels(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a uint8 label map; cached, returned arrays are read-only."""
    import nibabel as nib

    if not Path(path).is_file():
        raise FileNotFoundError(f"default tissue map not found: {path}")
    img = nib.load(path)
    if img.shape != DEFAULT_TISSUE_MAP_SHAPE:
        raise ValueError(f"`{path}` must have shape {DEFAULT_TISSUE_MAP_SHAPE}, got {img.shape}")
    if img.get_data_dtype() != np.uint8:
        raise ValueError(f"`{path}` must store uint8 labels, got {img.get_data_dtype()}")
    labels = np.asarray(img.dataobj, dtype=np.uint8)
    top = max(DEFAULT_TISSUE_LABELS.values())
    if labels.max() > top:
        raise ValueError(f"`{path}` must hold labels 0..{top}, got maximum {int(labels.max())}")
    affine = np.asarray(img.affine, dtype=np.float64)
    labels.setflags(write=False)
    affine.setflags(write=False)
    return labels, affine


def default_tissue_map(
    device: torch.device | str | None = None, with_affine: bool = False
) -> torch.Tensor | tuple[torch.Tensor, np.ndarray]:
    """Load the bundled MNI152 2009a tissue label map (1 mm, RAS).

    Labels follow ``DEFAULT_TISSUE_LABELS``: 0 background, 1 GM, 2 WM, 3 GM/WM partial volume,
    4 CSF, 5-8 non-brain tissue (5 inside the intracranial mask; 6, 7, 8 the head's inner, middle and outer
    layers), each drawing its own Gaussian and background in the targets. The file is read once per process;
    each call returns a new tensor.

    Args:
        device: device of the returned tensor (default CPU).
        with_affine: also return the voxel-to-world (MNI mm) affine.

    Shape:
        labels: (1, 1, 197, 233, 189), uint8.

    Returns:
        The label tensor, or ``(labels, affine)`` with a float64 (4, 4) numpy affine when
        ``with_affine`` is true.

    Raises:
        FileNotFoundError: if the bundled file is missing (a broken install).
        ValueError: if the bundled file has the wrong shape, dtype or label values.
    """
    labels, affine = _load_labels(str(default_tissue_map_path()))
    tensor = torch.tensor(labels, dtype=torch.uint8, device=device)[None, None]
    if with_affine:
        return tensor, affine.copy()
    return tensor
