"""Validate the user's NIfTI folders before any long work: every problem, every file, in one list.

``check_folders(tissue_maps=..., lesions=..., real=...)`` reads every file once and returns a list of
:class:`Problem` (errors and warnings, each naming its file); nothing is written. The data are usable when
no problem has severity ``"error"``. ``python -m synthgen.data check`` prints the same list.

What is checked (each kind by the function training reads it with, so check == train: ``tissue_array``,
``mask_array``, ``scan_array`` of :mod:`synthgen.data.tissue`, thresholds in :mod:`synthgen.validate`):
- every file: opens as NIfTI (corrupt gzip, truncated data, wrong extension; names match case-insensitively),
  finite non-singular affine; image-like files with another extension (``.img``, ``.mgz``, ``.nii.bz2``, ...) are
  reported;
- tissue maps: 3D integer labels (or 4D with one volume) covered by the label mapping (0-14 in our convention
  without one, and GM present; a brain label with one), or 4D probabilities in [0, 1] summing to at most 1
  (+tolerance), with enough channels; not constant; a grid of at least 6 voxels per axis and voxels no coarser
  than 10 mm, that reslices to ``voxel_size`` within the memory limit;
- lesion masks: 3D, binary {0, 1} (or ``mask_threshold``), voxels no coarser than 10 mm, not empty (warning);
- real scans: 3D, no NaN/Inf, not constant, a grid that holds a head (little foreground: warning); each scan
  paired with one mask on the same grid (:func:`pair_real_files` documents the rule);
- space: pasting assumes tissue maps and lesion masks share one world space (MNI). Lesion voxels outside
  every tissue map's field of view are errors; files whose brain or lesions sit far from where MNI puts
  them are warnings (resampling goes through the affines, so grids may differ).
"""
from __future__ import annotations

import fnmatch
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthgen import io
from synthgen.data import tissue as tissue_mod

# Brain in MNI152 2009a (GM or WM probability > 0.5 on nilearn's template): centroid and extent in mm.
MNI_BRAIN_CENTRE = np.array([0.0, -21.0, 11.0])
MNI_BRAIN_BOX = (np.array([-71.0, -106.0, -70.0]), np.array([71.0, 73.0, 81.0]))
MNI_CENTRE_TOLERANCE_MM = 25.0     # synthseg's native-space maps sit within ~15 mm: warn only beyond this
IMAGE_LIKE_SUFFIXES = (".img", ".hdr", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
SCAN_SUFFIXES = ("t1w", "t2w", "flair", "t1", "t2", "pd", "pdw", "dwi", "adc", "ct", "image", "img", "scan",
                 "mprage", "swi", "trace")
MASK_TOKENS = ("mask", "label", "lesion", "seg", "roi")


@dataclass(frozen=True)
class Problem:
    """One problem with one file (or folder). ``severity``: "error" (unusable) or "warning"."""
    path: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


@dataclass
class FileReport:
    """What checking one file found: its problems, grid and the world box of its foreground (if any)."""
    path: Path
    problems: list = field(default_factory=list)
    shape: tuple = ()
    affine: np.ndarray | None = None
    foreground_box: tuple | None = None      # (lo, hi) world mm of lesion / brain voxels
    foreground_centre: np.ndarray | None = None

    def error(self, message, severity="error"):
        self.problems.append(Problem(str(self.path), message, severity))


def _strip_path(message: str, path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def world_box(shape, affine) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box ``(lo, hi)`` in mm of the voxel centres of a grid."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)],
                       dtype=np.float64)
    world = corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return world.min(0), world.max(0)


def _foreground(report: FileReport, voxels: np.ndarray):
    """Record the world box and centroid of the True voxels of ``voxels`` (3D bool)."""
    idx = np.argwhere(voxels)
    if len(idx) == 0:
        return
    lo, hi = world_box(idx.max(0) - idx.min(0) + 1, report.affine)
    shift = report.affine[:3, :3] @ idx.min(0)
    report.foreground_box = (lo + shift, hi + shift)
    report.foreground_centre = report.affine[:3, :3] @ idx.mean(0) + report.affine[:3, 3]


def _open(path) -> tuple[FileReport, np.ndarray | None]:
    report = FileReport(Path(path))
    try:
        data, affine = io.load_nifti(path)
    except (ValueError, FileNotFoundError) as err:
        report.error(_strip_path(str(err), path))
        return report, None
    report.shape, report.affine = tuple(data.shape), affine
    return report, data


def check_tissue_map(path, label_map=None, background_channel=None,
                     tolerance: float = tissue_mod.PROBABILITY_TOLERANCE, voxel_size: float = 1.0) -> FileReport:
    """Check one tissue map (3D labels or 4D probabilities) by the rule training reads maps with
    (:func:`synthgen.data.tissue.tissue_array`, resliced to ``voxel_size`` mm); see the module docstring."""
    mapping = tissue_mod.resolve_mapping(label_map)
    report, data = _open(path)
    if data is None:
        return report
    try:
        kind, array = tissue_mod.tissue_array(data, report.affine, path, mapping, background_channel, tolerance,
                                              voxel_size)
    except ValueError as err:
        report.error(_strip_path(str(err), path))
        return report
    if kind == "labels":
        if mapping is not None:
            brain = np.isin(array, [g for g, v in enumerate(mapping.labels(), start=1) if v in mapping.gm + mapping.wm])
        else:
            brain = (array == 1) | (array == 2)
        _foreground(report, brain)
    else:
        _foreground(report, (array[1] + array[2]) > 0.5)
    return report


def check_mask(path, threshold: float | None = None, voxel_size: float = 1.0) -> FileReport:
    """Check one binary mask by the rule masks are read with (:func:`synthgen.data.tissue.mask_array`): 3D,
    finite, values {0, 1} (or any values with ``threshold``), not absurdly coarse, not empty (warning)."""
    report, data = _open(path)
    if data is None:
        return report
    try:
        fg = tissue_mod.mask_array(data, report.affine, path, threshold, voxel_size) > 0
    except ValueError as err:
        report.error(_strip_path(str(err), path))
        return report
    if not fg.any():
        report.error("mask is empty (no voxel set)", "warning")
    _foreground(report, fg)
    return report


def check_scan(path, voxel_size: float = 1.0) -> FileReport:
    """Check one scan by the rule scans are read with (:func:`synthgen.data.tissue.scan_array`): 3D, a grid that
    holds a head, finite intensities, not constant; little foreground is a warning."""
    report, data = _open(path)
    if data is None:
        return report
    try:
        _, warnings = tissue_mod.scan_array(data, report.affine, path, voxel_size)
    except ValueError as err:
        report.error(_strip_path(str(err), path))
        return report
    for w in warnings:
        report.error(w, "warning")
    return report


def name_matches(name: str, pattern: str) -> bool:
    """Whether a file name matches a glob ``pattern``, ignoring case (``.NII.GZ`` is NIfTI too): the rule of
    ``check``, the training loader and a store's lesion pattern."""
    return fnmatch.fnmatch(name.lower(), pattern.lower())


def list_nifti(folder, pattern: str = "*") -> tuple[list[Path], list[Problem]]:
    """NIfTI files under ``folder`` (recursive, sorted; hidden files skipped) whose name matches ``pattern``
    (:func:`name_matches`: case does not matter), or ``folder`` itself if a file.

    Returns:
        ``(files, problems)``: problems for a missing folder, an empty one, and image-like files that are
        not NIfTI (``.img``, ``.mgz``, ``.nii.bz2``, ...). Other files (README, .tsv, .json) are ignored.
    """
    folder = Path(folder)
    if folder.is_file():
        if io.is_nifti(folder):
            return [folder], []
        return [], [Problem(str(folder), "not a NIfTI file (expected .nii or .nii.gz)")]
    if not folder.is_dir():
        return [], [Problem(str(folder), "no such file or folder")]
    files, problems = [], []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if not name_matches(p.name if "/" not in pattern else rel.as_posix(), pattern):
            continue
        name = p.name.lower()
        if io.is_nifti(p):
            files.append(p)
        elif ".nii" in name or name.endswith(IMAGE_LIKE_SUFFIXES):
            problems.append(Problem(str(p), "image file with a non-NIfTI extension: convert it to .nii.gz "
                                            "(only .nii and .nii.gz are read)"))
    if not files and not problems:
        problems.append(Problem(str(folder), f"no NIfTI files (.nii, .nii.gz) matching {pattern!r}"))
    return files, problems


def _is_mask_token(token: str) -> bool:
    t = token.lower()
    return any(t == m or t.startswith(m + "-") or t.endswith(m) for m in MASK_TOKENS)


def pairing_key(path) -> tuple[str, bool]:
    """``(key, is_mask)`` of a real-data file name; a scan and a mask pair when their keys are equal.

    The rule: split the name (without .nii/.nii.gz) on ``_``. A file is a mask when one of its tokens is,
    starts with or ends with ``mask``, ``label``, ``lesion``, ``seg`` or ``roi`` (``sub-1_T1w_mask``,
    ``..._label-L_desc-T1lesion_mask``, ``case3_seg``); its key is the part before that first token. A scan's
    key is its name without a trailing modality token (``T1w``, ``T2w``, ``FLAIR``, ``T1``, ``dwi``, ``ct``,
    ``image``, ...). Keys include the sub-folder, so a scan pairs only with a mask in the same folder. ATLAS
    2.0: ``sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz`` pairs with
    ``sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz``.
    """
    path = Path(path)
    tokens = io.nifti_stem(path).split("_")
    parent = str(path.parent)
    for i, tok in enumerate(tokens):
        if i > 0 and _is_mask_token(tok):
            key = "_".join(tokens[:i])
            if i >= 2 and tokens[i - 1].lower() in SCAN_SUFFIXES:   # "case_T1w_mask" pairs with "case_T1w"
                key = "_".join(tokens[:i - 1])
            return f"{parent}/{key}", True
    if len(tokens) > 1 and tokens[-1].lower() in SCAN_SUFFIXES:
        tokens = tokens[:-1]
    return f"{parent}/{'_'.join(tokens)}", False


@dataclass(frozen=True)
class RealPair:
    """A real scan and its lesion mask."""
    scan: Path
    mask: Path


def pair_real_files(files) -> tuple[list[RealPair], list[Problem]]:
    """Pair scans with masks by :func:`pairing_key`; unpaired or ambiguous files are problems.

    Several scans (e.g. T1w and FLAIR) may share one mask; a key with two masks is an error.
    """
    scans, masks = {}, {}
    for f in files:
        key, is_mask = pairing_key(f)
        (masks if is_mask else scans).setdefault(key, []).append(Path(f))
    pairs, problems = [], []
    for key, ms in masks.items():
        if len(ms) > 1:
            problems.append(Problem(str(ms[0]), f"several masks for one scan: {[m.name for m in ms]}"))
        if key not in scans:
            problems.append(Problem(str(ms[0]), "mask without a scan (pairing rule: <key>_T1w.nii.gz with "
                                                "<key>_mask.nii.gz / <key>_label*.nii.gz, same folder)"))
    for key, ss in scans.items():
        if key not in masks:
            for s in ss:
                problems.append(Problem(str(s), "scan without a mask (pairing rule: <key>_T1w.nii.gz with "
                                                "<key>_mask.nii.gz / <key>_label*.nii.gz, same folder)"))
            continue
        pairs.extend(RealPair(s, masks[key][0]) for s in ss)
    pairs.sort(key=lambda p: str(p.scan))
    return pairs, problems


def _box_overlap(a, b) -> float:
    """Fraction of box ``a``'s extent (per axis, minimum) that lies inside box ``b``."""
    lo, hi = np.maximum(a[0], b[0]), np.minimum(a[1], b[1])
    size = np.maximum(a[1] - a[0], 1.0)
    return float(np.min(np.clip(hi - lo, 0, None) / size))


def _inside(a, b, margin: float = 1.0) -> bool:
    """Box ``a`` lies inside box ``b`` (within ``margin`` mm)."""
    return bool(np.all(a[0] >= b[0] - margin) and np.all(a[1] <= b[1] + margin))


def check_space(tissue_reports, lesion_reports, tissue_box=None) -> list[Problem]:
    """Space checks across files: lesions inside the tissue maps' field of view, brains and lesions MNI-like.

    Args:
        tissue_box: world box ``(lo, hi)`` that lesions must fall in when no tissue reports are given
            (e.g. the bundled default map's grid).
    """
    problems = []
    boxes = [world_box(r.shape[:3], r.affine) for r in tissue_reports if r.affine is not None]
    if boxes:
        tissue_box = (np.max([b[0] for b in boxes], 0), np.min([b[1] for b in boxes], 0))   # common to all
    for r in tissue_reports:
        if r.foreground_centre is None:
            continue
        dist = float(np.linalg.norm(r.foreground_centre - MNI_BRAIN_CENTRE))
        if dist > MNI_CENTRE_TOLERANCE_MM:
            c = np.round(r.foreground_centre).astype(int).tolist()
            problems.append(Problem(str(r.path), f"brain centred at {c} mm, {dist:.0f} mm from where MNI puts it: "
                                                 "lesion pasting assumes tissue maps in MNI space", "warning"))
    for r in lesion_reports:
        if r.foreground_box is None:
            continue
        if tissue_box is not None and not _inside(r.foreground_box, tissue_box):
            lo, hi = (np.round(v).astype(int).tolist() for v in r.foreground_box)
            tlo, thi = (np.round(v).astype(int).tolist() for v in tissue_box)
            problems.append(Problem(str(r.path), f"lesion voxels span {lo}..{hi} mm, outside the tissue maps' "
                                                 f"field of view {tlo}..{thi} mm: not in the same (MNI) space?"))
        elif _box_overlap(r.foreground_box, MNI_BRAIN_BOX) < 0.5:
            problems.append(Problem(str(r.path), "lesion lies mostly outside the MNI brain box "
                                                 f"{MNI_BRAIN_BOX[0].tolist()}..{MNI_BRAIN_BOX[1].tolist()} mm: "
                                                 "not in MNI space?", "warning"))
    return problems


def check_real_pair(pair: RealPair, scan_report: FileReport, mask_report: FileReport) -> list[Problem]:
    """Scan and mask of one pair must share the grid (shape and affine within 1e-3)."""
    if scan_report.affine is None or mask_report.affine is None:
        return []
    if scan_report.shape[:3] != mask_report.shape[:3] or not np.allclose(scan_report.affine, mask_report.affine,
                                                                         atol=1e-3):
        same = "same affine" if np.allclose(scan_report.affine, mask_report.affine, atol=1e-3) else "other affine"
        return [Problem(str(pair.mask), f"grid differs from its scan {pair.scan.name}: shape "
                                        f"{mask_report.shape[:3]} vs {scan_report.shape[:3]}, {same}")]
    return []


def _run(fn, items, progress: bool, desc: str, workers: int | None):
    """Map ``fn`` over ``items`` on a few threads (gzip decoding releases the GIL), with a progress bar."""
    workers = workers or min(4, os.cpu_count() or 1)
    bar = None
    if progress and items:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(items), desc=desc, unit="file", leave=False)
    out = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for r in pool.map(fn, items):
            out.append(r)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return out


def folder_patterns(pattern: str = "*", tissue_pattern: str | None = None, lesion_pattern: str | None = None,
                    real_pattern: str | None = None) -> dict:
    """The file-name pattern of each kind of folder: its own when given, else ``pattern`` (every folder's)."""
    own = {"tissue_maps": tissue_pattern, "lesions": lesion_pattern, "real": real_pattern}
    return {kind: pattern if p is None else p for kind, p in own.items()}


def list_folders(tissue_maps=None, lesions=None, real=None, patterns: dict | None = None):
    """List the given folders, reading no file: ``(files, pairs, problems)`` with ``files[kind]`` the NIfTI files of
    each given kind (``patterns`` as :func:`folder_patterns`), ``pairs`` the real scans paired with their masks, and
    the problems of the listing (a missing folder, no matching file, non-NIfTI files, unpaired real files)."""
    patterns = patterns or folder_patterns()
    files, pairs, problems = {}, [], []
    for kind, folder in (("tissue_maps", tissue_maps), ("lesions", lesions), ("real", real)):
        if folder is not None:
            files[kind], found = list_nifti(folder, patterns[kind])
            problems += found
    if real is not None:
        pairs, found = pair_real_files(files["real"])
        problems += found
    return files, pairs, problems


def folder_errors(problems, folders) -> list[Problem]:
    """The errors of ``problems`` about one of ``folders`` itself (missing, or no file matching its pattern): the
    command is wrong, so nothing is worth reading."""
    names = {str(Path(f)) for f in folders if f is not None}
    return [p for p in problems if p.severity == "error" and p.path in names]


def check_folders(tissue_maps=None, lesions=None, real=None, label_map=None, mask_threshold: float | None = None,
                  background_channel=None, pattern: str = "*", progress: bool = True,
                  workers: int | None = None, voxel_size: float = 1.0, tissue_pattern: str | None = None,
                  lesion_pattern: str | None = None, real_pattern: str | None = None) -> list[Problem]:
    """Check every file of the given folders; return all problems (errors and warnings), sorted by file.

    The folders are listed first: a missing folder or one without a file matching its pattern comes back at once,
    with the other listing problems, before any file is read.

    Args:
        tissue_maps, lesions, real: folders (searched recursively) or single files; None skips that kind.
        label_map: mapping for 3D tissue maps with another label set (see ``tissue.resolve_mapping``).
        mask_threshold: binarise masks with ``value > threshold`` instead of requiring {0, 1}.
        background_channel: 4D tissue maps: True/False/None (detect), see ``tissue.soft_channels``.
        pattern: glob for file names inside every folder (case does not matter).
        tissue_pattern, lesion_pattern, real_pattern: the glob of one kind of folder instead of ``pattern``.
        voxel_size: the training grid (mm): tissue maps and scans must reslice to it within the memory limit.

    Returns:
        List of :class:`Problem`; the data are usable when none has severity "error".
    """
    try:
        mapping = tissue_mod.resolve_mapping(label_map)
    except (ValueError, FileNotFoundError) as err:
        return [Problem(str(label_map), str(err))]
    files, pairs, problems = list_folders(tissue_maps, lesions, real,
                                          folder_patterns(pattern, tissue_pattern, lesion_pattern, real_pattern))
    if folder_errors(problems, (tissue_maps, lesions, real)):
        return _sorted(problems)
    tissue_reports, lesion_reports = [], []
    if tissue_maps is not None:
        tissue_reports = _run(lambda p: check_tissue_map(p, mapping, background_channel, voxel_size=voxel_size),
                              files["tissue_maps"], progress, "tissue maps", workers)
    if lesions is not None:
        lesion_reports = _run(lambda p: check_mask(p, mask_threshold), files["lesions"], progress, "lesions", workers)
    if real is not None:
        kinds = {p.scan: "scan" for p in pairs} | {p.mask: "mask" for p in pairs}
        reports = _run(lambda p: check_scan(p, voxel_size) if kinds[p] == "scan" else check_mask(p, mask_threshold,
                                                                                              voxel_size),
                       sorted(kinds), progress, "real scans", workers)
        by_path = {r.path: r for r in reports}
        for r in reports:
            problems += r.problems
        for pair in pairs:
            problems += check_real_pair(pair, by_path[pair.scan], by_path[pair.mask])
    for r in tissue_reports + lesion_reports:
        problems += r.problems
    usable_tissue = [r for r in tissue_reports if not r.problems]
    usable_lesions = [r for r in lesion_reports if not r.problems]
    tissue_box = None
    if tissue_maps is None and lesion_reports:
        tissue_box = _default_map_box()
    problems += check_space(usable_tissue, usable_lesions, tissue_box)
    return _sorted(problems)


def _sorted(problems) -> list[Problem]:
    return sorted(set(problems), key=lambda p: (p.path, p.severity, p.message))


def _default_map_box():
    """World box of the bundled default tissue map (lesions are pasted into it when no maps are given)."""
    try:
        from synthgen.data.default_map import default_tissue_map_path
        path = default_tissue_map_path()
        import nibabel as nib
        img = nib.load(str(path))
        return world_box(img.shape[:3], img.affine)
    except Exception:   # the default map is optional here: without it, only the MNI-likeness check runs
        return None


def has_errors(problems) -> bool:
    """True when any problem has severity "error"."""
    return any(p.severity == "error" for p in problems)


def format_problems(problems) -> str:
    """Problems as text, one per line, errors first, then a summary line."""
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    lines = [str(p) for p in errors + warnings]
    lines.append(f"{len(errors)} error(s), {len(warnings)} warning(s)" + ("" if errors else ": data usable"))
    return "\n".join(lines)
