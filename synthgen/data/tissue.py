"""Reading tissue maps, lesion masks and real scans in RAS at 1 mm, and mapping label sets to ours.

Tissue-map convention (the generator's input): labels 0 background, 1 GM, 2 WM, 3 GM/WM partial volume,
4 CSF, 5+ extra non-brain tissues (they get an intensity, and are background in the target).

- A 3D integer map with these labels is used as it is; any other label set (FreeSurfer, SynthSeg, ...)
  needs a :class:`LabelMapping` (``--label-map`` JSON, a CLI string, or ``"freesurfer"`` for the
  mapping shipped in ``synthgen/data/mappings/freesurfer.json``). A mapping keeps every source label as a
  label of its own (one Gaussian each, or per tied group, as in SynthSeg) and gives each its tissue class
  and, optionally, a target class (:meth:`LabelMapping.label_config`, the generator's
  :class:`synthgen.config.LabelConfig`).
- A 4D map is soft: per-voxel probabilities, channels ``[bg, GM, WM, PV, CSF, extra...]``. A map
  without the background channel (SPM MultiBrain style: ``[GM, WM, PV, CSF, extra...]``, summing to
  less than 1 outside the head) gets ``bg = 1 - sum`` prepended. By default the background channel is
  detected: present when the channels sum to 1 everywhere.

Everything read here is reoriented to RAS and resliced to isotropic 1 mm through the affine
(:func:`synthgen.io.to_ras_1mm`): trilinear for probabilities and scans, nearest for labels and masks.
Arrays are numpy with spatial axes ``(X, Y, Z)`` (channels first for soft maps); tensors are
``(1, C, X, Y, Z)``, the generator's ``(B, C, D, H, W)`` with ``D = X``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from synthgen import io, validate
from synthgen.config import NON_BRAIN

TISSUE_LABELS = {"background": 0, "gm": 1, "wm": 2, "pv": 3, "csf": 4}
MAPPINGS_DIR = Path(__file__).resolve().parent / "mappings"
PROBABILITY_TOLERANCE = 1e-2   # sums up to 1 + this are fine (rounding of uint8 / fp16 maps)
_CLASS_KEYS = ("background", "gm", "wm", "pv", "csf", "extra")
_OPTION_KEYS = ("gaussians", "tied", "target", "target_names")


def _as_int_list(name: str, value) -> tuple:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"`{name}` must be a list of integer labels, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"`{name}` must hold non-negative integer labels, got {v!r}")
        out.append(int(v))
    return tuple(out)


def _as_groups(name: str, value) -> tuple:
    """A list of labels or label lists -> tuple of tuples (each entry a group)."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"`{name}` must be a list of labels or label lists, got {value!r}")
    groups = tuple(_as_int_list(name, e) for e in value)
    if any(len(g) == 0 for g in groups):
        raise ValueError(f"`{name}` must not contain empty groups, got {value!r}")
    return groups


@dataclass(frozen=True)
class LabelMapping:
    """How a label set (FreeSurfer, SynthSeg, ...) becomes the generator's labels, Gaussians and targets.

    Every source label (or label 0 and the other ``background`` labels, which become label 0) becomes a label of
    its own, numbered in increasing source order, with the tissue class of the list it is in (``gm``, ``wm``,
    ``pv``, ``csf``, or ``extra`` for non-brain tissue: background in the target). Intensities (``gaussians``):
    "label", one Gaussian per label (SynthSeg), optionally with ``tied`` groups of labels sharing one (e.g. the
    left and right copy of a structure); "class", one per tissue class and per ``extra`` entry. ``target``
    (optional) is a target label set: entry ``i`` (a label, or a list of labels) is target class ``i + 1``,
    unlisted labels are background (``GeneratorConfig(target="labels")``). Any label that is not listed is an
    error (it would silently become background otherwise).
    """
    gm: tuple = ()
    wm: tuple = ()
    csf: tuple = ()
    pv: tuple = ()
    extra: tuple = ()          # tuple of tuples: a group shares one Gaussian with gaussians "class"
    background: tuple = (0,)
    gaussians: str = "label"   # "label" or "class"
    tied: tuple = ()           # tuple of tuples: labels sharing one Gaussian with gaussians "label"
    target: tuple = ()         # tuple of tuples: target label set (empty: none)
    target_names: tuple = ()   # names of the target classes 1.. (optional)
    name: str = field(default="custom", compare=False)

    @classmethod
    def from_dict(cls, d: dict, name: str = "custom") -> "LabelMapping":
        """Build from ``{"gm": [...], "wm": [...], "csf": [...], "pv": [...], "extra": [...], "gaussians": "label",
        "tied": [[...], ...], "target": [...], "target_names": [...]}``.

        Raises:
            ValueError: unknown keys, non-integer labels, one label in two classes, a tied or target label that is
                not mapped, or a label in two tied groups / target classes.
        """
        if not isinstance(d, dict):
            raise ValueError(f"`label mapping` must be a JSON object, got {type(d).__name__}")
        d = {k: v for k, v in d.items() if not k.startswith("_")}   # "_comment" keys document the file
        unknown = sorted(set(d) - set(_CLASS_KEYS) - set(_OPTION_KEYS))
        if unknown:
            raise ValueError(f"`label mapping` keys must be among {list(_CLASS_KEYS + _OPTION_KEYS)}, got unknown "
                             f"{unknown}")
        kwargs = {k: _as_int_list(k, d[k]) for k in ("gm", "wm", "csf", "pv", "background") if k in d}
        for key in ("extra", "tied", "target"):
            kwargs[key] = _as_groups(key, d.get(key, []))
        gaussians = d.get("gaussians", "label")
        if gaussians not in ("label", "class"):
            raise ValueError(f"`gaussians` must be 'label' or 'class', got {gaussians!r}")
        names = d.get("target_names", [])
        if not isinstance(names, (list, tuple)) or any(not isinstance(n, str) for n in names) or (
                names and len(names) != len(kwargs["target"])):
            raise ValueError(f"`target_names` must be one name per target entry ({len(kwargs['target'])}), got "
                             f"{names!r}")
        mapping = cls(**kwargs, gaussians=gaussians, target_names=tuple(names), name=name)
        mapping.table()   # validates overlaps
        mapping.label_config()
        return mapping

    @classmethod
    def from_json(cls, path) -> "LabelMapping":
        """Read a mapping JSON file (see :meth:`from_dict`); errors name the file."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such label-mapping file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        try:
            return cls.from_dict(d, name=path.name)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    @classmethod
    def parse(cls, text: str) -> "LabelMapping":
        """Parse a CLI string ``"gm=3,42;wm=2,41;csf=4,5,24;extra=502,506+507"``.

        Classes are separated by ``;``, labels by ``,``; in ``extra``, ``tied`` and ``target``, ``+`` joins labels
        into one group; ``gaussians=class`` gives one Gaussian per class.
        """
        d: dict = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            key, sep, values = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in _CLASS_KEYS + ("tied", "target", "gaussians"):
                raise ValueError(f"`label mapping` must look like 'gm=3,42;wm=2,41;csf=4', got {text!r}")
            if key == "gaussians":
                d[key] = values.strip()
                continue
            try:
                if key in ("extra", "tied", "target"):
                    d[key] = [[int(v) for v in g.split("+")] for g in values.split(",") if g.strip()]
                else:
                    d[key] = [int(v) for v in values.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"`label mapping` labels must be integers, got {part!r}") from None
        if not d:
            raise ValueError(f"`label mapping` must look like 'gm=3,42;wm=2,41;csf=4', got {text!r}")
        return cls.from_dict(d, name="cli")

    @property
    def source_labels(self) -> set:
        return {v for k in ("background", "gm", "wm", "pv", "csf") for v in getattr(self, k)} | {
            v for group in self.extra for v in group}

    def labels(self) -> tuple:
        """The source label of each generator label ``1, 2, ...`` (label 0 is every background label)."""
        return tuple(sorted(self.source_labels - set(self.background)))

    @property
    def num_labels(self) -> int:
        """Number of generator labels, background included."""
        return len(self.labels()) + 1

    def table(self) -> np.ndarray:
        """Lookup table ``out = table[source label]`` of generator labels (uint16; 65535 marks labels that are not
        in the mapping).

        Raises:
            ValueError: a label appears in two classes.
        """
        owner: dict = {}
        groups = [(k, getattr(self, k)) for k in ("background", "gm", "wm", "pv", "csf")]
        groups += [(f"extra[{i}]", g) for i, g in enumerate(self.extra)]
        for key, labels in groups:
            for v in labels:
                if v in owner and owner[v] != key:
                    raise ValueError(f"`label mapping` label {v} must be in one class, got {owner[v]} and {key}")
                owner[v] = key
        table = np.full(max(self.source_labels | {0}) + 1, 65535, dtype=np.uint16)
        table[list(self.background)] = 0
        for g, v in enumerate(self.labels(), start=1):
            table[v] = g
        return table

    def label_config(self):
        """The :class:`synthgen.config.LabelConfig` of the generator labels (classes, Gaussians, targets).

        Raises:
            ValueError: more than 256 labels, a tied or target label not in the mapping, or a label in two tied
                groups or two target classes.
        """
        from synthgen.config import MAX_LABELS, LabelConfig
        labels = self.labels()
        if len(labels) + 1 > MAX_LABELS:
            raise ValueError(f"`label mapping` must map to at most {MAX_LABELS} labels (uint8), got {len(labels) + 1}")
        index = {v: g for g, v in enumerate(labels, start=1)} | {v: 0 for v in self.background}
        cls_of = {v: TISSUE_LABELS[k] for k in ("gm", "wm", "pv", "csf") for v in getattr(self, k)}
        cls_of |= {v: NON_BRAIN for group in self.extra for v in group}
        classes = (0,) + tuple(cls_of[v] for v in labels)

        def grouped(key, groups):       # label -> group number, each label in at most one group
            out = {}
            for i, group in enumerate(groups):
                for v in group:
                    if v not in index:
                        raise ValueError(f"`{key}` label {v} is not in the label mapping {self.name!r}")
                    if v in self.background:
                        raise ValueError(f"`{key}` label {v} is a background label: background is its own "
                                         "Gaussian and target class 0, it cannot be tied or listed as a target")
                    if v in out:
                        raise ValueError(f"`{key}` label {v} must be in one group, got groups {out[v]} and {i}")
                    out[v] = i
            return out
        if self.gaussians == "class":
            extra_of = {v: i for i, group in enumerate(self.extra) for v in group}
            key = [0] + [("extra", extra_of[v]) if v in extra_of else cls_of[v] for v in labels]
        else:
            tied = grouped("tied", self.tied)
            key = [0] + [("tied", tied[v]) if v in tied else ("label", v) for v in labels]
        first: dict = {}
        gaussians = tuple(first.setdefault(k, len(first)) for k in key)     # numbered by first appearance
        targets = target_names = None
        if self.target:
            target_of = grouped("target", self.target)
            targets = (0,) + tuple(target_of[v] + 1 if v in target_of else 0 for v in labels)
            target_names = ("background",) + (tuple(self.target_names) if self.target_names else tuple(
                "+".join(str(v) for v in group) for group in self.target))
        return LabelConfig(classes=classes, gaussians=gaussians, targets=targets, target_names=target_names,
                           names=("background",) + tuple(str(v) for v in labels)).validate()

    def unmapped(self, values) -> list:
        """The values among ``values`` (integers) that the mapping does not cover."""
        known = self.source_labels
        return sorted(int(v) for v in values if int(v) not in known)

    def apply(self, labels: np.ndarray, name="labels") -> np.ndarray:
        """Map an integer label array to generator labels (uint8).

        Raises:
            ValueError: ``labels`` holds values the mapping does not cover (listed, ``name`` in the message).
        """
        values = np.unique(labels)
        missing = self.unmapped(values)
        if missing:
            raise ValueError(f"{name}: labels {_short_list(missing)} are not in the label mapping {self.name!r}")
        table = self.table()
        return table[labels.astype(np.int64, copy=False)].astype(np.uint8)

    def to_dict(self) -> dict:
        d = {"gm": list(self.gm), "wm": list(self.wm), "csf": list(self.csf), "pv": list(self.pv),
             "extra": [list(g) for g in self.extra], "background": list(self.background), "gaussians": self.gaussians,
             "tied": [list(g) for g in self.tied], "target": [list(g) for g in self.target]}
        if self.target_names:
            d["target_names"] = list(self.target_names)
        return d


def _short_list(values, n=12) -> str:
    values = list(values)
    head = ", ".join(str(v) for v in values[:n])
    return f"[{head}, ...] ({len(values)} values)" if len(values) > n else f"[{head}]"


def freesurfer_mapping() -> LabelMapping:
    """The shipped mapping for FreeSurfer / SynthSeg label maps (``mappings/freesurfer.json``)."""
    return LabelMapping.from_json(MAPPINGS_DIR / "freesurfer.json")


def resolve_mapping(spec) -> LabelMapping | None:
    """Turn a user's ``--label-map`` into a :class:`LabelMapping`.

    Args:
        spec: None (labels already in our convention), a LabelMapping, a dict, ``"freesurfer"``, the
            path of a JSON file, or a CLI string such as ``"gm=3,42;wm=2,41;csf=4"``.

    Raises:
        ValueError: the spec is none of these (the message says which forms are accepted).
    """
    if spec is None or isinstance(spec, LabelMapping):
        return spec
    if isinstance(spec, dict):
        return LabelMapping.from_dict(spec)
    if isinstance(spec, Path) or (isinstance(spec, str) and spec.lower().endswith(".json")):
        return LabelMapping.from_json(spec)
    if isinstance(spec, str):
        if spec.lower() in ("freesurfer", "synthseg"):
            return freesurfer_mapping()
        if "=" in spec:
            return LabelMapping.parse(spec)
    raise ValueError("`label_map` must be None, 'freesurfer', a JSON file path, a dict or a string like "
                     f"'gm=3,42;wm=2,41;csf=4', got {spec!r}")


@dataclass
class TissueMap:
    """A tissue map in RAS at 1 mm.

    ``data``: ``(X, Y, Z)`` uint8 labels (kind ``"labels"``) or ``(C, X, Y, Z)`` float32 probabilities
    with the background channel first (kind ``"soft"``).
    """
    data: np.ndarray
    affine: np.ndarray
    kind: str
    path: str = ""

    def to_tensor(self, device=None) -> torch.Tensor:
        """``(1, 1, X, Y, Z)`` uint8 labels or ``(1, C, X, Y, Z)`` float32 probabilities on ``device``."""
        t = torch.from_numpy(np.ascontiguousarray(self.data))
        t = t[None, None] if self.kind == "labels" else t[None]
        return t.to(device) if device is not None else t


def tissue_labels(data: np.ndarray, path, mapping=None) -> np.ndarray:
    """Validate a 3D label map and return its generator labels (uint8): the one rule for check and training.

    Labels must be integers >= 0; with a ``mapping`` every label must be in it (it maps them, see
    :class:`LabelMapping`); without one they must follow our convention (0 bg, 1 GM, 2 WM, 3 PV, 4 CSF, 5-14
    non-brain; GM present), which the generator takes as it is.

    Raises:
        ValueError: naming ``path`` and the problem.
    """
    from synthgen.config import DEFAULT_NUM_LABELS
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)):
            raise ValueError(f"{path}: label map has NaN or Inf values")
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise ValueError(f"{path}: 3D tissue map has non-integer values: a probability map must be 4D "
                             "(channels [bg, GM, WM, PV, CSF, extra...]); a label map must hold integers")
        data = rounded.astype(np.int64)
    values = np.unique(data)
    if values.min() < 0:
        raise ValueError(f"{path}: label map has negative labels {values[values < 0].tolist()}")
    if mapping is not None:
        out = mapping.apply(data, name=str(path))
        if not np.isin(values, list(mapping.gm + mapping.wm)).any():
            raise ValueError(f"{path}: no brain label (GM or WM of the label mapping {mapping.name!r}) among labels "
                             f"{_short_list(values.tolist())}: another label set?")
        return out
    if values.max() >= DEFAULT_NUM_LABELS:
        raise ValueError(f"{path}: labels up to {int(values.max())} are not in our convention (0 bg, 1 GM, 2 WM, "
                         f"3 PV, 4 CSF, 5-{DEFAULT_NUM_LABELS - 1} non-brain): pass a label mapping (--label-map "
                         "freesurfer or a JSON file)")
    if 1 not in values:
        raise ValueError(f"{path}: no GM (label 1) among labels {_short_list(values.tolist())}: another label set? "
                         "pass a label mapping (--label-map freesurfer or a JSON file)")
    return data.astype(np.uint8, copy=False)


def soft_channels(data: np.ndarray, path, background_channel=None,
                  tolerance: float = PROBABILITY_TOLERANCE) -> np.ndarray:
    """Validate a 4D probability map ``(X, Y, Z, C)`` and return it channels-first with a background channel.

    Args:
        background_channel: True if channel 0 is background, False if absent (MultiBrain style), None to
            detect (present when the channels sum to 1 within ``tolerance`` everywhere).

    Raises:
        ValueError: NaN/Inf, values outside [0, 1], sums above 1, or too few channels.
    """
    data = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: probability map has NaN or Inf values")
    lo, hi = float(data.min()), float(data.max())
    if lo < -tolerance or hi > 1 + tolerance:
        raise ValueError(f"{path}: probabilities must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    total = data.sum(-1)
    if float(total.max()) > 1 + tolerance:
        raise ValueError(f"{path}: probabilities must sum to at most 1 per voxel, got up to {float(total.max()):.4g}")
    if background_channel is None:
        background_channel = bool(np.abs(total - 1).max() <= tolerance)
    n = data.shape[-1]
    need = 5 if background_channel else 4
    if n < need:
        raise ValueError(f"{path}: a 4D tissue map needs channels [bg, GM, WM, PV, CSF, extra...] "
                         f"({need} or more {'with' if background_channel else 'without'} background), got {n}")
    from synthgen.config import DEFAULT_NUM_LABELS
    if n + (not background_channel) > DEFAULT_NUM_LABELS:
        raise ValueError(f"{path}: a 4D tissue map may have at most {DEFAULT_NUM_LABELS} channels (background "
                         f"included), got {n + (not background_channel)}")
    data = np.clip(data, 0, 1)
    if not background_channel:
        data = np.concatenate([np.clip(1 - total, 0, 1)[..., None], data], axis=-1)
    return np.ascontiguousarray(np.moveaxis(data, -1, 0))


def tissue_array(data: np.ndarray, affine: np.ndarray, path, mapping=None, background_channel=None,
                 tolerance: float = PROBABILITY_TOLERANCE, voxel_size: float = 1.0) -> tuple[str, np.ndarray]:
    """Validate a tissue map as its file holds it: the one rule of ``check`` and training.

    A 3D map (or a 4D one with a single volume, as some tools save label maps) holds labels
    (:func:`tissue_labels`), a 4D one probabilities (:func:`soft_channels`); the grid must hold a head
    (:func:`synthgen.validate.grid_problems`) and stay within the memory limit once resliced to ``voxel_size`` mm
    (:func:`synthgen.validate.check_reslice`).

    Returns:
        ``("labels", uint8 (X, Y, Z))`` or ``("soft", float32 (C, X, Y, Z))`` on the file's own grid.

    Raises:
        ValueError: naming ``path`` and the problem.
    """
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise ValueError(f"{path}: a tissue map must be 3D (labels) or 4D (probabilities), got shape {data.shape}")
    if data.ndim == 3:
        out = ("labels", tissue_labels(data, path, mapping))
    else:
        if mapping is not None:
            raise ValueError(f"{path}: a label mapping describes 3D label maps, got a 4D probability map: keep "
                             "label maps and probability maps in separate runs (or drop --label-map)")
        out = ("soft", soft_channels(data, path, background_channel, tolerance))
    flat = out[1].reshape(1 if out[0] == "labels" else len(out[1]), -1)
    if np.array_equal(flat.min(1), flat.max(1)):
        what = f"label {int(flat[0, 0])}" if out[0] == "labels" else "the same probabilities"
        raise ValueError(f"{path}: tissue map is constant (every voxel {what}): nothing to synthesise from; a map "
                         "needs background and tissue")
    validate.check_grid(data.shape, affine, path)
    validate.check_reslice(data.shape, affine, voxel_size, path, channels=1 if out[0] == "labels" else len(out[1]))
    return out


def read_tissue_map(path, label_map=None, background_channel=None, voxel_size: float = 1.0) -> TissueMap:
    """Read a tissue map (3D labels or 4D probabilities) in RAS at ``voxel_size`` mm.

    Args:
        path: NIfTI file.
        label_map: mapping for 3D maps with other label sets (see :func:`resolve_mapping`); ignored for 4D.
        background_channel: for 4D maps, see :func:`soft_channels`.

    Returns:
        :class:`TissueMap` (uint8 labels, nearest-neighbour reslicing; or float32 probabilities, trilinear).

    Raises:
        ValueError: unreadable file, bad affine, any rule of :func:`tissue_array` (labels outside the mapping,
            non-integer 3D data, invalid probabilities, a constant map, a grid too small or too coarse, ...).
    """
    mapping = resolve_mapping(label_map)
    data, affine = io.load_nifti(path)
    kind, data = tissue_array(data, affine, path, mapping, background_channel, voxel_size=voxel_size)
    if kind == "labels":
        labels, affine = io.to_ras_1mm(data, affine, order=0, voxel_size=voxel_size, name=path)
        return TissueMap(labels, affine, "labels", str(path))
    soft, affine = io.to_ras_1mm(np.moveaxis(data, 0, -1), affine, order=1, voxel_size=voxel_size, name=path)
    return TissueMap(np.ascontiguousarray(np.moveaxis(soft, -1, 0)), affine, "soft", str(path))


def load_tissue_map(path, label_map=None, device=None, with_affine: bool = False, background_channel=None):
    """Read a tissue map as a tensor, like :func:`synthgen.data.default_tissue_map` does for the bundled one.

    Returns:
        ``(1, 1, X, Y, Z)`` uint8 labels or ``(1, C, X, Y, Z)`` float32 probabilities on ``device``;
        with ``with_affine``, the tuple ``(tensor, affine)`` (4x4 numpy, RAS 1 mm).
    """
    tmap = read_tissue_map(path, label_map=label_map, background_channel=background_channel)
    t = tmap.to_tensor(device)
    return (t, tmap.affine) if with_affine else t


def mask_array(data: np.ndarray, affine: np.ndarray, path, threshold: float | None = None,
               voxel_size: float = 1.0) -> np.ndarray:
    """Validate a binary mask as its file holds it (the rule of ``check`` and reading) and return it as uint8
    {0, 1}: 3D (or 4D with one volume), voxels no coarser than :data:`synthgen.validate.MAX_VOXEL_MM`, finite,
    values {0, 1} (or any, binarised as ``value > threshold``), within the memory limit at ``voxel_size`` mm, not
    set everywhere (:func:`synthgen.validate.mask_coverage_problem`).

    Raises:
        ValueError: naming ``path`` and the problem.
    """
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: a mask must be 3D, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: mask has NaN or Inf values")
    validate.check_grid(data.shape, affine, path, min_voxels=False)      # masks may be small crops
    validate.check_reslice(data.shape, affine, voxel_size, path)
    if threshold is None:
        values = np.unique(data)
        if not np.all(np.isin(values, (0, 1))):
            raise ValueError(f"{path}: mask must be binary {{0, 1}}, got values {_short_list(values.tolist())} "
                             "(--mask-threshold T binarises value > T)")
        mask = data.astype(np.uint8)
    else:
        mask = (data > threshold).astype(np.uint8)
    problem = validate.mask_coverage_problem(mask, threshold)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return mask


def read_mask(path, threshold: float | None = None, voxel_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Read a binary mask (lesion, brain) as uint8 {0, 1} in RAS at ``voxel_size`` mm (nearest neighbour).

    Args:
        threshold: None requires values in {0, 1}; a number binarises ``value > threshold``.

    Raises:
        ValueError: unreadable, or any rule of :func:`mask_array` (not 3D, NaN, non-binary values without
            ``threshold``, absurd voxels).
    """
    data, affine = io.load_nifti(path)
    mask = mask_array(data, affine, path, threshold, voxel_size)
    return io.to_ras_1mm(mask, affine, order=0, voxel_size=voxel_size, name=path)


def scan_array(data: np.ndarray, affine: np.ndarray, path, voxel_size: float = 1.0,
               nonfinite: str = "error") -> tuple[np.ndarray, list[str]]:
    """Validate a scan as its file holds it (the rule of ``check``, training and prediction): 3D (or 4D with one
    volume), a grid that holds a head, intensities by :func:`synthgen.validate.scan_problems`, within the memory
    limit at ``voxel_size`` mm.

    Args:
        nonfinite: severity of NaN / Inf voxels, "error" (training) or "warning" (prediction sets them to 0).

    Returns:
        ``(data 3D, warnings)``.

    Raises:
        ValueError: naming ``path`` and the first error.
    """
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: a scan must be 3D, got shape {data.shape}")
    problems = validate.scan_problems(data, nonfinite)
    errors = [m for sev, m in problems if sev == "error"]
    if errors:
        raise ValueError(f"{path}: {errors[0]}")
    validate.check_grid(data.shape, affine, path)
    validate.check_reslice(data.shape, affine, voxel_size, path)
    return data, [m for sev, m in problems if sev != "error"]


def read_scan(path, voxel_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D scan as float32 in RAS at ``voxel_size`` mm (trilinear).

    Raises:
        ValueError: unreadable, or any rule of :func:`scan_array` (not 3D, NaN/Inf intensities, constant, a grid
            too small or too coarse).
    """
    data, affine = io.load_nifti(path, dtype=np.float32)
    data, _ = scan_array(data, affine, path, voxel_size)
    return io.to_ras_1mm(data, affine, order=1, voxel_size=voxel_size, name=path)
