"""Where training samples come from: tissue maps and real scans by index, read when a sample needs them.

A source knows its items (names, and for tissue maps what their labels mean) after reading an index or a file
list, and reads an item only when asked: ``load(i)`` returns host arrays on the training grid (RAS,
``voxel_size`` mm). Items from a packed store are memory-mapped (the OS pages in what is read); items that
must be decoded or resampled on each read (NIfTI files, a store at another voxel size) go through a small
bounded cache. Nothing here holds every map in memory, so a source of 2,000 maps costs what its index costs.

- :func:`tissue_maps` -> :class:`StoreTissueMaps` | :class:`FolderTissueMaps` | :class:`DefaultTissueMap`
  (or :class:`TensorTissueMaps` for maps already in memory);
- :func:`real_scans` -> :class:`RealScans` (scans and lesion masks, from a store or a folder).
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import numpy as np
import torch

from synthgen import io, validate
from synthgen.data.store import check_store_labels, store_labels


@dataclass
class MapItem:
    """One tissue map on the training grid: ``data`` ``(X, Y, Z)`` uint8 labels (``kind`` "labels") or
    ``(C, X, Y, Z)`` float32 probabilities (``kind`` "soft"), and its voxel -> world affine."""
    data: np.ndarray
    affine: np.ndarray
    kind: str

    def tensor(self) -> torch.Tensor:
        """``(1, 1, X, Y, Z)`` uint8 or ``(1, C, X, Y, Z)`` float32 host tensor. A memory-mapped (read-only) map is
        copied here, so the disk read happens on the thread that asks (the prefetch thread in training)."""
        data = self.data
        t = torch.from_numpy(np.array(data) if isinstance(data, np.memmap) or not data.flags.writeable
                             else np.ascontiguousarray(data))
        return t[None, None] if self.kind == "labels" else t[None]


def on_grid(data: np.ndarray, affine: np.ndarray, kind: str, voxel_size: float, name="tissue map") -> MapItem:
    """A tissue map resampled to the training grid (RAS, ``voxel_size`` mm; nearest for labels, trilinear for
    probabilities); a map already on such a grid is only reoriented (no copy when already RAS).

    Raises:
        ValueError: (naming ``name``) the grid at ``voxel_size`` would exceed the memory limit
            (:func:`synthgen.validate.check_reslice`).
    """
    if kind == "labels":
        labels, affine = io.to_ras_1mm(np.asarray(data, dtype=np.uint8), affine, order=0, voxel_size=voxel_size,
                                       name=name)
        return MapItem(labels, affine, kind)
    soft = np.moveaxis(np.asarray(data, dtype=np.float32), 0, -1)
    soft, affine = io.to_ras_1mm(soft, affine, order=1, voxel_size=voxel_size, name=name)
    return MapItem(np.moveaxis(soft, -1, 0), affine, kind)


def on_training_grid(affine, voxel_size: float) -> bool:
    """Whether an item packed with ``affine`` already lies on the training grid (RAS, ``voxel_size`` mm): then it is
    read as it is (memory-mapped), else resampled."""
    sizes = io.voxel_sizes(affine)
    return bool(np.allclose(sizes, voxel_size, atol=1e-3) and np.allclose(np.asarray(affine)[:3, :3], np.diag(sizes),
                                                                           atol=1e-4))


class _Cache:
    """A thread-safe LRU cache of at most ``size`` items (0: none)."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = int(size), collections.OrderedDict(), threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        if self.size > 0:
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return value


class TissueMaps:
    """Tissue maps by index (base class): ``len``, ``names``, ``labels`` and ``load(i)`` -> :class:`MapItem`.

    ``labels`` is the :class:`synthgen.config.LabelConfig` that says what the maps' labels mean (None: our
    convention, 0 bg, 1 GM, 2 WM, 3 PV, 4 CSF, 5+ non-brain). ``reads`` counts the items read from disk.
    """
    names: list
    labels = None
    voxel_size: float = 1.0

    def __init__(self):
        self.reads = 0

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> MapItem:
        raise NotImplementedError

    def _index(self, i) -> int:
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self):
            raise IndexError(f"`index` must be an int in [0, {len(self)}), got {i!r}")
        return int(i)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} maps at {self.voxel_size:g} mm)"


class StoreTissueMaps(TissueMaps):
    """The ``tissue_maps`` section of a packed store: memory-mapped items (RAS 1 mm as packed), resampled to
    ``voxel_size`` on read when it differs (those reads go through a cache of ``cache`` maps).

    Raises:
        ValueError: the items were packed with different label mappings.
    """

    def __init__(self, store, voxel_size: float = 1.0, cache: int = 4):
        super().__init__()
        if not hasattr(store, "tissue_maps"):
            from synthgen.data.store import open_store
            store = open_store(store)
        self.store, self.section, self.voxel_size = store, store.tissue_maps, float(voxel_size)
        self.names = list(self.section.names)
        self.labels = store_labels(store)
        self._cache = _Cache(cache)

    def _read(self, i: int) -> MapItem:
        item = self.section[i]
        self.reads += 1
        if item.kind == "labels":
            data = item.data
            check_store_labels(data, self.labels, f"{self.store.root}/{item.name} (packed)")
        else:   # probabilities may be packed as uint8 x scale
            data = item.data.astype(np.float32) * np.float32(item.scale)
        if on_training_grid(item.affine, self.voxel_size):
            return MapItem(data, item.affine, item.kind)       # on the grid: a memory map, read when copied
        return on_grid(np.array(data), item.affine, item.kind, self.voxel_size,
                       name=f"{self.store.root}/{item.name} (packed)")

    def load(self, i: int) -> MapItem:
        i = self._index(i)
        if on_training_grid(self.section.affine(i), self.voxel_size):
            return self._read(i)                 # memory-mapped: nothing to keep
        return self._cache.get(i, lambda: self._read(i))




class FolderTissueMaps(TissueMaps):
    """The NIfTI tissue maps of a folder (recursive, sorted), decoded when read (a cache keeps ``cache``).

    Decoding a 1 mm map takes a fraction of a second; for thousands of maps, pack them once
    (``python -m synthgen.data pack``) and train from the store.

    Raises:
        FileNotFoundError / ValueError: no NIfTI files in ``folder``; a bad ``label_map``.
    """

    def __init__(self, folder, label_map=None, voxel_size: float = 1.0, cache: int = 4, background_channel=None):
        super().__init__()
        from synthgen.data import check
        from synthgen.data.tissue import resolve_mapping
        files, problems = check.list_nifti(folder)
        if not files:
            raise FileNotFoundError(f"{folder}: no NIfTI tissue maps"
                                    + (f" ({problems[0].message})" if problems else ""))
        self.files, self.voxel_size = files, float(voxel_size)
        self.names = [str(f) for f in files]
        self.mapping = resolve_mapping(label_map)
        self.labels = self.mapping.label_config() if self.mapping is not None else None
        self.background_channel = background_channel
        self._cache = _Cache(cache)

    def _read(self, i: int) -> MapItem:
        from synthgen.data.tissue import read_tissue_map
        self.reads += 1
        m = read_tissue_map(self.files[i], label_map=self.mapping, background_channel=self.background_channel,
                            voxel_size=self.voxel_size)
        return MapItem(m.data, m.affine, m.kind)

    def load(self, i: int) -> MapItem:
        i = self._index(i)
        return self._cache.get(i, lambda: self._read(i))


class DefaultTissueMap(TissueMaps):
    """The bundled MNI152 2009a tissue map (:func:`synthgen.data.default_tissue_map`) at ``voxel_size`` mm."""

    def __init__(self, voxel_size: float = 1.0):
        super().__init__()
        from synthgen.data.default_map import default_tissue_map_path
        self.voxel_size = float(voxel_size)
        self.names = [str(default_tissue_map_path())]
        self._item = None

    def load(self, i: int) -> MapItem:
        self._index(i)
        if self._item is None:
            from synthgen.data.default_map import default_tissue_map
            labels, affine = default_tissue_map(with_affine=True)
            self.reads += 1
            self._item = on_grid(labels[0, 0].numpy(), affine, "labels", self.voxel_size,
                                 name=f"{self.names[0]} (the bundled tissue map)")
        return self._item


class TensorTissueMaps(TissueMaps):
    """Maps already in memory: ``maps`` a list of ``(1, C, X, Y, Z)`` tensors (uint8 labels or float
    probabilities) on the training grid, ``affines`` their voxel -> world affines."""

    def __init__(self, maps: list, affines: list, labels=None, voxel_size: float = 1.0):
        super().__init__()
        if len(maps) != len(affines) or not maps:
            raise ValueError(f"`maps` and `affines` must be non-empty lists of one length, got {len(maps)} and "
                             f"{len(affines)}")
        self.maps, self.affines = list(maps), [np.asarray(a, np.float64) for a in affines]
        self.names = [f"map[{i}]" for i in range(len(maps))]
        self.labels, self.voxel_size = labels, float(voxel_size)

    def load(self, i: int) -> MapItem:
        i = self._index(i)
        t = self.maps[i].cpu()
        kind = "soft" if t.is_floating_point() else "labels"
        return MapItem((t[0, 0] if kind == "labels" else t[0]).numpy(), self.affines[i], kind)


def tissue_maps(store=None, folder=None, label_map=None, voxel_size: float = 1.0, cache: int = 4) -> TissueMaps:
    """The tissue maps of training: a packed store's (when it holds any), else a folder's, else the bundled map.

    Raises:
        ValueError: both ``store`` maps and ``folder`` given.
    """
    if store is not None and not hasattr(store, "tissue_maps"):
        from synthgen.data.store import open_store
        store = open_store(store)
    if store is not None and len(store.tissue_maps):
        if folder is not None:
            raise ValueError(f"tissue maps come from the store {store.root} or the folder {folder}, not both")
        return StoreTissueMaps(store, voxel_size, cache)
    if folder is not None:
        return FolderTissueMaps(folder, label_map, voxel_size, cache)
    return DefaultTissueMap(voxel_size)


class RealScans:
    """Real scans with their lesion masks, by index: ``load(i)`` -> ``(scan float16 (X, Y, Z), mask uint8)``
    on the training grid (host tensors).

    From a packed store's ``real`` section the items are memory-mapped (resampled on read when ``voxel_size``
    differs from the packed 1 mm, through a cache of ``cache`` items); from a folder (scan / mask pairs, see
    :func:`synthgen.data.check.pair_real_files`) each pair is decoded once and kept as float16 / uint8.

    Raises:
        ValueError: not exactly one of ``folder`` and ``store`` given, or no pairs.
    """

    def __init__(self, folder=None, store=None, voxel_size: float = 1.0, cache: int = 8):
        if (folder is None) == (store is None):
            raise ValueError(f"`folder` or `store` must be given, not both nor neither, got {folder!r} and "
                             f"{store!r}")
        self.voxel_size, self.reads = float(voxel_size), 0
        self.store = self.pairs = None
        if store is not None:
            if not hasattr(store, "real"):
                from synthgen.data.store import open_store
                store = open_store(store)
            self.store = store
            self.names = list(store.real.names)
            self._cache = _Cache(cache)
        else:
            from synthgen.data import check
            files, _ = check.list_nifti(folder)
            self.pairs, _ = check.pair_real_files(files)
            self.names = [str(p.scan) for p in self.pairs]
            self._cache = _Cache(len(self.pairs))          # decoded once, kept
        if not self.names:
            raise ValueError(f"{folder or store.root}: no real scan with a lesion mask")

    def __len__(self) -> int:
        return len(self.names)

    def _read(self, i: int):
        self.reads += 1
        if self.store is not None:
            item = self.store.real[i]
            if on_training_grid(item.affine, self.voxel_size) and item.scale == 1.0:
                return torch.from_numpy(np.array(item.scan)), torch.from_numpy(np.array(item.mask))
            scan = item.scan.astype(np.float32) * np.float32(item.scale)   # packed as fp16 / scale
            where = f"{self.store.root}/{item.name} (packed)"
            scan, _ = io.to_ras_1mm(scan, item.affine, order=1, voxel_size=self.voxel_size, name=where)
            mask, _ = io.to_ras_1mm(np.array(item.mask), item.affine, order=0, voxel_size=self.voxel_size, name=where)
        else:
            from synthgen.data.tissue import read_mask, read_scan
            scan, _ = read_scan(self.pairs[i].scan, voxel_size=self.voxel_size)
            mask, _ = read_mask(self.pairs[i].mask, voxel_size=self.voxel_size)
        return (torch.from_numpy(np.ascontiguousarray(scan)).half(),
                torch.from_numpy(np.ascontiguousarray(mask).astype(np.uint8)))

    def load(self, i: int):
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self):
            raise IndexError(f"`index` must be an int in [0, {len(self)}), got {i!r}")
        i = int(i)
        if self.store is not None and on_training_grid(self.store.real.affine(i), self.voxel_size):
            return self._read(i)                 # memory-mapped: nothing to keep
        return self._cache.get(i, lambda: self._read(i))


def real_scans(store=None, folder=None, voxel_size: float = 1.0):
    """The real scans of training: a packed store's (when it holds any), else a folder's; None without either."""
    if store is not None and not hasattr(store, "real"):
        from synthgen.data.store import open_store
        store = open_store(store)
    if store is not None and len(store.real):
        return RealScans(store=store, voxel_size=voxel_size)
    if folder is not None:
        return RealScans(folder=folder, voxel_size=voxel_size)
    return None
