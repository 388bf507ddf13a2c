"""A packed store: the user's NIfTI folders decoded once into compact memory-mappable arrays.

Layout of a store folder::

    STORE/index.json                 shapes, dtypes, affines, provenance of every item
    STORE/tissue_maps/<name>.npy     uint8 labels (X, Y, Z), or probabilities (C, X, Y, Z) uint8 (x255) / fp16
    STORE/lesions/<name>.npy         the mask's foreground box, bit-packed (np.packbits of the C-order box)
    STORE/real/<name>.scan.npy       fp16 scans (X, Y, Z), multiplied by ``scale`` in the index
    STORE/real/<name>.mask.npy       uint8 {0, 1} masks (X, Y, Z)

Every item is RAS (see ``synthgen.data.tissue``): tissue maps and real scans at the ``voxel_size`` they were packed
at (1 mm by default), lesion masks at their own voxel size; labels are already mapped (the mapping is recorded).
``.npy`` files open with ``np.load(mmap_mode="r")``: no decoding, the OS pages in what is read; a lesion mask is
its foreground box at one bit a voxel (:class:`PackedBox`, 8x smaller than uint8: the 1,449 SOOP masks take 72 MB
instead of 574 MB), decoded per box where it is pasted. Store version 1 (before boxes were bit-packed) kept masks
as uint8 arrays: such stores are still read as they are, and ``pack`` into one re-encodes its masks.
Packing is incremental: an item whose source file has the same size and mtime (or, when those changed, the
same SHA-256) and the same packing options is skipped. Every file is written to a temporary name and
renamed, and the index is rewritten after each item, so an interrupted pack loses at most one item (the temporary
files of a killed pack are removed when it starts again). An index that is not what ``pack`` writes (a section or an
entry's affine missing, not a JSON object) is refused naming the entry (:func:`check_index`); ``check --store``
lists every problem of a store (:func:`check_store`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthgen.data import check as check_mod
from synthgen.data import tissue as tissue_mod
from synthgen.io import atomic_path, nifti_stem, remove_stale_temporaries
from synthgen.validate import check_output_dir

INDEX_NAME = "index.json"
STORE_VERSION = 2           # 2: lesion masks as bit-packed boxes ("encoding" of the entry); 1: uint8 arrays
READ_VERSIONS = (1, 2)
MASK_ENCODING = "packbits"
SECTIONS = ("tissue_maps", "lesions", "real")
FP16_MAX = 60000.0   # scans brighter than this are scaled down to fit fp16


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _provenance(path, sha: str | None = None) -> dict:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime": st.st_mtime,
            "sha256": sha or sha256_file(path)}


def _unchanged(old: dict | None, path, options: dict) -> bool:
    """True when ``old`` (an index entry) was packed from the same bytes with the same options."""
    if old is None or old.get("options") != options:
        return False
    sources = old["sources"]
    paths = [path] if not isinstance(path, (list, tuple)) else list(path)
    if len(sources) != len(paths):
        return False
    for src, p in zip(sources, paths):
        st = os.stat(p)
        if src["path"] != str(Path(p).resolve()) or src["size"] != st.st_size:
            return False
        if src["mtime"] != st.st_mtime and src["sha256"] != sha256_file(p):
            return False
    return True


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, ".tmp") as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))


def _atomic_write_json(path: Path, obj) -> None:
    with atomic_path(path, ".tmp") as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1)


def _item_name(path: Path, root: Path) -> str:
    """Unique flat name of a source file: its path below the folder, without extension, '/' -> '__'."""
    rel = path.relative_to(root) if root.is_dir() else Path(path.name)
    stem = nifti_stem(rel.name)
    return "__".join(list(rel.parent.parts) + [stem])


def _quantise_prob(soft: np.ndarray, dtype: str) -> tuple[np.ndarray, float]:
    if dtype == "uint8":
        return np.rint(np.clip(soft, 0, 1) * 255).astype(np.uint8), 1.0 / 255
    return soft.astype(np.float16), 1.0


def _read_index(store: Path) -> dict:
    path = store / INDEX_NAME
    if not path.exists():
        return {"version": STORE_VERSION, "sections": {s: {} for s in SECTIONS}}
    if path.is_dir():
        raise ValueError(f"{path}: the store index is a folder, not a file: remove it and pack again")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt store index ({err}); pack again") from err
    check_index(index, path)
    for s in SECTIONS:
        index["sections"].setdefault(s, {})
    return index


ENTRY_KEYS = {"kind": str, "shape": list, "affine": list, "files": dict, "scale": (int, float), "sources": list}


def check_index(index, path) -> None:
    """The structure of a store index (``index.json``): every section and entry as :func:`pack` writes them.

    Raises:
        ValueError: naming ``path``, the entry and what is missing or wrong (then pack again).
    """
    if not isinstance(index, dict):
        raise ValueError(f"{path}: corrupt store index: must be a JSON object, got {type(index).__name__}; pack again")
    if index.get("version") not in READ_VERSIONS:
        raise ValueError(f"{path}: store version must be one of {list(READ_VERSIONS)} (what this synthgen reads), got "
                         f"{index.get('version')!r}: pack the data again with this synthgen into a new folder")
    sections = index.get("sections")
    if not isinstance(sections, dict):
        raise ValueError(f"{path}: corrupt store index: 'sections' must be an object, got "
                         f"{type(sections).__name__}; pack again")
    for section, entries in sections.items():
        if section not in SECTIONS:
            raise ValueError(f"{path}: corrupt store index: unknown section {section!r} (expected {list(SECTIONS)})")
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: corrupt store index: section {section!r} must be an object; pack again")
        for name, entry in entries.items():
            where = f"{path}: corrupt store index: {section}/{name}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where} must be an object, got {type(entry).__name__}; pack again")
            for key, kind in ENTRY_KEYS.items():
                if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
                    raise ValueError(f"{where} has no valid {key!r} ({entry.get(key)!r}); pack again")
            affine = np.asarray(entry["affine"], dtype=object)
            if affine.shape != (4, 4) or not all(isinstance(v, (int, float)) for v in affine.ravel()):
                raise ValueError(f"{where}: 'affine' must be 4x4 numbers, got {entry['affine']!r}; pack again")
            if len(entry["shape"]) not in (3, 4) or not all(isinstance(v, int) and v > 0 for v in entry["shape"]):
                raise ValueError(f"{where}: 'shape' must be 3 or 4 positive ints, got {entry['shape']!r}; pack again")
            if not entry["files"] or not all(isinstance(v, str) for v in entry["files"].values()):
                raise ValueError(f"{where}: 'files' must name its arrays, got {entry['files']!r}; pack again")
            if not all(isinstance(src, dict) and {"path", "size", "mtime", "sha256"} <= set(src)
                       for src in entry["sources"]):
                raise ValueError(f"{where}: 'sources' must record path, size, mtime and sha256; pack again")
            if "encoding" in entry:
                _check_packed_entry(entry, where)


def _check_packed_entry(entry: dict, where: str) -> None:
    """A bit-packed mask entry: the known encoding, and a box ``[lo, hi]`` of ints inside its grid."""
    if entry["encoding"] != MASK_ENCODING:
        raise ValueError(f"{where}: 'encoding' must be {MASK_ENCODING!r}, got {entry['encoding']!r}; pack again")
    box = np.asarray(entry.get("box"), dtype=object)
    if (box.shape != (2, 3) or not all(isinstance(v, int) and not isinstance(v, bool) for v in box.ravel())
            or not all(0 <= a <= b <= n for a, b, n in zip(box[0], box[1], entry["shape"]))):
        raise ValueError(f"{where}: 'box' must be [lo, hi], 3 ints each with 0 <= lo <= hi <= shape "
                         f"{entry['shape']}, got {entry.get('box')!r}; pack again")


def _item_problem(message: str, root, where: Path):
    """A store item's error as a :class:`synthgen.data.check.Problem` of the file its message starts with (a file of
    the store), else of ``where``: each path said once."""
    file, sep, rest = message.partition(": ")
    if sep and file.startswith(str(root)):
        return check_mod.Problem(file, rest)
    return check_mod.Problem(str(where), message)


def check_store_labels(data, labels, where) -> None:
    """Refuse a packed label map with labels the generator has no Gaussian for (``labels``: the store's
    :class:`synthgen.config.LabelConfig`, None: our convention), naming the item ``where``.

    Raises:
        ValueError: naming ``where``, the label range and what to do.
    """
    from synthgen.config import DEFAULT_NUM_LABELS
    from synthgen.validate import label_range_problem
    problem = label_range_problem(int(data.min()), int(data.max()),
                                           labels.num_labels if labels is not None else DEFAULT_NUM_LABELS)
    if problem:
        raise ValueError(f"{where}: {problem}; pack it again (with the --label-map that describes its labels)")


def store_labels(store):
    """The :class:`synthgen.config.LabelConfig` recorded for a store's tissue maps (None: our convention).

    Raises:
        ValueError: its maps were packed with different label mappings.
    """
    found = {}
    for name, entry in store.index["sections"]["tissue_maps"].items():
        if entry.get("kind") != "labels":
            continue
        mapping = (entry.get("options") or {}).get("label_map")
        found.setdefault(repr(mapping), (name, mapping))
    if len(found) > 1:
        (a, _), (b, _) = list(found.values())[:2]
        raise ValueError(f"{store.root}: tissue maps {a!r} and {b!r} were packed with different label mappings: "
                         "pack them again with one --label-map")
    if not found:
        return None
    _, mapping = next(iter(found.values()))
    if mapping is None:
        return None
    from synthgen.data.tissue import LabelMapping
    return LabelMapping.from_dict(mapping, name=f"{store.root.name} (packed)").label_config()


def check_store(path) -> list:
    """Every problem of a packed store, as :class:`synthgen.data.check.Problem` (``check --store``): its index, then
    each item's arrays (present, readable, the shape the index says), affine and, for label maps, labels the
    generator takes (the rule training reads them with, :func:`check_store_labels`)."""
    from synthgen.io import check_affine
    problems = []
    try:
        store = open_store(path)
        labels = store_labels(store)
    except (FileNotFoundError, ValueError) as err:
        return [check_mod.Problem(str(path), check_mod._strip_path(str(err), path))]
    for section in SECTIONS:
        for i, name in enumerate(store[section].names):
            where = Path(path) / section / name
            try:
                item = store[section][i]
                check_affine(item.affine, where)
                if section == "tissue_maps" and item.kind == "labels":
                    check_store_labels(item.data, labels, where)
            except ValueError as err:
                problems.append(_item_problem(str(err), path, where))
    return problems


def pack(out, tissue_maps=None, lesions=None, real=None, label_map=None, mask_threshold: float | None = None,
         background_channel=None, prob_dtype: str = "uint8", crop_masks: bool = False, pattern: str = "*",
         progress: bool = True, check: bool = True, voxel_size: float = 1.0, tissue_pattern: str | None = None,
         lesion_pattern: str | None = None, real_pattern: str | None = None) -> dict:
    """Pack NIfTI folders into the store ``out`` (created if needed); incremental and atomic.

    Args:
        out: store folder.
        tissue_maps, lesions, real: folders (or files) as for :func:`synthgen.data.check.check_folders`.
        label_map: mapping for 3D tissue maps with another label set.
        prob_dtype: "uint8" (x255, 1/510 rounding error) or "float16" for probability maps.
        crop_masks: a lesion mask's grid is its foreground box (the affine shifted so world coordinates are
            unchanged, ``full_shape`` / ``crop_offset`` kept) instead of its file's grid; either way the store keeps
            only the box, bit-packed.
        pattern, tissue_pattern, lesion_pattern, real_pattern: file-name globs, of every folder or of one kind
            (:func:`synthgen.data.check.folder_patterns`).
        check: run ``check_folders`` first and refuse to pack when it finds errors.
        voxel_size: grid (mm, RAS) of the packed tissue maps and real scans: pack at the training voxel size and
            training reads them as they are (memory-mapped); lesion masks keep their own grid (they are placed
            by affine).

    Returns:
        Counts ``{"packed": n, "skipped": n, "removed": n}``.

    Raises:
        ValueError: bad ``prob_dtype``, an ``out`` that cannot hold a store (a file, not writable, a corrupt index),
            or (with ``check``) the check's errors, all listed; all before anything is written.
    """
    if prob_dtype not in ("uint8", "float16"):
        raise ValueError(f"`prob_dtype` must be 'uint8' or 'float16', got {prob_dtype!r}")
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise ValueError(f"`voxel_size` must be > 0 mm, got {voxel_size}")
    out = Path(out)
    check_output_store(out, [s for s, given in zip(SECTIONS, (tissue_maps, lesions, real)) if given is not None])
    if check:
        problems = check_mod.check_folders(tissue_maps, lesions, real, label_map=label_map,
                                           mask_threshold=mask_threshold, background_channel=background_channel,
                                           pattern=pattern, progress=progress, voxel_size=voxel_size,
                                           tissue_pattern=tissue_pattern, lesion_pattern=lesion_pattern,
                                           real_pattern=real_pattern)
        if check_mod.has_errors(problems):
            raise ValueError("cannot pack, the data have problems:\n" + check_mod.format_problems(problems))
    out.mkdir(parents=True, exist_ok=True)
    index = _read_index(out)
    for folder in [out] + [out / s for s in SECTIONS]:
        remove_stale_temporaries(folder)          # what a killed pack left
    mapping = tissue_mod.resolve_mapping(label_map)
    patterns = check_mod.folder_patterns(pattern, tissue_pattern, lesion_pattern, real_pattern)
    jobs = []   # (section, name, sources, options, writer)
    if tissue_maps is not None:
        root = Path(tissue_maps)
        files, _ = check_mod.list_nifti(root, patterns["tissue_maps"])
        opts = {"label_map": mapping.to_dict() if mapping else None, "prob_dtype": prob_dtype,
                "background_channel": background_channel, "voxel_size": float(voxel_size)}
        for f in files:
            jobs.append(("tissue_maps", _item_name(f, root), [f], opts, _tissue_writer(f, mapping, background_channel,
                                                                                      prob_dtype, voxel_size)))
    if lesions is not None:
        root = Path(lesions)
        files, _ = check_mod.list_nifti(root, patterns["lesions"])
        opts = {"mask_threshold": mask_threshold, "crop": bool(crop_masks), "encoding": MASK_ENCODING}
        for f in files:
            jobs.append(("lesions", _item_name(f, root), [f], opts, _mask_writer(f, mask_threshold, crop_masks)))
    if real is not None:
        root = Path(real)
        files, _ = check_mod.list_nifti(root, patterns["real"])
        pairs, _ = check_mod.pair_real_files(files)
        opts = {"mask_threshold": mask_threshold, "voxel_size": float(voxel_size)}
        for p in pairs:
            jobs.append(("real", _item_name(p.scan, root), [p.scan, p.mask], opts,
                         _real_writer(p, mask_threshold, voxel_size)))
    counts = {"packed": 0, "skipped": 0, "removed": 0}
    bar = None
    if progress and jobs:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc="pack", unit="item")
    wanted = {s: set() for s in SECTIONS}
    for section, name, sources, opts, writer in jobs:
        wanted[section].add(name)
        entries = index["sections"][section]
        old = entries.get(name)
        if _unchanged(old, sources, opts) and all((out / f).exists() for f in old["files"].values()):
            counts["skipped"] += 1
        else:
            folder = out / section
            folder.mkdir(exist_ok=True)
            entry = writer(folder, name)
            entry["files"] = {k: f"{section}/{v}" for k, v in entry["files"].items()}
            entry["options"] = opts
            entry["sources"] = [_provenance(s) for s in sources]
            entry["packed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            entries[name] = entry
            index["version"] = STORE_VERSION               # a version-1 store's other entries read as they are
            _atomic_write_json(out / INDEX_NAME, index)   # after each item: an interrupted pack keeps its work
            counts["packed"] += 1
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    # items whose source disappeared from a folder that was packed again are dropped from the index
    for section, given in (("tissue_maps", tissue_maps), ("lesions", lesions), ("real", real)):
        if given is None:
            continue
        for name in sorted(set(index["sections"][section]) - wanted[section]):
            for f in index["sections"][section].pop(name)["files"].values():
                (out / f).unlink(missing_ok=True)
            counts["removed"] += 1
    _atomic_write_json(out / INDEX_NAME, index)
    return counts


def check_output_store(out, sections=SECTIONS) -> Path:
    """Check, before packing, that ``out`` can hold a store: a writable folder (or creatable), whose index and the
    folders of ``sections`` are not something else, and whose index (if any) is readable.

    Raises:
        ValueError: naming the path and the problem.
    """
    out = check_output_dir(out, "store folder")
    if out.exists():
        for section in sections:
            if (out / section).exists() and not (out / section).is_dir():
                raise ValueError(f"{out / section}: is a file where the store keeps its {section} folder: move it "
                                 "away or pack into another --out")
        if (out / INDEX_NAME).exists():
            _read_index(out)
    return out


def _tissue_writer(path, mapping, background_channel, prob_dtype, voxel_size):
    def write(folder: Path, name: str) -> dict:
        tmap = tissue_mod.read_tissue_map(path, label_map=mapping, background_channel=background_channel,
                                          voxel_size=voxel_size)
        if tmap.kind == "labels":
            data, scale = tmap.data.astype(np.uint8), 1.0
        else:
            data, scale = _quantise_prob(tmap.data, prob_dtype)
        _atomic_save_npy(folder / f"{name}.npy", data)
        return {"kind": tmap.kind, "shape": list(data.shape), "dtype": str(data.dtype), "scale": scale,
                "affine": tmap.affine.tolist(), "files": {"data": f"{name}.npy"}}
    return write


def _mask_writer(path, threshold, crop=False):
    def write(folder: Path, name: str) -> dict:
        mask, affine = tissue_mod.read_mask(path, threshold)
        meta = {"full_shape": list(mask.shape), "crop_offset": [0, 0, 0]}
        idx = np.argwhere(mask)
        lo, hi = (idx.min(0), idx.max(0) + 1) if len(idx) else (np.zeros(3, int), np.zeros(3, int))
        box = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        shape = list(mask.shape)
        if crop and len(idx):
            shape = list(box.shape)
            affine = affine.copy()
            affine[:3, 3] += affine[:3, :3] @ lo   # voxel 0 of the crop sits where voxel lo was
            meta["crop_offset"] = lo.tolist()
            lo, hi = lo - lo, hi - lo
        # only the foreground box is kept, one bit a voxel: the lesion bank reads it without scanning the mask
        meta["box"] = [lo.tolist(), hi.tolist()]
        _atomic_save_npy(folder / f"{name}.npy", pack_box(box))
        return {"kind": "mask", "shape": shape, "dtype": "uint8", "scale": 1.0, "encoding": MASK_ENCODING,
                "affine": affine.tolist(), "voxels": int(len(idx)), **meta, "files": {"data": f"{name}.npy"}}
    return write


def pack_box(box: np.ndarray) -> np.ndarray:
    """The bits of a binary box: ``np.packbits`` of its C-order voxels (nonzero -> 1), ``ceil(size / 8)`` bytes."""
    return np.packbits(np.asarray(box) != 0, axis=None)


class PackedBox:
    """A binary box kept as its bits (:func:`pack_box`; memory-mapped from a store): ``shape`` and ``np.asarray(box)``
    (uint8 {0, 1}, decoded on each call) are all a lesion bank asks of a mask crop."""
    __slots__ = ("bits", "shape")

    def __init__(self, bits: np.ndarray, shape):
        self.bits, self.shape = bits, tuple(int(n) for n in shape)

    def __array__(self, dtype=None, copy=None):
        out = np.unpackbits(self.bits, count=int(np.prod(self.shape))).reshape(self.shape)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"PackedBox(shape={self.shape}, {self.bits.nbytes} bytes)"


def _real_writer(pair, threshold, voxel_size):
    def write(folder: Path, name: str) -> dict:
        scan, affine = tissue_mod.read_scan(pair.scan, voxel_size=voxel_size)
        mask, mask_affine = tissue_mod.read_mask(pair.mask, threshold, voxel_size=voxel_size)
        if mask.shape != scan.shape or not np.allclose(mask_affine, affine, atol=1e-3):
            raise ValueError(f"{pair.mask}: grid differs from its scan {pair.scan}")
        peak = float(np.abs(scan).max())
        scale = peak / FP16_MAX if peak > FP16_MAX else 1.0
        _atomic_save_npy(folder / f"{name}.scan.npy", (scan / scale).astype(np.float16))
        _atomic_save_npy(folder / f"{name}.mask.npy", mask)
        return {"kind": "real", "shape": list(scan.shape), "dtype": "float16", "scale": scale,
                "affine": affine.tolist(), "voxels": int(mask.sum()),
                "files": {"scan": f"{name}.scan.npy", "mask": f"{name}.mask.npy"}}
    return write


@dataclass
class StoreItem:
    """One packed item: memory-mapped arrays (read-only) and the RAS 1 mm affine.

    ``data`` is the tissue map / mask (None for real items); real items have ``scan`` and ``mask``. A bit-packed
    lesion mask's ``data`` is decoded onto its grid (a new array; :meth:`StoreSection.mask_box` reads its box only).
    Multiply ``data`` (uint8 probabilities) or ``scan`` by ``scale`` to get the values back.
    """
    name: str
    affine: np.ndarray
    kind: str
    scale: float
    data: np.ndarray | None = None
    scan: np.ndarray | None = None
    mask: np.ndarray | None = None
    meta: dict | None = None


class StoreSection:
    """One kind of item in a store (``tissue_maps``, ``lesions`` or ``real``): ``len`` and ``[i]``."""

    def __init__(self, root: Path, section: str, entries: dict):
        self.root, self.section = root, section
        self.names = sorted(entries)
        self._entries = entries

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> StoreItem:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"`index` must be an int, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"`index` must be in [0, {len(self)}) for store section {self.section!r}, got {i}")
        name = self.names[i]
        e = self._entries[name]
        if _packed(e):     # a bit-packed mask, decoded onto its grid (a lesion bank reads only the box: mask_box)
            arrays = {"data": np.zeros(e["shape"], np.uint8)}
            lo, hi = e["box"]
            arrays["data"][lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = np.asarray(self._packed_box(e))
        else:
            arrays = {key: self._load(rel, e["shape"]) for key, rel in e["files"].items()}
        return StoreItem(name=name, affine=np.array(e["affine"]), kind=e["kind"], scale=e["scale"],
                         data=arrays.get("data"), scan=arrays.get("scan"), mask=arrays.get("mask"), meta=e)

    def mask_box(self, i: int):
        """Lesion mask ``i`` as a lesion bank keeps it: ``(box, box_affine, voxels)``, its foreground box (a
        :class:`PackedBox`; a read-only memory-mapped view in a version-1 store) with the affine of the box's first
        voxel and its voxel count. None for a mask packed before boxes were recorded (scan ``self[i].data``)."""
        e = self._entries[self.names[i]]
        if "box" not in e:
            return None
        lo, hi = e["box"]
        affine = np.array(e["affine"], dtype=np.float64)
        affine[:3, 3] = affine[:3, :3] @ np.asarray(lo, np.float64) + affine[:3, 3]
        if _packed(e):
            return self._packed_box(e), affine, int(e["voxels"])
        data = self._load(e["files"]["data"], e["shape"])
        return data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], affine, int(e["voxels"])

    def _packed_box(self, e: dict) -> PackedBox:
        shape = [b - a for a, b in zip(*e["box"])]
        return PackedBox(self._load(e["files"]["data"], [-(-int(np.prod(shape)) // 8)]), shape)

    def _load(self, rel: str, shape) -> np.ndarray:
        """The memory map of the store file ``rel``, which the index says has ``shape``."""
        path = self.root / rel
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot be read from the store ({err}); pack again") from err
        if list(array.shape) != list(shape):
            raise ValueError(f"{path}: shape {list(array.shape)} does not match the index {list(shape)}; pack again")
        return array

    def affine(self, i: int) -> np.ndarray:
        """Item ``i``'s voxel -> world affine, from the index (no file opened)."""
        return np.array(self._entries[self.names[i]]["affine"])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _packed(entry: dict) -> bool:
    return entry.get("encoding") == MASK_ENCODING


class PackedStore:
    """A packed store: ``store.tissue_maps``, ``store.lesions``, ``store.real`` (or ``store["lesions"]``)."""

    def __init__(self, root: Path, index: dict):
        self.root, self.index = root, index
        self.sections = {s: StoreSection(root, s, index["sections"][s]) for s in SECTIONS}

    def __getitem__(self, section: str) -> StoreSection:
        if section not in self.sections:
            raise KeyError(f"`section` must be one of {list(SECTIONS)}, got {section!r}")
        return self.sections[section]

    @property
    def tissue_maps(self) -> StoreSection:
        return self.sections["tissue_maps"]

    @property
    def lesions(self) -> StoreSection:
        return self.sections["lesions"]

    @property
    def real(self) -> StoreSection:
        return self.sections["real"]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(v)}" for s, v in self.sections.items())
        return f"PackedStore({str(self.root)!r}, {counts})"


def open_store(path) -> PackedStore:
    """Open a store written by :func:`pack` (reads only the index; arrays are memory-mapped on access).

    Raises:
        FileNotFoundError: no ``index.json`` in ``path``.
        ValueError: corrupt index or another store version.
    """
    path = Path(path)
    if not (path / INDEX_NAME).exists():
        raise FileNotFoundError(f"{path}: not a packed store (no {INDEX_NAME}); create one with "
                                "`python -m synthgen.data pack`")
    return PackedStore(path, _read_index(path))
