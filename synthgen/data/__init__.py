"""The user's data: tissue maps, lesion masks and real scans, checked, packed and prefetched.

- ``default_tissue_map()``: the bundled MNI152 2009a tissue map (no data needed).
- ``read_tissue_map`` / ``load_tissue_map`` / ``read_mask`` / ``read_scan``: NIfTI in RAS at 1 mm
  (``synthgen.data.tissue``), with label mappings for other label sets (``LabelMapping``, ``freesurfer_mapping``).
- ``check_folders``: every problem of every file before long work starts (``python -m synthgen.data check``).
- ``pack`` / ``open_store``: compact memory-mapped arrays (``python -m synthgen.data pack``).
- ``tissue_maps`` / ``real_scans``: the training data by index (store, folder or bundled), read when used
  (``synthgen.data.sources``); ``TrainingBatches`` / ``training_lesions``: step -> batch on the device with the
  inputs read ahead, one lesion bank for every map (``synthgen.data.training``).
- ``Prefetcher``: background loading into pinned memory with asynchronous copies to the device.
- ``split_items`` / ``subject_id``: reproducible train/validation splits, disjoint in subjects.
"""
from synthgen.data.check import Problem, check_folders, format_problems, has_errors, pair_real_files, pairing_key
from synthgen.data.default_map import DEFAULT_TISSUE_LABELS, default_tissue_map, default_tissue_map_path
from synthgen.data.prefetch import Prefetcher, PrefetchError
from synthgen.data.sources import MapItem, RealScans, TissueMaps, real_scans, tissue_maps
from synthgen.data.splits import split_items, subject_id
from synthgen.data.store import PackedStore, StoreItem, open_store, pack
from synthgen.data.tissue import (LabelMapping, TissueMap, freesurfer_mapping, load_tissue_map, read_mask,
                                  read_scan, read_tissue_map, resolve_mapping)

__all__ = [
    "DEFAULT_TISSUE_LABELS", "default_tissue_map", "default_tissue_map_path",
    "LabelMapping", "TissueMap", "freesurfer_mapping", "resolve_mapping",
    "read_tissue_map", "load_tissue_map", "read_mask", "read_scan",
    "Problem", "check_folders", "format_problems", "has_errors", "pair_real_files", "pairing_key",
    "pack", "open_store", "PackedStore", "StoreItem",
    "Prefetcher", "PrefetchError",
    "MapItem", "TissueMaps", "RealScans", "tissue_maps", "real_scans", "TrainingBatches", "training_lesions",
    "split_items", "subject_id",
]


def __getattr__(name):
    # the training layer imports the generator: loaded when asked, so `synthgen.data` stays light
    if name in ("TrainingBatches", "training_lesions"):
        from synthgen.data import training
        return getattr(training, name)
    raise AttributeError(f"module 'synthgen.data' has no attribute {name!r}")
