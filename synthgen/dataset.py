"""``SynthDataset``: synthetic samples as a PyTorch ``IterableDataset``, one index stream shared by every DataLoader
worker and DDP rank.

Epoch ``e`` holds samples ``e * N .. e * N + N - 1`` of stream ``seed`` (``N = samples_per_epoch``); each is made
from ``(seed, index)`` alone (:class:`synthgen.SynthGenerator`), so which worker or rank makes it never changes
it. Rank ``r`` of ``R`` takes positions ``r, r + R, r + 2R, ...`` of the epoch, padded by wrapping around to
``ceil(N / R)`` positions each (as ``DistributedSampler``: every rank runs the same number of steps), and worker
``w`` of ``W`` takes every ``W``-th of its rank's positions. So the samples of an epoch are the same for any number
of workers and ranks, disjoint between them (up to that padding) and covering.

Epochs: like ``DistributedSampler``, call ``set_epoch(e)`` before iterating epoch ``e``. Each pass also advances
the epoch by one in the process that iterates, so ``num_workers=0`` and ``persistent_workers=True`` get new samples
every epoch without it; with non-persistent workers (the DataLoader default) the workers start from the main
process's copy, so there ``set_epoch`` is what moves to the next epoch.
"""
from __future__ import annotations

import math

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .generator import SynthGenerator
from .interop import as_tissue, synth_one
from .sampling import sample_key


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SynthDataset(IterableDataset):
    """Synthetic image / target pairs from tissue maps, for ``torch.utils.data.DataLoader`` (any workers, DDP).

    Example::

        ds = synthgen.SynthDataset(tissue, samples_per_epoch=1000, affine=affine, seed=0)
        loader = DataLoader(ds, batch_size=2, num_workers=4)
        for epoch in range(10):
            ds.set_epoch(epoch)
            for batch in loader:     # batch["image"] (2, 1, *crop) float32, batch["label"] (2, 1, *crop) uint8
                ...

    Args:
        tissue: a tissue map ``(C, X, Y, Z)`` (or ``(1, C, X, Y, Z)``; see :func:`synthgen.interop.as_tissue`), a
            list of them, or a :class:`synthgen.data.TissueMaps` source (a packed store or a folder of thousands of
            maps, read when a sample draws them; their affines and label mapping come with it); sample ``i`` uses
            map ``sample_key(seed, i, "map") % len(maps)``.
        samples_per_epoch: ``N``, samples in one epoch over all ranks.
        seed: the sample stream.
        config, lesions: :class:`synthgen.GeneratorConfig` and lesion source of the generator, or
        generator: a ready :class:`synthgen.SynthGenerator`.
        affine: the maps' ``(4, 4)`` voxel -> world affine (one for all, or a list; default identity): each item
            carries its output grid's affine.
        rank, world_size: this DDP rank (default: from ``torch.distributed`` when initialised, else 0 of 1).
        image_key, target_key: names of the image and target in each item.
        device: generate there (default: where the maps are; CUDA only with ``num_workers=0``).

    Yields:
        dicts ``{image_key: (1, *crop) float32, target_key: (1, *crop) uint8, "affine": (4, 4) float64,
        "index": int, "map": int}``.

    Raises:
        ValueError: bad sizes, ranks or keys (names the argument).
    """

    def __init__(self, tissue, samples_per_epoch: int, seed: int = 0, config=None, lesions=None,
                 generator: SynthGenerator | None = None, affine=None, rank: int | None = None,
                 world_size: int | None = None, image_key: str = "image", target_key: str = "label", device=None):
        super().__init__()
        import dataclasses

        from .config import GeneratorConfig
        from .data.sources import TissueMaps
        from .data.training import merge_labels
        self.source = tissue if isinstance(tissue, TissueMaps) else None
        if self.source is not None:
            if generator is None:           # the maps' label mapping sets the generator's labels
                config = config or GeneratorConfig()
                config = dataclasses.replace(config, labels=merge_labels(self.source.labels, config.labels))
            maps, affine = [None] * len(self.source), None
        else:
            maps = list(tissue) if isinstance(tissue, (list, tuple)) else [tissue]
        if not maps:
            raise ValueError("`tissue` must hold at least one tissue map, got an empty list")
        num_labels = (generator.config if generator is not None else config or GeneratorConfig()).labels.num_labels
        self.maps = maps if self.source is not None else [
            as_tissue(m[0] if getattr(m, "ndim", 0) == 5 and m.shape[0] == 1 else m, f"tissue[{i}]", num_labels)
            for i, m in enumerate(maps)]
        affines = affine if isinstance(affine, (list, tuple)) else [affine] * len(maps)
        if len(affines) != len(maps):
            raise ValueError(f"`affine` must be one affine or one per map ({len(maps)}), got {len(affines)}")
        self.affines = [np.eye(4) if a is None else np.asarray(a, dtype=np.float64) for a in affines]
        for i, a in enumerate(self.affines):
            if a.shape != (4, 4):
                raise ValueError(f"`affine[{i}]` must be 4x4, got shape {a.shape}")
        if int(samples_per_epoch) != samples_per_epoch or samples_per_epoch < 1:
            raise ValueError(f"`samples_per_epoch` must be a positive int, got {samples_per_epoch}")
        if generator is not None and (config is not None or lesions is not None):
            raise ValueError("`generator` already holds a config and lesions: pass either it or `config`/`lesions`")
        reserved = ("affine", "index", "map")
        if image_key == target_key or image_key in reserved or target_key in reserved:
            raise ValueError(f"`image_key` and `target_key` must differ from each other and from 'affine', 'index', "
                             f"'map', got {image_key!r} and {target_key!r}")
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.generator = generator or SynthGenerator(config, lesions=lesions)
        self._rank, self._world = rank, world_size
        self.image_key, self.target_key, self.device = image_key, target_key, device
        self.epoch = 0
        self.rank_and_world()        # validates

    def rank_and_world(self) -> tuple[int, int]:
        """``(rank, world_size)``: as given, else from ``torch.distributed``."""
        rank, world = _distributed()
        rank = rank if self._rank is None else int(self._rank)
        world = world if self._world is None else int(self._world)
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"`rank` must be in [0, world_size) with world_size >= 1, got rank {rank} of {world}")
        return rank, world

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"`epoch` must be a non-negative int, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (over all its workers)."""
        return math.ceil(self.samples_per_epoch / self.rank_and_world()[1])

    def indices(self, epoch: int, rank: int | None = None, world_size: int | None = None, worker: int = 0,
                num_workers: int = 1) -> list[int]:
        """Sample indices that ``worker`` of ``num_workers`` on ``rank`` of ``world_size`` makes in ``epoch``."""
        if rank is None or world_size is None:
            rank, world_size = self.rank_and_world()
        n = self.samples_per_epoch
        per_rank = math.ceil(n / world_size)
        positions = [(rank + world_size * j) % n for j in range(per_rank)]    # wrap around: equal rank lengths
        return [epoch * n + k for k in positions[worker::num_workers]]

    def sample(self, index: int) -> dict:
        """Sample ``index`` of the stream, as an item of this dataset."""
        m = sample_key(self.seed, index, "map") % len(self.maps) if len(self.maps) > 1 else 0
        tissue, map_affine = self.maps[m], self.affines[m]
        if self.source is not None:                 # read when drawn (a store's maps are memory-mapped)
            item = self.source.load(m)
            tissue, map_affine = item.tensor(), item.affine
        image, target, affine = synth_one(self.generator, tissue, self.seed, index, affine=map_affine,
                                          device=self.device)
        return {self.image_key: image, self.target_key: target, "affine": affine, "index": int(index), "map": m}

    def __iter__(self):
        epoch = self.epoch                  # read when the pass starts, not at its first item
        self.epoch += 1                     # the next pass in this process is the next epoch
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self.rank_and_world()
        return (self.sample(index) for index in self.indices(epoch, rank, world, worker, num_workers))


__all__ = ["SynthDataset"]
