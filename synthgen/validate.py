"""The rules for bad input, with their thresholds, in one place: every entry point (check, pack, train, predict,
evaluate, sample, preview) refuses or warns through these functions, so they all give the same answer.

- Grids (:func:`grid_problems`): fewer than :data:`MIN_AXIS_VOXELS` voxels along an axis cannot hold a head, and
  voxels coarser than :data:`MAX_VOXEL_MM` leave no anatomy to segment or synthesise from (a 50 mm "scan").
- Reslicing (:func:`check_reslice`): a grid resampled to ``voxel_size`` mm must stay within
  :data:`MAX_GRID_VOXELS` voxels per channel, checked before the array is allocated (``--voxel-size 0.1`` of a
  head, or a huge field of view) and named with the voxel sizes that caused it.
- Intensities (:func:`scan_problems`): NaN / Inf voxels, a constant volume (all zero, or one value), and less than
  :data:`MIN_FOREGROUND_FRACTION` of the field of view above the background (a warning: no head in it?).
- Tissue maps: a map with a single label or constant probabilities has nothing to synthesise
  (``synthgen.data.tissue`` applies it for check and training alike).
- Weights (:func:`nonfinite_tensors`): a checkpoint whose tensors hold NaN / Inf came from a diverged run.
- Outputs (:func:`check_output_dir`, :func:`check_output_file`): creatable, writable, a folder where a folder goes
  and a file where a file goes, checked before any work.
- Devices (:func:`resolve_device`): a device that is named must exist.
- Configs (:func:`check_config_fields`): every number of a config dataclass (nested dataclasses and tuples
  included) is finite, and a field typed ``int`` / ``float`` holds one; the dotted field path names the problem.
- Network inputs (:func:`check_network_input`): a crop or sliding window is a multiple of the network stride and
  at least :data:`MIN_STRIDES_PER_INPUT` strides long (one stride leaves a 1-voxel bottom level: nothing to
  normalise).
- Resumed checkpoints (:func:`check_resume_fits`): besides its checksum, a checkpoint must fit the run it resumes:
  its step within the schedule, the scheduler at that step, the same class count and architecture.
- Masks (:func:`mask_coverage_problem`): a lesion mask that sets every voxel of a head-sized grid is no lesion
  (a mask of ones, or a ``--mask-threshold`` below the background value).
- Tissue tensors (:func:`tissue_is_background`): a map of background only synthesises noise with an empty target;
  hard labels (:func:`label_range_problem`) must be labels the generator has a Gaussian for.

Every function raises ``ValueError`` (or returns problem strings) whose message names the file or argument and
says what to do.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from pathlib import Path

import numpy as np

MIN_AXIS_VOXELS = 6            # voxels along each axis of a scan or tissue map (a 5x5x5 volume, a slice: no head)
MAX_VOXEL_MM = 10.0            # mm, largest voxel edge of a scan or tissue map (clinical thick slices reach ~7 mm)
MAX_GRID_VOXELS = 512 ** 3     # voxels per channel of a resampled grid (512^3 = 134 M: 0.5 GB as float32)
MIN_FOREGROUND_FRACTION = 0.01  # share of a scan's voxels above its minimum; below it: warning, no head in view?
MIN_STRIDES_PER_INPUT = 2      # network input edge in units of its total stride (1: a 1-voxel bottom level)


def voxel_sizes(affine) -> np.ndarray:
    """Voxel edge lengths in mm (norms of the affine's columns)."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))


def _mm(values) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def grid_problems(shape, affine, min_voxels: bool = True) -> list[str]:
    """What is wrong with a grid for a scan or a tissue map (empty: fine): too few voxels (unless not
    ``min_voxels``: masks may be small crops), too coarse voxels."""
    shape = tuple(int(s) for s in shape[:3])
    problems = []
    if min_voxels and min(shape) < MIN_AXIS_VOXELS:
        problems.append(f"grid {'x'.join(map(str, shape))} is too small: at least {MIN_AXIS_VOXELS} voxels per "
                        "axis are needed to hold a head (a single slice or a thumbnail?)")
    sizes = voxel_sizes(affine)
    if sizes.max() > MAX_VOXEL_MM:
        problems.append(f"voxels of {_mm(sizes)} mm are coarser than {MAX_VOXEL_MM:g} mm: no anatomy left at that "
                        "resolution (a wrong header? check the pixdim / affine)")
    return problems


def check_grid(shape, affine, name, min_voxels: bool = True) -> None:
    """Raise ``ValueError`` naming ``name`` when :func:`grid_problems` finds one."""
    problems = grid_problems(shape, affine, min_voxels)
    if problems:
        raise ValueError(f"{name}: {problems[0]}")


def resliced_shape(shape, affine, voxel_size: float) -> tuple[int, int, int]:
    """Shape of the RAS grid at ``voxel_size`` mm that covers the voxel centres of ``(shape, affine)`` (the grid
    :func:`synthgen.io.to_ras_1mm` makes)."""
    shape = [int(s) for s in shape[:3]]
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)])
    world = corners @ np.asarray(affine, dtype=np.float64).T
    extent = world[:, :3].max(0) - world[:, :3].min(0)
    return tuple(int(n) for n in np.floor(extent / float(voxel_size) + 1e-6).astype(np.int64) + 1)


def check_reslice(shape, affine, voxel_size: float, name, channels: int = 1) -> None:
    """Refuse, before allocating it, a resampled grid of more than :data:`MAX_GRID_VOXELS` voxels per channel.

    Raises:
        ValueError: naming ``name``, the grid, the input's voxel size and field of view, and ``voxel_size``.
    """
    out = resliced_shape(shape, affine, voxel_size)
    n = math.prod(out)
    if n > MAX_GRID_VOXELS:
        fov = [v * (s - 1) for v, s in zip(voxel_sizes(affine), shape[:3])]
        gb = n * max(int(channels), 1) * 4 / 1e9
        raise ValueError(f"{name}: reslicing to {voxel_size:g} mm voxels would make a {'x'.join(map(str, out))} grid "
                         f"({n:.3g} voxels, ~{gb:.0f} GB as float32), above the limit of {MAX_GRID_VOXELS:.3g} "
                         f"(512^3); the input has {_mm(voxel_sizes(affine))} mm voxels and a {_mm(fov)} mm field of "
                         "view: check its header, or use a coarser --voxel-size")


def scan_problems(data: np.ndarray, nonfinite: str = "error") -> list[tuple[str, str]]:
    """``(severity, message)`` problems of a scan's intensities: NaN / Inf voxels (``nonfinite`` severity:
    "error" for training, "warning" for prediction, which sets them to 0), a constant volume (error), and less
    than :data:`MIN_FOREGROUND_FRACTION` of the voxels above the minimum (warning)."""
    data = np.asarray(data)
    out = []
    finite = np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else None
    if finite is not None and not finite.all():
        out.append((nonfinite, f"scan has {int((~finite).sum())} NaN or Inf voxels"
                    + (" (set to 0)" if nonfinite != "error" else "")))
        if nonfinite == "error":
            return out
        values = data[finite]
    else:
        values = data.reshape(-1)
    if values.size == 0 or float(values.min()) == float(values.max()):
        value = float(values.min()) if values.size else float("nan")
        out.append(("error", f"scan is constant (every voxel {value:g}): nothing to segment (an empty or "
                             "blanked export?)"))
        return out
    fraction = float((values > values.min()).mean())
    if fraction < MIN_FOREGROUND_FRACTION:
        out.append(("warning", f"only {100 * fraction:.2g} % of the voxels are above the background (threshold "
                               f"{100 * MIN_FOREGROUND_FRACTION:g} %): is there a head in the field of view?"))
    return out


def nonfinite_tensors(state) -> list[str]:
    """Names (dotted keys) of the tensors in a (nested) state dict that hold NaN or Inf."""
    import torch
    bad = []

    def walk(obj, prefix):
        if isinstance(obj, torch.Tensor):
            if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
                bad.append(prefix)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{prefix}[{i}]")
    walk(state, "")
    return bad


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def check_output_dir(path, what: str = "output folder") -> Path:
    """Check, before any work, that ``path`` is a writable folder or can be created as one (nothing is created).

    Raises:
        ValueError: ``path`` is a file, lies under a file, or is (under) a folder that is not writable; the message
            names the path and says what to do.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path}: the {what} is an existing file, not a folder: give a folder path")
        if not _writable(path):
            raise ValueError(f"{path}: the {what} is not writable: choose another folder or fix its permissions")
        return path
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise ValueError(f"{path}: the {what} cannot be created: {base} is a file, not a folder")
    if not _writable(base):
        raise ValueError(f"{path}: the {what} cannot be created: {base} is not writable")
    return path


def check_output_file(path, what: str = "output file", example: str = "scores.csv") -> Path:
    """Check, before any work, that the file ``path`` can be written: not a folder, its folder creatable and
    writable, itself writable when it exists (``example``: the file name proposed when ``path`` is a folder).

    Raises:
        ValueError: naming the path and the problem.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: the {what} is an existing folder: give a file name (e.g. {path / example})")
    check_output_dir(path.parent, f"folder of the {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{path}: the {what} exists and is not writable")
    return path


def resolve_device(name):
    """A torch device from ``name`` (None or "auto": CUDA when available, else CPU).

    Raises:
        ValueError: not a device name, or a CUDA device that torch cannot see (the message says which exist).
    """
    import torch
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"`device` must be a torch device such as 'cpu' or 'cuda:0', got {name!r}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"`device` must be available, got {name!r} but torch sees no CUDA device "
                             "(use --device cpu, or install a CUDA build of torch)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"`device` must be available, got {name!r} but torch sees "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type not in ("cpu", "mps", "xpu", "meta"):
        raise ValueError(f"`device` must be 'cpu' or 'cuda[:N]', got {name!r}")
    return device


# ---- configs ------------------------------------------------------------------------------------------------------

def _declared(f: dataclasses.Field) -> set:
    """Type names of a field's annotation (``"float"``, ``"tuple | None"`` -> {"tuple", "None"})."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return {part.strip() for part in kind.split("|")}


def _number_problem(value, path: str) -> str | None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
        return f"`{path}` must be finite, got {value}"
    return None


def config_field_problems(config, prefix: str = "") -> list[str]:
    """What is wrong with the values of a config dataclass, walked field by field (nested dataclasses, tuples and
    lists): NaN / Inf anywhere, a field typed ``int`` that holds no integer, one typed ``float`` that holds no
    number. Each problem names the dotted field path (``optim.poly_power``)."""
    problems = []
    for f in dataclasses.fields(config):
        path, value = f"{prefix}{f.name}", getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            problems += config_field_problems(value, f"{path}.")
            continue
        declared = _declared(f)
        if value is None and "None" in declared:
            continue
        if "int" in declared and "float" not in declared and (
                not isinstance(value, numbers.Integral) or isinstance(value, bool)):
            problems.append(f"`{path}` must be an int, got {value!r} ({type(value).__name__})")
        elif "float" in declared and (not isinstance(value, numbers.Real) or isinstance(value, bool)):
            problems.append(f"`{path}` must be a number, got {value!r} ({type(value).__name__})")
        elif isinstance(value, (tuple, list)):
            problems += [p for i, v in enumerate(value) if (p := _number_problem(v, f"{path}[{i}]"))]
        elif (p := _number_problem(value, path)) is not None:
            problems.append(p)
    return problems


def check_config_fields(config, prefix: str = "") -> None:
    """Raise ``ValueError`` with the first of :func:`config_field_problems` (one generic rule for every config)."""
    problems = config_field_problems(config, prefix)
    if problems:
        raise ValueError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


# ---- networks and checkpoints -------------------------------------------------------------------------------------

def check_network_input(sizes, stride: int, name: str) -> None:
    """Refuse an input size (crop, sliding window) the network cannot take: not a multiple of its total ``stride``,
    or shorter than :data:`MIN_STRIDES_PER_INPUT` strides along an axis.

    Raises:
        ValueError: naming ``name`` (the setting, or the checkpoint it was read from), the sizes and the stride.
    """
    sizes = tuple(int(s) for s in sizes)
    if any(s % stride for s in sizes):
        raise ValueError(f"{name} must be multiples of the network stride {stride}, got {sizes}")
    if min(sizes) < MIN_STRIDES_PER_INPUT * stride:
        raise ValueError(f"{name} must be at least {MIN_STRIDES_PER_INPUT * stride} voxels per axis "
                         f"({MIN_STRIDES_PER_INPUT} x the network's total stride {stride}: one stride leaves a "
                         f"single voxel at the bottom level), got {sizes}")


def resume_fit_problems(ckpt: dict, steps: int, model_kwargs: dict, state: dict) -> list[str]:
    """How a training checkpoint contradicts the run resuming it (empty: it fits): its step outside ``0..steps``,
    a scheduler at another step, another class count or input channels than ``model_kwargs``, or weights whose
    names or shapes differ from ``state`` (the run's model's ``state_dict``)."""
    step = ckpt.get("step")
    if not isinstance(step, numbers.Integral) or not 0 <= step <= steps:
        return [f"its step {step!r} lies outside this run's schedule 0..{steps}"]
    problems = []
    scheduled = (ckpt.get("scheduler") or {}).get("last_epoch")
    if scheduled != step:
        problems.append(f"its scheduler is at step {scheduled!r}, the checkpoint at step {step}")
    saved = (ckpt.get("config") or {}).get("model") or {}
    for key, what in (("out_channels", "classes"), ("in_channels", "input channels")):
        if key in saved and saved[key] != model_kwargs.get(key):
            problems.append(f"it predicts {saved[key]} {what}, this run {model_kwargs.get(key)}")
    weights = ckpt.get("model") or {}
    theirs = {k: tuple(v.shape) for k, v in weights.items() if hasattr(v, "shape")}
    ours = {k: tuple(v.shape) for k, v in state.items()}
    if theirs != ours:
        differ = sorted(set(theirs) ^ set(ours)) or sorted(k for k in ours if theirs[k] != ours[k])
        first = differ[0]
        shown = {None: "absent"}
        problems.append(f"its network is another architecture ({len(differ)} weights differ in name or shape, e.g. "
                        f"{first}: {shown.get(theirs.get(first), theirs.get(first))} in it, "
                        f"{shown.get(ours.get(first), ours.get(first))} in this run's network)")
    return problems


def check_resume_fits(ckpt: dict, path, steps: int, model_kwargs: dict, state: dict) -> None:
    """Refuse a checkpoint that contradicts the run resuming it (:func:`resume_fit_problems`).

    Raises:
        ValueError: naming ``path`` and every contradiction.
    """
    problems = resume_fit_problems(ckpt, steps, model_kwargs, state)
    if problems:
        raise ValueError(f"{path}: checkpoint does not fit this run: {'; '.join(problems)} (a checkpoint of "
                         "another run?)")


# ---- masks and tissue ---------------------------------------------------------------------------------------------

def mask_coverage_problem(mask: np.ndarray, threshold=None) -> str | None:
    """A lesion mask (binary, 3D) that sets every voxel of a grid of at least :data:`MIN_AXIS_VOXELS` per axis: no
    lesion, a field of view (small crops may be all lesion). None when fine."""
    mask = np.asarray(mask)
    if min(mask.shape[:3]) < MIN_AXIS_VOXELS or not mask.all():
        return None
    cause = "a mask of ones, or an image saved as a mask?" + (
        f" Or is the threshold {threshold:g} below the background's value?" if threshold is not None else "")
    return f"mask sets every voxel of its {'x'.join(map(str, mask.shape[:3]))} grid: no lesion to paste ({cause})"


def label_range_problem(lo: int, hi: int, num_labels: int) -> str | None:
    """Hard labels outside ``0 .. num_labels - 1`` (the generator has no Gaussian for them); None when fine."""
    if lo < 0 or hi >= num_labels:
        return (f"labels must be in [0, {num_labels - 1}] (GeneratorConfig.labels: a label mapping describes larger "
                f"label sets), got [{lo}, {hi}]")
    return None


def tissue_is_background(tissue) -> bool:
    """Whether a tissue tensor ``(B, C, ...)`` holds background only: labels all 0, or probabilities whose channels
    1.. are all 0 (one host sync)."""
    import torch
    if tissue.is_floating_point():
        return tissue.shape[1] < 2 or not bool(torch.any(tissue[:, 1:] > 0))
    return not bool(torch.any(tissue != 0))
