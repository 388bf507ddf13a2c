"""NIfTI I/O and affine-aware resampling (RAS, 1 mm), shared by data loading, inference and evaluation.

Arrays are numpy, spatial axes first (X, Y, Z[, C]); affines are 4x4 voxel -> world (mm, RAS+ as
NIfTI defines it). Resampling always goes through world coordinates, never array indices.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import socket
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .ops.warp import grid_pull
from .validate import check_reslice
from .validate import voxel_sizes as voxel_sizes   # noqa: PLC0414 -- io's public name

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path) -> str:
    """The file name without ``.nii`` / ``.nii.gz`` (any case): ``sub-1_T1w.nii.gz`` -> ``sub-1_T1w``."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[:-len(ext)]
    return name


def load_nifti(path, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI file fully into memory.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        dtype: cast the data to this numpy dtype (default: the scaled on-disk type, float for scaled data).

    Returns:
        ``(data, affine)``: the array (3D or 4D, spatial axes first) and its 4x4 float64 affine.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not NIfTI, cannot be decoded (corrupt gzip, truncated), has a singular or
            non-finite affine, or fewer than 3 dimensions.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not is_nifti(path):
        raise ValueError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError) as err:
        raise ValueError(f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err})") from err
    affine = np.asarray(img.affine, dtype=np.float64)
    check_affine(affine, path)
    if data.ndim == 5 and data.shape[3] == 1:   # NIfTI stores vector data as (X, Y, Z, 1, C)
        data = data[:, :, :, 0]
    if data.ndim < 3:
        raise ValueError(f"{path}: expected a 3D or 4D image, got shape {data.shape}")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, affine


def check_affine(affine: np.ndarray, name="affine") -> None:
    """Raise ValueError naming ``name`` when the affine is non-finite or singular."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"{name}: affine must be 4x4, got shape {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise ValueError(f"{name}: affine has NaN or Inf entries")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise ValueError(f"{name}: affine is singular (det {np.linalg.det(affine[:3, :3]):.3g})")


def _temporary_tag() -> str:
    """``tmp-<pid>-<host hash>``: who writes a temporary file, so that a later start can tell a killed writer's file
    (its process is gone) from a live one's."""
    host = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
    return f"tmp-{os.getpid()}-{host}"


# .<target name>.tmp-<pid>-<host>-<8 random characters of mkstemp><suffix>
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[a-z0-9_]{8}")


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary name beside ``path``; on success rename it onto ``path``, on error remove it.

    Readers never see a half-written file, and a killed writer leaves the previous version intact; its temporary
    file (``.<name>.tmp-<pid>-<host>-...``) is removed by :func:`remove_stale_temporaries` on the next start.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_temporary_tag()}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes 0600: give the file the permissions open() would
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True            # another user's process: alive
    return True


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the temporary files that killed writers of :func:`atomic_path` left in ``folder`` (not recursive).

    Only files named as :func:`atomic_path` names them, written on this host by a process that no longer exists,
    are removed: a live writer's file and any other file are never touched.

    Returns:
        The paths removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host = _temporary_tag().rsplit("-", 1)[1]
    removed = []
    for entry in folder.iterdir():
        m = _TEMPORARY.match(entry.name)
        if m is None or m["host"] != host or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        try:
            if entry.is_file():
                entry.unlink()
                removed.append(entry)
        except FileNotFoundError:     # removed meanwhile by another starter
            pass
    return removed


def save_png(fig, path, **savefig_kwargs) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png", **savefig_kwargs)
    finally:
        plt.close(fig)
    return Path(path)


def save_nifti(path, data, affine, dtype=None, header_scale=None) -> Path:
    """Write ``data`` with ``affine`` to ``path`` atomically (temporary file in the same folder, then rename).

    ``header_scale``: optional ``(slope, inter)`` stored in the header (e.g. uint16 probabilities).
    """
    path = Path(path)
    data = np.asarray(data)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    if header_scale is not None:
        img.header.set_slope_inter(*header_scale)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_path(path, ".nii.gz" if str(path).endswith(".gz") else ".nii") as tmp:
        nib.save(img, tmp)
    return path


def fov_overlap(shape_a, aff_a, shape_b, aff_b) -> float:
    """Overlap of two fields of view (world bounding boxes) as a fraction of the smaller one."""
    boxes = []
    for shape, aff in ((shape_a, aff_a), (shape_b, aff_b)):
        corners = np.array([[i, j, k, 1.0] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                            for k in (-0.5, shape[2] - 0.5)]) @ np.asarray(aff).T
        boxes.append((corners[:, :3].min(0), corners[:, :3].max(0)))
    (lo_a, hi_a), (lo_b, hi_b) = boxes
    inter = np.prod(np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None))
    smaller = min(np.prod(hi_a - lo_a), np.prod(hi_b - lo_b))
    return float(inter / smaller)


def reorient_to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip axes so that the array axes point (closest to) Right, Anterior, Superior.

    Exact: no interpolation, the world position of every voxel is unchanged.
    """
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ornt, ras)
    spatial = nib.orientations.apply_orientation(data, transform) if data.ndim == 3 else np.stack(
        [nib.orientations.apply_orientation(data[..., c], transform) for c in range(data.shape[3])], axis=-1)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape[:3])
    return np.ascontiguousarray(spatial), new_affine


def antialias_sigmas(vox2vox: np.ndarray) -> np.ndarray:
    """Gaussian prefilter sigmas (input voxels, per input axis) for resampling by ``vox2vox`` (output voxel ->
    input voxel, 4x4).

    Along input axis ``i`` an output step spans ``r_i`` input voxels (the norm of row ``i`` of the linear part:
    exact for axis-aligned grids, the isotropic spacing for rotated isotropic ones). Where ``r_i > 1`` (the output
    is coarser) the input is smoothed to the output's resolution: modelling a voxel as a Gaussian of FWHM one
    voxel, a blur of FWHM ``sqrt(r_i^2 - 1)`` input voxels makes it FWHM ``r_i``; so
    ``sigma_i = sqrt(r_i^2 - 1) / sqrt(8 ln 2)`` (nibabel.processing's FWHM convention), and 0 where ``r_i <= 1``.
    """
    r = np.sqrt((np.asarray(vox2vox, dtype=np.float64)[:3, :3] ** 2).sum(1))
    return np.sqrt(np.clip(r ** 2 - 1.0, 0.0, None)) / np.sqrt(8.0 * np.log(2.0))


def resample_to_grid(data: np.ndarray, affine: np.ndarray, out_shape, out_affine: np.ndarray,
                     order: int = 1, antialias: bool = True) -> np.ndarray:
    """Resample ``data`` (3D, or 4D channel-last) onto the grid ``(out_shape, out_affine)`` through world space.

    Args:
        order: 0 nearest neighbour (labels, masks), 1 trilinear (probabilities, scans).
        antialias: with ``order`` 1, where the output voxel is larger than the input's along an axis, first
            smooth the input with a Gaussian matched to the ratio (:func:`antialias_sigmas`; edges replicated, as
            ``nibabel.processing.smooth_image``), so that downsampling does not alias. Labels are never smoothed.

    Returns:
        Array of ``out_shape`` (+ channels); points outside the input are 0. Float32 for order 1, the input
        dtype for order 0.
    """
    if order not in (0, 1):
        raise ValueError(f"`order` must be 0 (nearest) or 1 (trilinear), got {order}")
    out_shape = tuple(int(s) for s in out_shape)[:3]
    # output voxel -> input voxel
    vox2vox = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(out_affine, dtype=np.float64)
    if np.allclose(vox2vox, np.eye(4), atol=1e-6) and tuple(data.shape[:3]) == out_shape:
        return data.copy()
    sigma = antialias_sigmas(vox2vox) if (order == 1 and antialias) else np.zeros(3)
    if np.any(sigma > 0):
        from scipy import ndimage
        data = ndimage.gaussian_filter(np.asarray(data, dtype=np.float32), tuple(sigma) + (0.0,) * (data.ndim - 3),
                                       mode="nearest")
    vol = torch.from_numpy(np.ascontiguousarray(data))
    channels_last = vol.ndim == 4
    vol = vol.permute(3, 0, 1, 2) if channels_last else vol[None]
    src_dtype = vol.dtype
    vol = vol.to(torch.float32)[None]                                  # (1, C, X, Y, Z)
    grid = affine_grid_points(out_shape, torch.as_tensor(vox2vox, dtype=torch.float64))
    out = grid_pull(vol, grid[None].to(torch.float32), mode="nearest" if order == 0 else "linear")[0]
    if order == 0:
        out = out.to(src_dtype)
    out = out.permute(1, 2, 3, 0) if channels_last else out[0]
    return np.ascontiguousarray(out.numpy())


def affine_grid_points(shape, vox2vox: torch.Tensor) -> torch.Tensor:
    """Input voxel coordinates ``(X, Y, Z, 3)`` of every output voxel under the 4x4 ``vox2vox`` map."""
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return ijk @ vox2vox[:3, :3].T + vox2vox[:3, 3]


def to_ras_1mm(data: np.ndarray, affine: np.ndarray, order: int = 1,
               voxel_size: float = 1.0, name="image") -> tuple[np.ndarray, np.ndarray]:
    """Reorient to RAS, then reslice to isotropic ``voxel_size`` mm covering the same field of view.

    An image already at that voxel size (within 1e-3 mm) and axis-aligned is only reoriented. Trilinear reslicing
    to a coarser grid is anti-aliased (:func:`resample_to_grid`).

    Raises:
        ValueError: (naming ``name``) the new grid would exceed :data:`synthgen.validate.MAX_GRID_VOXELS`, checked
            before it is allocated.
    """
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise ValueError(f"`voxel_size` must be a positive number of mm, got {voxel_size}")
    data, affine = reorient_to_ras(data, affine)
    sizes = voxel_sizes(affine)
    oblique = not np.allclose(affine[:3, :3] / sizes, np.eye(3), atol=1e-4)
    if np.allclose(sizes, voxel_size, atol=1e-3) and not oblique:
        return data, affine
    check_reslice(data.shape, affine, voxel_size, name, channels=data.shape[3] if data.ndim == 4 else 1)
    # bounding box of the input's voxel centres in world space, on an axis-aligned RAS grid
    corners = np.array([[i, j, k, 1.0] for i in (0, data.shape[0] - 1) for j in (0, data.shape[1] - 1)
                        for k in (0, data.shape[2] - 1)])
    world = corners @ affine.T
    lo, hi = world[:, :3].min(0), world[:, :3].max(0)
    out_shape = np.floor((hi - lo) / voxel_size + 1e-6).astype(int) + 1
    out_affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    out_affine[:3, 3] = lo
    return resample_to_grid(data, affine, out_shape, out_affine, order=order), out_affine
