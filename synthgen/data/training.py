"""Training batches: step ``n`` -> ``(image, target)`` on the training device, with the inputs read ahead.

:class:`TrainingBatches` is what a training loop asks for a batch. Synthetic step ``n`` (sample index ``n *
batch`` of stream ``seed``) draws its tissue map from ``(seed, n)`` alone and synthesises on the device; with
real scans, odd steps are real (augmented on the device), exactly 1:1 (:func:`synthgen.real.mixed_source`). A
background thread reads the maps and scans the next ``prefetch`` steps will use (memory-mapped store or
files) into pinned host memory; the device holds only the map of the step being made (and a repeat of it is
not copied again). A batch is the same bytes whatever the prefetch depth and however many maps there are in
flight: nothing but ``(seed, step)`` and the data decide it.

:func:`training_lesions` reads the lesion masks once into one bank for every map and both splits.
"""
from __future__ import annotations

import threading
import warnings

import torch

from synthgen.data.prefetch import Prefetcher
from synthgen.data.sources import TissueMaps
from synthgen.generator import check_tissue
from synthgen.sampling import sample_key


def training_lesions(config, store=None, folder=None, progress: bool = False):
    """``(train, holdout)`` lesion sources: masks from a packed store (when it holds any) or a folder, read
    once into one bank, split by file name; procedural lesions without either.

    With few masks the hold-out may leave a split empty: an empty training split takes every mask (and so does
    validation, which is then not held out), an empty hold-out validates on the training masks; both warn.

    Args:
        config: the :class:`synthgen.config.LesionConfig` (pattern, threshold, filters, hold-out fraction).

    Raises:
        ValueError / FileNotFoundError: as :meth:`synthgen.lesions.LesionSource.from_folder` / ``from_store``.
    """
    from synthgen.lesions import LesionSource
    from synthgen.lesions.masks import list_mask_files, load_mask_bank, mask_bank_from_items, store_mask_items
    if store is not None and not hasattr(store, "lesions"):
        from synthgen.data.store import open_store
        store = open_store(store)
    if store is not None and len(store.lesions):
        items = store_mask_items(store, config.mask_pattern)
        if not items:
            raise ValueError(f"{store.root}: no lesion mask in the store packed from a file matching "
                             f"{config.mask_pattern!r}")
        bank = mask_bank_from_items(items, config.mask_threshold, None, config.holdout_fraction, config.max_volume_ml,
                                    progress=progress)
    elif folder:
        bank = load_mask_bank(list_mask_files(folder, config.mask_pattern), config.mask_threshold, None,
                              config.holdout_fraction, config.max_volume_ml, progress=progress)
    else:
        return LesionSource.procedural(config=config), LesionSource.procedural(config=config)
    train = bank.split("train", config.holdout_fraction)
    holdout = bank.split("holdout", config.holdout_fraction)
    if not len(train):
        warnings.warn(f"all {len(bank)} lesion masks fall in the hold-out split ({config.holdout_fraction:.0%} by "
                      "file name): training uses every mask, and validation is not held out", stacklevel=2)
        train = holdout
    if not len(holdout):
        warnings.warn(f"no lesion mask of {len(bank)} falls in the hold-out split ({config.holdout_fraction:.0%} by "
                      "file name): validation uses the training masks (not held out)", stacklevel=2)
        holdout = train
    return LesionSource(config, train), LesionSource(config, holdout)


class TrainingBatches:
    """The batch of step ``n``: synthetic, or (with ``real``) real on odd steps, exactly 1:1.

    Args:
        generator: a :class:`synthgen.SynthGenerator`; ``lesions`` is set as its lesion source.
        maps: a :class:`synthgen.data.sources.TissueMaps` (None: real only).
        seed, batch_size: step ``n`` holds samples ``n * batch_size ...`` of stream ``seed``.
        device: where batches are made.
        lesions: the training lesion source (None: healthy samples).
        real: a :class:`synthgen.data.sources.RealScans` (None: synthetic only); ``real_only`` makes every step
            real (the paper's baseline).
        prefetch: steps whose inputs are read ahead (the bound of the pinned-memory queue).

    Call :meth:`start` before a run of consecutive steps to read ahead; without it (or for a step out of
    order) the inputs are read when asked. Close it (or use it as a context manager) to stop the thread.
    """

    def __init__(self, generator, maps: TissueMaps | None, seed: int, batch_size: int, device, lesions=None,
                 real=None, real_only: bool = False, prefetch: int = 2):
        if maps is None and real is None:
            raise ValueError("`maps` or `real` must be given, got neither")
        self.generator, self.maps, self.seed, self.batch = generator, maps, int(seed), int(batch_size)
        real_only = real_only or maps is None
        self.device, self.real, self.real_only, self.prefetch = torch.device(device), real, real_only, int(prefetch)
        self._lock = threading.Lock()      # start() / close() on one thread, batches made on another
        self.generator.lesions = lesions
        self._augment = None
        if real is not None:
            from synthgen.real import RealAugmenter
            self._augment = RealAugmenter(generator.config)
        self._ahead = None
        self._next = None
        self._worker_map = None          # the map index the reading thread read last
        self._resident = None            # (map index, device tensor, affine) of the last synthetic step

    # ---- which data a step uses -----------------------------------------------------------------------
    def is_real(self, step: int) -> bool:
        return self.real is not None and (self.real_only or step % 2 == 1)

    def sample_index(self, step: int) -> int:
        """Index in its stream (synthetic or real) of the first sample of ``step``."""
        if self.real is None or self.real_only:
            return step * self.batch
        return (step // 2) * self.batch               # synthgen.real.mixed_source: even synthetic, odd real

    def map_index(self, step: int) -> int:
        """The tissue map of synthetic step ``step``: drawn from ``(seed, synthetic step)`` alone."""
        return sample_key(self.seed, self.sample_index(step) // self.batch, "tissue") % len(self.maps)

    def real_items(self, step: int) -> list[int]:
        from synthgen.real import real_item
        first = self.sample_index(step)
        return [real_item(self.seed, i, len(self.real)) for i in range(first, first + self.batch)]

    # ---- reading (on the prefetch thread, or inline) -------------------------------------------------------
    def _inputs(self, step: int, worker: bool):
        if self.is_real(step):
            return ("real", [self.real.load(i) for i in self.real_items(step)])
        which = self.map_index(step)
        last = self._worker_map if worker else (self._resident[0] if self._resident else None)
        if which == last:
            return ("same", which)
        if worker:
            self._worker_map = which
        item = self.maps.load(which)
        tensor = item.tensor()
        check_tissue(tensor, self.generator.config.labels.num_labels)   # on the host copy: the device is not read
        return ("map", which, tensor, item.affine)

    def start(self, first: int, end: int) -> "TrainingBatches":
        """Read the inputs of steps ``first .. end - 1`` ahead, in order, on a background thread. Call it before
        the steps are asked for (e.g. before a generate-ahead thread starts asking)."""
        with self._lock:
            self._close()
            self._worker_map = self._resident[0] if self._resident else None
            if self.real is None and len(self.maps) == 1:
                return self              # one map: read once, kept on the device
            cuda = self.device.type == "cuda"
            self._ahead = Prefetcher(lambda s: self._inputs(s, worker=True), range(first, end),
                                     depth=self.prefetch, device=None, pin_memory=cuda)
            self._next = first
        return self

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        self._ahead = self._next = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _take(self, step: int):
        with self._lock:
            if self._ahead is not None and step == self._next:
                try:
                    value = next(self._ahead)
                    self._next += 1
                    return value
                except StopIteration:    # past the range it was started on
                    pass
            if self._ahead is not None:  # out of order or past the end: the read-ahead no longer matches
                self._close()
        return self._inputs(step, worker=False)

    # ---- making the batch ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, step: int):
        inputs = self._take(step)
        if inputs[0] == "real":
            return self._real_batch(step, inputs[1])
        if inputs[0] == "map":
            _, which, host, affine = inputs
            tensor = host.to(self.device, non_blocking=host.is_pinned())
            self.generator.mark_checked(tensor)        # its host copy was checked where it was read
            self._resident = (which, tensor, affine)
        _, tissue, affine = self._resident
        return self.generator(tissue, seed=self.seed, index=self.sample_index(step), batch_size=self.batch,
                              affine=affine)

    def _real_batch(self, step: int, items):
        images, targets = [], []
        first = self.sample_index(step)
        for i, (scan, mask) in enumerate(items):
            scan = scan.to(self.device, non_blocking=scan.is_pinned())
            mask = mask.to(self.device, non_blocking=mask.is_pinned())
            image, target = self._augment(scan[None, None], mask[None, None], seed=self.seed, index=first + i)
            images.append(image)
            targets.append(target)
        return torch.cat(images), torch.cat(targets)

    def resident_maps(self) -> int:
        """Tissue maps this object holds on the device (at most one)."""
        return int(self._resident is not None)


def validation_set(generator, maps: TissueMaps, seed: int, n: int, device, lesions=None) -> list:
    """``n`` fixed validation samples on ``device``: sample ``i`` uses map ``i % len(maps)`` and ``lesions``
    (the held-out source), stream ``seed`` (keep it apart from every training stream). Maps are read one at a
    time and not kept.

    Returns:
        A list of ``(image (1, 1, *crop), target (1, *crop) uint8)``.
    """
    generator.lesions = lesions
    out = []
    for i in range(n):
        item = maps.load(i % len(maps))
        host = item.tensor()
        check_tissue(host, generator.config.labels.num_labels)
        tissue = host.to(device)
        generator.mark_checked(tissue)
        out.append(generator(tissue, seed=seed, index=i, batch_size=1, affine=item.affine))
        del tissue
    return out


def data_labels(store=None, label_map=None):
    """What the training maps' labels mean (a :class:`synthgen.config.LabelConfig`), known without reading a map:
    from the store's index (its maps were mapped when packed), else from the label mapping; None: our
    convention."""
    if store is not None:
        from synthgen.data.store import store_labels
        if not hasattr(store, "tissue_maps"):
            from synthgen.data.store import open_store
            store = open_store(store)
        if len(store.tissue_maps):
            return store_labels(store)
    if label_map is not None:
        from synthgen.data.tissue import resolve_mapping
        return resolve_mapping(label_map).label_config()
    return None


def merge_labels(found, configured):
    """The generator's :class:`synthgen.config.LabelConfig`: ``found`` (the data's, :func:`data_labels`) or
    ``configured`` when the data carry none.

    Raises:
        ValueError: ``configured`` was set (not the default) and differs from the data's.
    """
    from synthgen.config import LabelConfig
    if found is None:
        return configured
    if configured != LabelConfig() and configured != found:
        raise ValueError("`generator.labels` must match the tissue maps' label mapping, got a different one "
                         "(set --label-map, or leave generator.labels unset)")
    return found
