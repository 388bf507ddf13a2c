"""LesionSource: per-sample lesion weights for the generator, from real masks or procedural synthesis."""
from __future__ import annotations

import numpy as np
import torch

from ..config import LabelConfig, LesionConfig
from ..device import to_device
from .masks import MaskBank, list_mask_files, load_mask_bank, mask_bank_from_items, masks_from_tensor, store_mask_items
from .morphology import fading_coefficients, fading_config, soft_cp_config
from .procedural import VoxelReader, components_box, lesion_components, paste

try:
    from ..sampling import generator_for
except ImportError:      # pragma: no cover - sampling.py is written alongside
    def generator_for(key: int, device="cpu") -> torch.Generator:
        return torch.Generator(device=torch.device(device)).manual_seed(int(key))

PARENCHYMA = (1, 2, 3)      # GM, WM, GM/WM partial volume
BRAIN = (1, 2, 3, 4)        # parenchyma and CSF


def _selector(tissue: torch.Tensor, channels: int, classes, class_of_label) -> torch.Tensor:
    """On ``tissue``'s device: for probabilities, the indices of the ``channels`` whose label's tissue class is one
    of ``classes``; for integer labels, a 256-entry bool table of those labels."""
    if class_of_label is None:
        class_of_label = LabelConfig().class_table()
    classes = {int(c) for c in classes}
    wanted = [int(c) in classes for c in class_of_label]
    if tissue.is_floating_point():
        return to_device(torch.tensor([k for k in range(min(channels, len(wanted))) if wanted[k]]), tissue.device)
    return to_device(torch.tensor(wanted + [False] * (256 - len(wanted))), tissue.device)


def tissue_share(tissue: torch.Tensor, classes, class_of_label=None) -> torch.Tensor:
    """Probability ``(B, 1, D, H, W)`` (float32) that a voxel belongs to one of the tissue ``classes``.

    Args:
        tissue: integer labels ``(B, 1, D, H, W)`` or float probabilities ``(B, K, D, H, W)`` (channel ``k`` is
            label ``k``).
        class_of_label: the tissue class of each label, a sequence of ints
            (:meth:`synthgen.config.LabelConfig.class_table`); None: our convention (labels 0-4 are their own
            class, 5+ non-brain).
    """
    sel = _selector(tissue, tissue.shape[1], classes, class_of_label)
    if tissue.is_floating_point():
        return tissue.index_select(1, sel).sum(1, keepdim=True).clamp(0, 1).to(torch.float32)
    return sel[tissue.long()].to(torch.float32)


def tissue_reader(tissue: torch.Tensor, classes, class_of_label=None) -> VoxelReader:
    """Where ``tissue_share(tissue[None], classes) > 0.5`` for one map ``(C, D, H, W)``, read only at the voxels
    asked for (:class:`synthgen.lesions.procedural.VoxelReader`)."""
    sel = _selector(tissue, tissue.shape[0], classes, class_of_label)
    if tissue.is_floating_point():
        flat = tissue.reshape(tissue.shape[0], -1)          # a view: only the voxels asked for are read
        return VoxelReader(lambda at: flat[:, at].index_select(0, sel).sum(0).clamp(0, 1).to(torch.float32) > 0.5,
                           tissue.shape[1:])
    flat = tissue[0].reshape(-1)
    return VoxelReader(lambda at: sel[flat[at].long()], tissue.shape[1:])


class LesionSource:
    """Lesions for :class:`synthgen.generator.SynthGenerator`: paste, fade and Soft-CP blend a binary mask.

    The mask of sample ``i`` comes from a bank of real masks (``from_folder``, ``from_store``, ``from_bank``,
    ``from_tensor``) or from procedural synthesis (``procedural``), chosen by ``keys[i]`` alone. A bank holds its
    masks in world (MNI) space; each sample places its mask onto the tissue map it is pasted into by that map's
    affine, so one bank serves every map. Chalcroft et al., section 2; Soft-CP: arXiv:2203.10507.

    Args:
        config: lesion parameters (default ``LesionConfig()``).
        bank: a :class:`MaskBank`; None means procedural lesions.
        affine: 4x4 voxel -> world (MNI mm) of the tissue grid when a call gives none: procedural lesions place
            the midline and the territories by it (None: 1 mm RAS centred on world 0), banks their masks.
    """

    def __init__(self, config: LesionConfig | None = None, bank: MaskBank | None = None, affine=None):
        self.config = (config or LesionConfig()).validate()
        self.bank = bank
        self.affine = None if affine is None else np.asarray(affine, float)

    # ---- constructors -------------------------------------------------------------------------------------
    @classmethod
    def from_bank(cls, bank: MaskBank, split=None, config: LesionConfig | None = None,
                  affine=None) -> "LesionSource":
        """The masks of ``split`` ("train", "holdout" or None) of a bank read once (shared, not copied).

        Raises:
            ValueError: no mask of the bank falls in ``split``.
        """
        config = (config or LesionConfig()).validate()
        part = bank.split(split, config.holdout_fraction)
        if len(part) == 0:
            raise ValueError(f"no lesion mask in the {split!r} split of {len(bank)} masks (hold-out fraction "
                             f"{config.holdout_fraction}, by file name)")
        return cls(config, part, affine)

    @classmethod
    def from_folder(cls, path, split=None, *, threshold: float | None = None, max_volume_ml: float | None = None,
                    pattern: str | None = None, brain_mask=None, max_outside_fraction: float | None = None,
                    holdout_fraction: float | None = None, config: LesionConfig | None = None, affine=None,
                    progress: bool = True) -> "LesionSource":
        """Masks from a folder (files matching ``pattern``) or a list of NIfTI files, read once.

        Arguments left as None take their value from ``config`` (threshold, max volume, outside-brain share,
        hold-out fraction, pattern). See :func:`synthgen.lesions.masks.load_mask_bank`; ``brain_mask``
        ``(mask, affine)`` enables the outside-brain filter.
        """
        config = (config or LesionConfig()).validate()
        pick = lambda value, default: default if value is None else value  # noqa: E731
        files = list_mask_files(path, pick(pattern, config.mask_pattern))
        bank = load_mask_bank(files, pick(threshold, config.mask_threshold), split,
                              pick(holdout_fraction, config.holdout_fraction),
                              pick(max_volume_ml, config.max_volume_ml), brain_mask,
                              pick(max_outside_fraction, config.max_outside_fraction), progress)
        return cls(config, bank, affine)

    @classmethod
    def from_store(cls, store, split=None, *, max_volume_ml: float | None = None, pattern: str | None = None,
                   brain_mask=None, max_outside_fraction: float | None = None,
                   holdout_fraction: float | None = None, config: LesionConfig | None = None, affine=None,
                   progress: bool = True) -> "LesionSource":
        """Masks from the ``lesions`` section of a packed store (``python -m synthgen.data pack``).

        The same bank as :meth:`from_folder` on the packed files: masks are split by their source file name
        and filtered alike (they were binarised when packed, ``pack --mask-threshold``); ``pattern`` (default
        ``config.mask_pattern``) selects by source file name.

        Args:
            store: a :class:`synthgen.data.store.PackedStore` or its folder.
            Others: as for :meth:`from_folder`.

        Raises:
            FileNotFoundError: ``store`` is not a packed store.
            ValueError: no lesion mask in the store matches ``pattern``; others as for :meth:`from_folder`.
        """
        config = (config or LesionConfig()).validate()
        pick = lambda value, default: default if value is None else value  # noqa: E731
        pattern = pick(pattern, config.mask_pattern)
        items = store_mask_items(store, pattern)
        if not items:
            root = store.root if hasattr(store, "lesions") else store
            raise ValueError(f"{root}: no lesion mask in the store packed from a file matching {pattern!r}")
        bank = mask_bank_from_items(items, config.mask_threshold, split,
                                    pick(holdout_fraction, config.holdout_fraction),
                                    pick(max_volume_ml, config.max_volume_ml), brain_mask,
                                    pick(max_outside_fraction, config.max_outside_fraction), progress)
        return cls(config, bank, affine)

    @classmethod
    def from_tensor(cls, masks: torch.Tensor, masks_affine=None, threshold: float | None = None,
                    config: LesionConfig | None = None) -> "LesionSource":
        """Masks from an ``(N, [1,] D, H, W)`` tensor (see :func:`synthgen.lesions.masks.masks_from_tensor`):
        on the tissue grid itself without ``masks_affine``, else placed by the two affines."""
        config = (config or LesionConfig()).validate()
        bank = masks_from_tensor(masks, masks_affine, config.mask_threshold if threshold is None else threshold)
        return cls(config, bank)

    @classmethod
    def procedural(cls, affine=None, config: LesionConfig | None = None) -> "LesionSource":
        """Procedural stroke lesions (no data set); ``affine`` places the midline and territories when a call
        gives none."""
        return cls(config, None, affine)

    # ---- sampling -----------------------------------------------------------------------------------------
    def _check(self, tissue, keys):
        if not torch.is_tensor(tissue) or tissue.ndim != 5:
            raise ValueError(f"`tissue` must be a (B, C, D, H, W) tensor, got "
                             f"{tuple(tissue.shape) if torch.is_tensor(tissue) else type(tissue).__name__}")
        if len(keys) != tissue.shape[0]:
            raise ValueError(f"`keys` must hold one key per sample ({tissue.shape[0]}), got {len(keys)}")

    def _grid_affine(self, affine):
        affine = self.affine if affine is None else np.asarray(affine, np.float64)
        if affine is None and self.bank is not None and self.bank.space == "world":
            raise ValueError("lesion masks are placed by the tissue map's affine: pass `affine` (the map's voxel -> "
                             "MNI affine) to the generator call or to the LesionSource")
        return affine            # a "voxel" bank ignores it (MaskBank.grid_affine); procedural lesions use it

    def _plan(self, tissue, keys, affine, classes, regions=None):
        """Per sample: its generator, and its lesion as ``("bank", mask indices, grid box)``, ``("procedural",
        components, grid box)``, or None (lesion-free). The random draws of a key come in one fixed order, whatever
        the batch. A procedural lesion's box is that of its voxels on a CPU; elsewhere, not to read the device
        back, the sample's own region (``regions[i]``) or the map."""
        cfg = self.config
        shape = tuple(tissue.shape[2:])
        plans, gens = [], []
        for i, key in enumerate(keys):
            g = generator_for(int(key), "cpu")
            gens.append(g)
            healthy = float(torch.rand(1, generator=g, dtype=torch.float64)) < cfg.healthy_probability
            sub_key = int(torch.randint(0, 2 ** 62, (1,), generator=g))
            if healthy:
                plans.append(None)
                continue
            n = int(torch.randint(cfg.count[0], cfg.count[1] + 1, (1,), generator=g))
            if self.bank is not None:
                js = torch.randint(0, len(self.bank), (n,), generator=g).tolist()
                box = None
                for j in js:        # from the two affines alone: no device work, no host sync
                    box = _union(box, self.bank.placement(j, shape, affine))
                plans.append(("bank", js, box) if box is not None else None)
                continue
            allowed = tissue_reader(tissue[i], PARENCHYMA, classes)
            comps = []
            for j in range(n):
                comps += lesion_components(allowed, sub_key + j, cfg.procedural, affine, tissue.device)
            if tissue.device.type == "cpu":     # reading back is free: the box of its voxels
                box = components_box(comps, shape)
            else:                                # its crop's reach: the lesion is not seen beyond it
                box = regions[i] if regions is not None and regions[i] is not None else ((0, 0, 0), shape)
            plans.append(("procedural", comps, box) if box is not None else None)
        return plans, gens

    def sample_masks(self, tissue: torch.Tensor, keys: list[int], affine=None, classes=None):
        """Binary lesion masks ``(B, 1, D, H, W)`` bool on the whole map before Soft-CP (the dense form of what
        :meth:`sample` places), and each sample's generator."""
        self._check(tissue, keys)
        affine = self._grid_affine(affine)
        plans, gens = self._plan(tissue, keys, affine, classes)
        masks = torch.zeros((tissue.shape[0], 1, *tissue.shape[2:]), dtype=torch.bool, device=tissue.device)
        for i, plan in enumerate(plans):
            if plan is not None and plan[0] == "bank":
                for j in plan[1]:
                    self.bank.paste(j, masks[i, 0], affine)
            elif plan is not None:
                paste(plan[1], masks[i, 0])
        return masks, gens

    def sample(self, tissue: torch.Tensor, keys: list[int], affine=None, classes=None, region=None):
        """Lesion weights of a batch, made only inside each lesion's box and the part of the map the crops see.

        Args:
            tissue: ``(B, 1, D, H, W)`` integer labels or ``(B, K, D, H, W)`` float probabilities, on its device.
            keys: ``B`` 64-bit integers; ``keys[i]`` alone determines sample ``i``'s lesion.
            affine: the tissue map's 4x4 voxel -> world (MNI mm) affine (None: the source's own).
            classes: the tissue class of each label (:meth:`synthgen.config.LabelConfig.class_table`; None: our
                convention): where lesions may grow and what they are clipped to.
            region: ``(lo, hi)``, the voxel box of the map that the batch's crops can reach
                (:func:`synthgen.ops.reach_box`), or one such box (or None: unseen) per sample; None: the whole
                map. Outside it no weight is made.

        Returns:
            ``(intensity_weight, label_weight, offset)``: each weight ``(B, 1, x, y, z)`` float32 in [0, 1] on
            ``tissue``'s device over the map box that starts at voxel ``offset`` (the union of the samples'
            Soft-CP boxes within ``region``; zero weight elsewhere). ``label_weight`` is the mask (or with
            ``config.target == "softcp"`` its Soft-CP weight) clipped to ``config.clip_to`` tissue (lesion where
            > 0.5: by default the mask inside the brain); ``intensity_weight`` is the Soft-CP weight (1 on the
            mask, ``alpha^j`` on the j-th ring outside it by default), clipped alike, times the fading field.
            None when no sample of the batch has a lesion there.

        Raises:
            ValueError: ``tissue`` not 5D, ``len(keys) != B``, or masks in world space without an affine.
        """
        self._check(tissue, keys)
        affine = self._grid_affine(affine)
        shape = tuple(tissue.shape[2:])
        region = _per_sample(region, len(keys), shape)
        plans, gens = self._plan(tissue, keys, affine, classes, region)
        cfg = self.config
        pad = cfg.softcp.dilate + 1              # Soft-CP rings reach `dilate` voxels beyond the mask
        reach = cfg.softcp.erode + cfg.softcp.dilate + 1   # mask a Soft-CP weight depends on
        boxes, lesion_boxes = [], []
        for plan, reg in zip(plans, region):
            box = whole = None
            if plan is not None and reg is not None:
                # the lesion's Soft-CP box on the grid, and its part within the region
                whole = (tuple(max(a - pad, 0) for a in plan[2][0]),
                         tuple(min(b + pad, n) for b, n in zip(plan[2][1], shape)))
                lo = [max(a, r) for a, r in zip(whole[0], reg[0])]
                hi = [min(b, r) for b, r in zip(whole[1], reg[1])]
                box = (tuple(lo), tuple(hi)) if all(b > a for a, b in zip(lo, hi)) else None
            boxes.append(box)
            lesion_boxes.append(whole)
        out = None
        for box in boxes:
            out = _union(out, box)
        # drawn for every sample, lesioned or not, so each key's stream keeps one order
        coeffs = [fading_coefficients(g, shape, cfg.fading.control_spacing) for g in gens]
        faded = [float(torch.rand(1, generator=g, dtype=torch.float64)) < cfg.fading.probability for g in gens]
        if out is None:
            return None
        size = [b - a for a, b in zip(*out)]
        label = torch.zeros((tissue.shape[0], 1, *size), dtype=torch.float32, device=tissue.device)
        intensity = torch.zeros_like(label)
        wanted = PARENCHYMA if cfg.clip_to == "parenchyma" else BRAIN
        for i, (plan, box) in enumerate(zip(plans, boxes)):
            if box is None:
                continue
            # the mask on the box grown by what its Soft-CP weights depend on, then the weights on the box
            c_lo = [max(a - reach, 0) for a in box[0]]
            c_hi = [min(b + reach, n) for b, n in zip(box[1], shape)]
            if plan[0] == "bank":
                canvas = torch.zeros([b - a for a, b in zip(c_lo, c_hi)], dtype=torch.bool, device=tissue.device)
                for j in plan[1]:
                    self.bank.paste(j, canvas, affine, origin=c_lo)
            else:
                canvas = paste(plan[1], torch.zeros([b - a for a, b in zip(c_lo, c_hi)], dtype=torch.bool,
                                                    device=tissue.device), c_lo)
            inner = (0, slice(None), *(slice(a - c, b - c) for a, b, c in zip(*box, c_lo)))
            w = soft_cp_config(canvas[None, None], cfg.softcp)[inner][None]
            lab = canvas[None, None][inner][None].to(torch.float32) if cfg.target == "mask" else w
            grid_box = (slice(i, i + 1), slice(None), *(slice(a, b) for a, b in zip(*box)))
            if cfg.clip_to != "none":
                share = tissue_share(tissue[grid_box], wanted, classes)
                w, lab = w * share, lab * share
            into = (i, slice(None), *(slice(a - o, b - o) for a, b, o in zip(*box, out[0])))
            label[into] = lab[0]
            fade = 1.0
            if faded[i]:          # on the lesion's own box, whatever the batch: a sample's bytes are its own
                whole = lesion_boxes[i]
                fade = fading_config(to_device(coeffs[i], tissue.device), shape, cfg.fading, tuple(zip(*whole)))
                fade = fade[(slice(None), slice(None), *(slice(a - o, b - o) for a, b, o in zip(*box, whole[0])))]
            intensity[into] = (w * fade)[0]
        return intensity, label, out[0]

    def sample_dense(self, tissue: torch.Tensor, keys: list[int], affine=None, classes=None, region=None):
        """:meth:`sample` on the whole map grid: ``(intensity_weight, label_weight)``, each ``(B, 1, D, H, W)``."""
        return dense_weights(self.sample(tissue, keys, affine, classes, region), tissue)


def dense_weights(weights, tissue: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`LesionSource.sample`'s boxed weights (or None) as ``(intensity, label)`` on the whole map grid of
    ``tissue`` (zeros outside the box): the form to look at or to compare with."""
    full = [torch.zeros((tissue.shape[0], 1, *tissue.shape[2:]), dtype=torch.float32, device=tissue.device)
            for _ in range(2)]
    if weights is not None:
        lo = weights[2] if len(weights) > 2 else (0, 0, 0)
        box = (slice(None), slice(None), *(slice(a, a + n) for a, n in zip(lo, weights[0].shape[2:])))
        full[0][box], full[1][box] = weights[0], weights[1]
    return full[0], full[1]


def _per_sample(region, n: int, shape) -> list:
    """``region`` as one ``(lo, hi)`` box (or None: not seen) per sample: the whole map for None, the same box for
    each sample when one is given."""
    if region is None:
        return [((0, 0, 0), tuple(shape))] * n
    if len(region) == 2 and region[0] is not None and len(region[0]) == 3 and \
            all(isinstance(v, (int, np.integer)) for v in region[0]):
        return [region] * n
    if len(region) != n:
        raise ValueError(f"`region` must be one (lo, hi) box or one per sample ({n}), got {len(region)} entries")
    return list(region)


def _union(a, b):
    """The voxel box covering boxes ``a`` and ``b`` (each ``(lo, hi)`` or None)."""
    if a is None or b is None:
        return a if b is None else b
    return (tuple(min(x, y) for x, y in zip(a[0], b[0])), tuple(max(x, y) for x, y in zip(a[1], b[1])))
