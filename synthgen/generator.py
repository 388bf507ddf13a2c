"""The synthetic-sample generator of the paper (section 2): checks the tissue map, draws each sample's parameters
and lesion, then runs the pipeline by the reference ops (:mod:`synthgen.reference`) or the fused fast path
(:mod:`synthgen.fast`, checked once against the reference), whichever the dispatcher picks.
"""
from __future__ import annotations

import time
import warnings
import weakref
from contextlib import contextmanager

import torch

from . import fast, ops
from .backend import forced_backend, select_backend
from .config import DEFAULT_NUM_LABELS, GeneratorConfig
from .reference import generate_ref, label_tables
from .sampling import SampleParams, sample_params
from .validate import label_range_problem, tissue_is_background


def check_tissue(tissue: torch.Tensor, num_labels: int = DEFAULT_NUM_LABELS) -> None:
    """Raise a clear error unless ``tissue`` is a batch of label maps (labels < ``num_labels``) or probability maps
    (at most ``num_labels`` channels)."""
    if not isinstance(tissue, torch.Tensor):
        raise TypeError(f"`tissue` must be a torch.Tensor, got {type(tissue).__name__}")
    if tissue.ndim != 5:
        raise ValueError(f"`tissue` must be (B, C, D, H, W), got shape {tuple(tissue.shape)}")
    if tissue.is_floating_point():
        if tissue.shape[1] < 2 or tissue.shape[1] > num_labels:
            raise ValueError(f"probability `tissue` must have 2..{num_labels} channels "
                             f"[bg, GM, WM, PV, CSF, ...], got {tissue.shape[1]}")
        if not bool(torch.isfinite(tissue).all()):
            raise ValueError("`tissue` probabilities contain NaN or Inf")
        lo, hi = float(tissue.min()), float(tissue.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"`tissue` probabilities must be in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    elif tissue.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64):
        if tissue.shape[1] != 1:
            raise ValueError(f"integer `tissue` labels must have 1 channel, got shape {tuple(tissue.shape)}")
        problem = label_range_problem(int(tissue.min()), int(tissue.max()), num_labels)
        if problem:
            raise ValueError(f"`tissue` {problem}")
    else:
        raise TypeError(f"`tissue` must be integer labels or float probabilities, got dtype {tissue.dtype}")


def _tensor_key(t: torch.Tensor) -> tuple:
    """What identifies a tensor's contents without reading them: storage, in-place version, view and place."""
    return t.data_ptr(), t._version, tuple(t.shape), tuple(t.stride()), t.dtype, t.device


class SynthGenerator:
    """Synthetic MR images with segmentation targets from tissue maps (SynthSeg-style, with stroke lesions).

    Example::

        gen = synthgen.SynthGenerator()
        tissue = synthgen.data.default_tissue_map()
        image, target = gen(tissue, seed=0)      # (1, 1, 192, 192, 192) float32, (1, 192, 192, 192) uint8

    Args:
        config: the ranges (:class:`synthgen.config.GeneratorConfig`); the paper's by default.
        lesions: an object with ``sample(tissue, keys, affine=None, classes=None, region=None) ->
            (intensity_weight, label_weight[, offset]) | None`` (see :class:`synthgen.lesions.LesionSource`:
            ``affine`` is the map's voxel -> world affine, ``classes`` the tissue class of each label, ``region``
            per sample the map box ``(lo, hi)`` its crop reaches, or None), or None for healthy samples.
    """

    def __init__(self, config: GeneratorConfig | None = None, lesions=None):
        self.config = (config or GeneratorConfig()).validate()
        self.lesions = lesions
        self.stage_ms: dict[str, float] = {}
        self.profile = False
        self._checked: dict = {}
        self._tables: dict = {}

    def label_tables(self, device) -> tuple[torch.Tensor, int]:
        """``(target_of_label, lesion_class)``: the uint8 table of ``config.target_table()`` on ``device``
        (uploaded once per device) and the lesion's class."""
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = label_tables(self.config, device)
        return self._tables[device]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_checked"] = {}      # weak references do not pickle (DataLoader workers under spawn): check again
        return state

    @contextmanager
    def _stage(self, name: str, device):
        if not self.profile:
            yield
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.stage_ms[name] = self.stage_ms.get(name, 0.0) + 1e3 * (time.perf_counter() - t0)

    def _check_tissue_once(self, tissue: torch.Tensor) -> None:
        """:func:`check_tissue` once per map (again after an in-place change): its min/max would otherwise be a
        host sync on every batch, which stops the host from queueing work ahead of a GPU."""
        num_labels = self.config.labels.num_labels
        if not isinstance(tissue, torch.Tensor):
            check_tissue(tissue, num_labels)    # raises the clear error
        ref = self._checked.get(_tensor_key(tissue))
        if ref is not None and ref() is tissue:
            return
        check_tissue(tissue, num_labels)
        if tissue_is_background(tissue):
            warnings.warn("`tissue` holds background only (every label 0, or no probability outside channel 0): "
                          "its samples are noise images with an empty target; pass a tissue map with a brain",
                          stacklevel=4)
        self.mark_checked(tissue)

    def mark_checked(self, tissue: torch.Tensor) -> None:
        """Take ``tissue`` as checked (until it changes in place): for a device copy of a map whose host copy
        passed :func:`check_tissue` (a training loop checks each map where it reads it, so that a new map per
        step never reads the device back)."""
        if len(self._checked) >= 64:
            self._checked.clear()
        self._checked[_tensor_key(tissue)] = weakref.ref(tissue)

    def sample_params(self, tissue_shape, seed: int = 0, index: int = 0, batch: int = 1) -> SampleParams:
        """Parameters of samples ``index .. index + batch - 1`` of stream ``seed`` for a map of spatial shape."""
        return sample_params(self.config, tuple(tissue_shape[-3:]), seed, index, batch)

    def output_affine(self, params: SampleParams, affine=None) -> torch.Tensor:
        """Voxel -> world affines ``(B, 4, 4)`` float64 of the samples made with ``params`` from a map whose voxel ->
        world affine is ``affine`` (exact for the affine part; the elastic warp is a displacement about it). See
        :func:`synthgen.ops.output_affine`."""
        C = self.config.channels          # the contrasts of a sample share its grid
        return ops.output_affine(params.matrix[::C], params.center[::C], params.flip[::C], self.config.crop, affine)

    @torch.no_grad()
    def __call__(self, tissue: torch.Tensor, seed: int = 0, index: int = 0, batch_size: int | None = None,
                 params: SampleParams | None = None, return_params: bool = False, affine=None):
        """Generate a batch.

        Args:
            tissue: ``(B, 1, D, H, W)`` integer labels (0 bg, 1 GM, 2 WM, 3 PV, 4 CSF, 5+ extra non-brain; or any
                label set that ``config.labels`` describes) or ``(B, K, D, H, W)`` float probabilities in that
                channel order. ``B == 1`` is broadcast.
            seed, index: sample ``i`` of the batch is sample ``index + i`` of stream ``seed``.
            batch_size: number of samples (default: the tissue batch).
            params: replay these parameters instead of drawing new ones.
            return_params: also return the :class:`SampleParams` used.
            affine: the map's 4x4 voxel -> world (MNI mm) affine; lesion sources place their masks by it
                (None: the lesion source's own).

        Returns:
            ``image`` ``(B, C, *crop)`` (``C = config.channels`` contrasts of one anatomy, each z-normalised) float32
            and ``target`` ``(B, *crop)`` uint8 (6 classes, 0/1
            when ``config.target == "lesion"``, or ``config.labels.targets`` and the lesion), [and ``params``];
            plain tensors (a MetaTensor's metadata is dropped: :meth:`output_affine` gives each sample's own grid).
        """
        if isinstance(tissue, torch.Tensor) and type(tissue) is not torch.Tensor:
            tissue = tissue.as_subclass(torch.Tensor)    # e.g. a MetaTensor: its metadata is the map's, not the crop's
        self._check_tissue_once(tissue)
        dev = tissue.device
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size
                                       or batch_size < 1):
            raise ValueError(f"`batch_size` must be a positive int or None (the tissue batch), got {batch_size!r}")
        cfg = self.config
        C = cfg.channels
        if params is not None and not isinstance(params, SampleParams):
            raise TypeError(f"`params` must be SampleParams, got {type(params).__name__}")
        if params is not None and len(params) % C:
            raise ValueError(f"`params` must hold {C} rows per sample (config.channels), got {len(params)}")
        n = len(params) // C if params is not None else (batch_size or tissue.shape[0])
        if tissue.shape[0] not in (1, n):
            raise ValueError(f"`tissue` batch must be 1 or {n}, got {tissue.shape[0]}")
        one_map = tissue.shape[0] == 1
        if one_map and n > 1:
            tissue = tissue.expand(n, *tissue.shape[1:])
        if params is None:
            params = self.sample_params(tissue.shape, seed, index, n)
        crop = tuple(int(c) for c in cfg.crop)

        table, lesion_class = self.label_tables(dev)
        with self._stage("lesion", dev):
            lesion = None
            if self.lesions:
                # lesion weights only where each sample's crop can reach (from the host copies of the parameters);
                # one lesion per anatomy, shared by its contrasts
                pc = params.to("cpu")
                reach = [ops.reach_box(crop, pc.matrix[r:r + 1], pc.center[r:r + 1],
                                       None if pc.elastic is None else pc.elastic[r:r + 1], tissue.shape[2:])
                         for r in range(0, n * C, C)]
                if any(box is not None for box in reach):
                    lesion = self.lesions.sample(tissue, [int(k) for k in params.lesion_key[::C]], affine=affine,
                                                 classes=cfg.labels.class_table(), region=reach)
        if C > 1:       # each contrast a row of its own through the same pipeline (one launch per pass)
            # one map for the batch stays one (a stride-0 view); per-sample maps repeat for each contrast
            tissue = tissue[:1].expand(n * C, *tissue.shape[1:]) if one_map else tissue.repeat_interleave(C, 0)
            if lesion is not None:
                lesion = (lesion[0].repeat_interleave(C, 0), lesion[1].repeat_interleave(C, 0), *lesion[2:])
        backend = select_backend(dev, available=fast.AVAILABLE)
        if backend != "torch" and not forced_backend():
            backend = fast.checked_backend(cfg, tissue, lesion, backend)      # the fast path checked once
        if backend != "torch":      # fused kernels (synthgen.fast); same parameters, same maths
            image, target = fast.generate_fast(cfg, tissue, params, lesion, backend, tables=(table, lesion_class))
        else:
            image, target = generate_ref(cfg, tissue, params, lesion, (table, lesion_class),
                                         stage=lambda name: self._stage(name, dev))
        if C > 1:       # (B * C, 1, ...) -> (B, C, ...); the contrasts share one target
            image, target = image.reshape(n, C, *image.shape[2:]), target[::C].contiguous()
        return (image, target, params) if return_params else (image, target)
