"""A bank of binary lesion masks in world (MNI) space: read once, placed onto any tissue map at sample time.

Each mask is binarised with an explicit threshold in its own grid and kept on the host as the uint8 crop of its
bounding box with the crop's voxel -> world affine (the 1449 SOOP masks take about 0.2 GB; from a packed store
the crops are the boxes' memory-mapped bits, one bit a voxel, decoded when pasted). One bank serves every tissue map and both splits:
:meth:`MaskBank.paste` places a mask onto a map's grid by the two affines (nearest neighbour through world
coordinates) on the map's device, touching only the box that the mask covers there, so its cost depends on the
lesion, not on the map.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..device import to_device
from ..io import load_nifti
from ..validate import check_grid, mask_coverage_problem

SPLITS = (None, "train", "holdout")


def holdout_bucket(name: str) -> float:
    """A number in [0, 1) fixed by the file name alone (SHA-1), so a split never depends on the file set."""
    return int(hashlib.sha1(Path(name).name.encode()).hexdigest()[:12], 16) / float(1 << 48)


def in_split(name: str, split, holdout_fraction: float) -> bool:
    """Whether the mask ``name`` belongs to ``split`` (None: every mask)."""
    return split is None or (holdout_bucket(name) < holdout_fraction) == (split == "holdout")


def crop_to_foreground(mask: np.ndarray, affine: np.ndarray):
    """``(crop, crop_affine)``: the bounding box of the true voxels of a 3D mask, as uint8, with the affine of its
    first voxel (world positions unchanged); None for an empty mask."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return None
    lo, hi = idx.min(0), idx.max(0) + 1
    crop = np.ascontiguousarray(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.uint8)
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = out[:3, :3] @ lo + out[:3, 3]
    return crop, out


def box_in_grid(src_shape, src_affine, shape, affine):
    """Voxel box ``(lo, hi)`` of the grid ``(shape, affine)`` that covers a source grid's voxels (one voxel of
    margin on each side); None when it misses the grid."""
    n = np.asarray(src_shape)
    corners = np.array([[x, y, z, 1.0] for x in (-1, n[0]) for y in (-1, n[1]) for z in (-1, n[2])])
    target = corners @ (np.linalg.inv(affine) @ np.asarray(src_affine, np.float64)).T
    lo = np.clip(np.floor(target[:, :3].min(0)), 0, shape).astype(int)
    hi = np.clip(np.ceil(target[:, :3].max(0)) + 1, 0, shape).astype(int)
    if np.any(hi <= lo):
        return None
    return tuple(lo.tolist()), tuple(hi.tolist())


def nearest_box(src: torch.Tensor, src_affine, lo, hi, affine) -> torch.Tensor:
    """Values of ``src`` (3D, on its device) at the voxels ``[lo, hi)`` of the grid ``affine``, by nearest
    neighbour through world coordinates; zero outside ``src``.

    Grids whose axes map onto each other (a signed permutation with scaling: reorientation, other voxel sizes)
    are gathered axis by axis; any other (oblique) pair goes through every voxel's coordinates.
    """
    dev = src.device
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    box = np.array(affine, dtype=np.float64)
    box[:3, 3] = box[:3, :3] @ np.asarray(lo, np.float64) + box[:3, 3]
    v2v = np.linalg.inv(np.asarray(src_affine, np.float64)) @ box        # box voxel -> src voxel
    m, t = v2v[:3, :3], v2v[:3, 3]
    big = np.abs(m) > 1e-9 * np.abs(m).max()
    n = src.shape
    if (big.sum(1) == 1).all() and (big.sum(0) == 1).all():
        axis_of = big.argmax(1)                    # the box axis that src axis r follows
        index, valid = [], []
        for r in range(3):
            c = np.floor(m[r, axis_of[r]] * np.arange(shape[axis_of[r]]) + t[r] + 0.5).astype(np.int64)
            index.append(to_device(torch.from_numpy(np.clip(c, 0, n[r] - 1)), dev))    # no host sync on CUDA
            valid.append(to_device(torch.from_numpy((c >= 0) & (c < n[r])), dev))
        out = src[index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]]
        out = out * (valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]).to(out.dtype)
        return out.permute(*np.argsort(axis_of).tolist())   # axes back in box order
    axes = [torch.arange(s, device=dev, dtype=torch.float64) for s in shape]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    up = lambda a: to_device(torch.as_tensor(a), dev)       # noqa: E731  (no host sync on CUDA)
    c = torch.floor(ijk @ up(np.ascontiguousarray(m.T)) + up(t) + 0.5).long()
    size = up(np.asarray(n, dtype=np.int64))
    ok = ((c >= 0) & (c < size)).all(-1)
    c = torch.minimum(c.clamp(min=0), size - 1)
    return src[c[..., 0], c[..., 1], c[..., 2]] * ok.to(src.dtype)


@dataclass
class MaskBank:
    """Binary masks in world space, each a uint8 crop of its bounding box with the crop's voxel -> world affine.

    ``space`` is "world" for masks read from files or a store (placed by the tissue map's affine) and "voxel" for
    masks given on the tissue grid itself (:func:`masks_from_tensor` without an affine).
    """
    crops: list = field(default_factory=list)      # (d, h, w) uint8 arrays on the host (from a store: bit-packed
                                                   # boxes or memmap views, read with np.asarray)
    affines: list = field(default_factory=list)    # 4x4 voxel -> world (mm) of each crop
    names: list = field(default_factory=list)
    volumes_ml: list = field(default_factory=list)
    dropped: dict = field(default_factory=dict)    # reason -> names of masks left out
    reads: int = 0                                 # masks read from files or the store to build the bank
    space: str = "world"

    def __len__(self) -> int:
        return len(self.crops)

    def add(self, crop: np.ndarray, affine: np.ndarray, name: str, volume_ml: float) -> None:
        self.crops.append(crop)
        self.affines.append(np.asarray(affine, dtype=np.float64))
        self.names.append(name)
        self.volumes_ml.append(float(volume_ml))

    def subset(self, keep) -> "MaskBank":
        """A bank of the masks at indices ``keep`` (shares the crops)."""
        keep = list(keep)
        return MaskBank([self.crops[i] for i in keep], [self.affines[i] for i in keep], [self.names[i] for i in keep],
                        [self.volumes_ml[i] for i in keep], dict(self.dropped), self.reads, self.space)

    def split(self, split, holdout_fraction: float) -> "MaskBank":
        """The masks of ``split`` ("train", "holdout", or None for all), in the same order."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
        return self.subset(i for i, n in enumerate(self.names) if in_split(n, split, holdout_fraction))

    def grid_affine(self, affine):
        """The affine masks are placed by: the map's for a "world" bank (required), the identity for a "voxel" bank
        (its masks lie on the map's own grid, whatever the map's affine)."""
        if self.space == "voxel":
            return np.eye(4)
        if affine is None:
            raise ValueError("lesion masks in world space are placed by the tissue map's affine: pass `affine`")
        return np.asarray(affine, np.float64)

    def placement(self, i: int, shape, affine):
        """The voxel box ``(lo, hi)`` of the grid ``(shape, affine)`` that mask ``i`` can reach; None if none."""
        return box_in_grid(self.crops[i].shape, self.affines[i], shape, self.grid_affine(affine))

    def paste(self, i: int, out: torch.Tensor, affine=None, origin=(0, 0, 0)):
        """OR mask ``i`` into the dense bool tensor ``out``, which holds the voxels ``[origin, origin + out.shape)``
        of the grid ``affine`` (voxel -> world; None for a "voxel" bank); returns the grid box it touched, or
        None."""
        affine = self.grid_affine(affine)
        origin = tuple(int(o) for o in origin)
        end = tuple(o + n for o, n in zip(origin, out.shape))
        region = self.placement(i, end, affine)
        if region is None:
            return None
        lo, hi = tuple(max(a, o) for a, o in zip(region[0], origin)), region[1]
        if any(b <= a for a, b in zip(lo, hi)):
            return None
        crop = np.asarray(self.crops[i])          # a store's box: its bits decoded, or a read-only memory map
        crop = np.ascontiguousarray(crop) if crop.flags.writeable else np.array(crop)
        crop = to_device(torch.from_numpy(crop), out.device)
        a, b = [x - o for x, o in zip(lo, origin)], [x - o for x, o in zip(hi, origin)]
        out[a[0]:b[0], a[1]:b[1], a[2]:b[2]] |= nearest_box(crop, self.affines[i], lo, hi, affine) > 0
        return lo, hi


def list_mask_files(path, pattern: str = "*.nii*") -> list[Path]:
    """NIfTI files under a folder (recursive, sorted, matching ``pattern``: the listing ``check`` uses), or the
    given list of files."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"lesion mask files not found: {missing[:5]}")
        return files
    from ..data.check import list_nifti
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: lesion mask folder does not exist")
    files, _ = list_nifti(folder, pattern)
    if not files:
        raise FileNotFoundError(f"{folder}: no NIfTI lesion masks matching {pattern!r}")
    return files


def load_mask_bank(files, threshold: float = 0.5, split=None, holdout_fraction: float = 0.2, max_volume_ml=None,
                   brain_mask=None, max_outside_fraction=None, progress: bool = True,
                   workers: int | None = None) -> MaskBank:
    """Read, binarise, crop and filter lesion masks (each file read once, on a few threads).

    Args:
        files: list of NIfTI paths.
        threshold: a voxel is lesion where the stored value is above it (explicit, so float masks saved
            with interpolation are binarised where the user decides).
        split: None (all files), "train" or "holdout"; a file is held out when ``holdout_bucket(name) <
            holdout_fraction``. Files of the other split are not read.
        max_volume_ml: drop masks larger than this (mL, in the mask's own grid); None keeps all.
        brain_mask: ``(mask, affine)``, a 3D brain mask and its voxel -> world affine; with
            ``max_outside_fraction``, masks with a larger share of voxels outside it are dropped.

    Returns:
        A :class:`MaskBank`; ``dropped`` lists masks left out by reason ("split", "empty", "too_large",
        "outside_brain").

    Raises:
        ValueError: bad ``split``/``threshold``/``brain_mask``, a mask whose values are not in [0, 1] or that is
            not 3D (names the file), or no mask left after filtering.
    """
    items = [(Path(p).name, p, lambda p=p: load_nifti(p)) for p in files]
    return mask_bank_from_items(items, threshold, split, holdout_fraction, max_volume_ml, brain_mask,
                                max_outside_fraction, progress, workers)


def _binary_crop(name, where, load, threshold):
    """``(crop, affine, voxels)`` of one item, or None when it is empty; raises naming ``where``."""
    loaded = load()
    data, affine = loaded[0], loaded[1]
    if len(loaded) == 3:                    # a store's box: binary already, kept as it is (bits or a memory map)
        return data, np.asarray(affine, np.float64), int(loaded[2])
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{where}: lesion mask must be 3D, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating) and np.isnan(data).any():
        raise ValueError(f"{where}: lesion mask has NaN values")
    check_grid(data.shape, affine, where, min_voxels=False)      # the voxel-size rule check applies to masks
    lo, hi = float(data.min()), float(data.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"{where}: lesion mask values must lie in [0, 1] (binary), got range [{lo}, {hi}]")
    problem = mask_coverage_problem(data > threshold, threshold)
    if problem:
        raise ValueError(f"{where}: {problem}")
    cropped = crop_to_foreground(data > threshold, affine)
    if cropped is None:
        return None
    return cropped[0], cropped[1], int(cropped[0].sum())


_DROP_ADVICE = {"split": "in the other split: change lesion.holdout_fraction or the split",
                "empty": "no voxel set", "too_large": "above lesion.max_volume_ml {max_ml:g} mL: raise it",
                "outside_brain": "outside the brain mask: raise lesion.max_outside_fraction"}


def _dropped_summary(drop: dict, where: dict, max_volume_ml) -> str:
    """Each reason masks were dropped for, with their count, what to change and the first files (by ``where``)."""
    parts = []
    for reason, names in drop.items():
        if names:
            shown = ", ".join(str(where.get(n, n)) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            advice = _DROP_ADVICE[reason].format(max_ml=max_volume_ml or 0)
            parts.append(f"{reason}: {len(names)} ({advice}; {shown})")
    return "; ".join(parts)


def mask_bank_from_items(items, threshold: float = 0.5, split=None, holdout_fraction: float = 0.2,
                         max_volume_ml=None, brain_mask=None, max_outside_fraction=None, progress: bool = True,
                         workers: int | None = None) -> MaskBank:
    """The :class:`MaskBank` of masks given as loaders: what :func:`load_mask_bank` does after listing files.

    Args:
        items: sequence of ``(name, where, load)``: ``name`` (a file name) decides the split and names the
            mask in the bank, ``where`` (a path) names it in errors, ``load()`` returns ``(data, affine)``, or
            ``(crop, crop_affine, voxels)`` for a binary crop that needs no further checks (a packed store), and
            is called once, only for masks in ``split``.
        Others: as for :func:`load_mask_bank`.

    Raises:
        ValueError: as for :func:`load_mask_bank`.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"`threshold` must be in [0, 1), got {threshold}")
    brain = None
    if brain_mask is not None:
        if not isinstance(brain_mask, (tuple, list)) or len(brain_mask) != 2 or np.ndim(brain_mask[0]) != 3:
            raise ValueError("`brain_mask` must be (mask, affine): a 3D brain mask and its 4x4 voxel -> world affine")
        brain = (torch.as_tensor(np.asarray(brain_mask[0]) > 0), np.asarray(brain_mask[1], np.float64))
    drop = {k: [] for k in ("split", "empty", "too_large", "outside_brain")}
    wanted = []
    for name, where, load in items:
        if in_split(name, split, holdout_fraction):
            wanted.append((name, where, load))
        else:
            drop["split"].append(name)
    bar = None
    if progress and wanted:
        from tqdm import tqdm
        bar = tqdm(total=len(wanted), desc="lesion masks", unit="mask")
    bank = MaskBank()
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        # gzip decoding releases the GIL; results come back in order, so the bank's order is the items'
        for (name, where, _), done in zip(wanted, pool.map(lambda it: _binary_crop(*it, threshold), wanted)):
            bank.reads += 1
            if bar is not None:
                bar.update()
            if done is None:
                drop["empty"].append(name)
                continue
            crop, affine, voxels = done
            volume = voxels * abs(np.linalg.det(affine[:3, :3])) / 1000.0
            if max_volume_ml is not None and volume > max_volume_ml:
                drop["too_large"].append(name)
                continue
            if brain is not None and max_outside_fraction is not None:
                inside = nearest_box(brain[0], brain[1], (0, 0, 0), crop.shape, affine).numpy()
                if float((np.asarray(crop, bool) & ~inside).sum()) / voxels > max_outside_fraction:
                    drop["outside_brain"].append(name)
                    continue
            bank.add(crop, affine, name, volume)
    if bar is not None:
        bar.close()
    bank.dropped = {k: v for k, v in drop.items() if v}
    if drop["empty"]:
        warnings.warn(f"{len(drop['empty'])} lesion masks left out (empty): {drop['empty'][:5]}"
                      + (" ..." if len(drop["empty"]) > 5 else ""), stacklevel=3)
    if len(bank) == 0:
        raise ValueError(f"no lesion mask left out of {len(items)} files after filtering: "
                         + _dropped_summary(drop, {name: where for name, where, _ in items}, max_volume_ml))
    return bank


def store_mask_items(store, pattern: str | None = None) -> list:
    """The lesion masks of a packed store as ``(name, where, load)`` items of :func:`mask_bank_from_items`.

    ``name`` is the source file's name (as recorded when packing), so a mask falls in the same split, and
    the bank in the same order, as when read from its folder; ``pattern`` (a glob that ignores case, as a folder's
    listing does: :func:`synthgen.data.check.name_matches`) keeps only the masks whose source file name matches.
    Masks packed with their foreground box (every store written since the box was recorded) load as that box,
    memory-mapped without a copy: its bits (:class:`synthgen.data.store.PackedBox`, decoded where it is pasted), or
    a view of the uint8 mask in a version-1 store.

    Args:
        store: a :class:`synthgen.data.store.PackedStore` or the path of one.

    Raises:
        FileNotFoundError: ``store`` is not a packed store.
    """
    from ..data.check import name_matches
    if not hasattr(store, "lesions"):
        from ..data.store import open_store
        store = open_store(store)
    section, entries = store.lesions, store.index["sections"]["lesions"]
    items = []
    for i, key in enumerate(section.names):
        entry = entries[key]
        source = entry["sources"][0]["path"]
        name = Path(source).name
        if pattern is not None and not name_matches(name, pattern):
            continue
        where = f"{store.root / entry['files']['data']} (packed from {source})"

        def load(i=i):
            box = section.mask_box(i)
            if box is None or box[2] == 0:  # no box recorded (older stores) or an empty mask: scanned as from a folder
                item = section[i]
                return np.asarray(item.data), item.affine
            return box
        items.append((name, where, load))
    # the order of a folder's files: same bank indices, so the same masks drawn per key
    return sorted(items, key=lambda t: t[0])


def masks_from_tensor(masks: torch.Tensor, masks_affine=None, threshold: float = 0.5) -> MaskBank:
    """A :class:`MaskBank` from an ``(N, D, H, W)`` or ``(N, 1, D, H, W)`` tensor of masks.

    Args:
        masks_affine: the masks' 4x4 voxel -> world affine: they are placed onto each tissue map by its affine.
            None: the masks lie on the tissue grid itself (voxel space).

    Empty masks are kept (they give lesion-free samples).

    Raises:
        ValueError: wrong tensor rank.
    """
    if not torch.is_tensor(masks) or masks.ndim not in (4, 5) or (masks.ndim == 5 and masks.shape[1] != 1):
        raise ValueError(f"`masks` must be a (N, D, H, W) or (N, 1, D, H, W) tensor, got "
                         f"{tuple(masks.shape) if torch.is_tensor(masks) else type(masks).__name__}")
    masks = masks.reshape(masks.shape[0], *masks.shape[-3:])
    affine = np.eye(4) if masks_affine is None else np.asarray(masks_affine, dtype=np.float64)
    bank = MaskBank(space="voxel" if masks_affine is None else "world")
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    for i, m in enumerate((masks.float() > threshold).cpu().numpy()):
        cropped = crop_to_foreground(m, affine)
        crop, crop_affine = cropped if cropped is not None else (np.zeros((1, 1, 1), np.uint8), affine)
        bank.add(crop, crop_affine, f"mask[{i}]", float(crop.sum()) * voxel_ml)
    return bank
