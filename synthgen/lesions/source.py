"""LesionSource: per-sample lesion weights for the generator, from real masks or procedural synthesis."""
from __future__ import annotations

import numpy as np
import torch

from ..config import LesionConfig
from .masks import MaskBank, list_mask_files, load_mask_bank, mask_bank_from_arrays, masks_from_tensor, store_mask_items
from .morphology import fading_coefficients, fading_config, soft_cp_config
from .procedural import procedural_lesion

try:
    from ..sampling import generator_for
except ImportError:      # pragma: no cover - sampling.py is written alongside
    def generator_for(key: int, device="cpu") -> torch.Generator:
        return torch.Generator(device=torch.device(device)).manual_seed(int(key))

PARENCHYMA = (1, 2, 3)      # GM, WM, GM/WM partial volume
BRAIN = (1, 2, 3, 4)        # parenchyma and CSF


def tissue_share(tissue: torch.Tensor, classes) -> torch.Tensor:
    """Probability ``(B, 1, D, H, W)`` (float32) that a voxel belongs to one of ``classes``.

    Args:
        tissue: integer labels ``(B, 1, D, H, W)`` or float probabilities ``(B, K, D, H, W)`` with channels
            [background, GM, WM, PV, CSF, extra...].
    """
    if tissue.is_floating_point():
        return tissue[:, list(classes)].sum(1, keepdim=True).clamp(0, 1).to(torch.float32)
    out = torch.zeros(tissue.shape, dtype=torch.bool, device=tissue.device)
    for c in classes:
        out |= tissue == c
    return out.to(torch.float32)


class LesionSource:
    """Lesions for :class:`synthgen.generator.SynthGenerator`: paste, fade and Soft-CP blend a binary mask.

    The mask of sample ``i`` comes from a bank of real masks (``from_folder``, ``from_store``, ``from_tensor``)
    or from procedural synthesis (``procedural``), chosen by ``keys[i]`` alone. Chalcroft et al., section 2;
    Soft-CP: arXiv:2203.10507.

    Args:
        config: lesion parameters (default ``LesionConfig()``).
        bank: a :class:`MaskBank`; None means procedural lesions.
        affine: 4x4 voxel -> world (MNI mm) of the tissue grid, used by procedural lesions for the midline and
            the territories (None: 1 mm RAS centred on world 0). A bank carries its own.
    """

    def __init__(self, config: LesionConfig | None = None, bank: MaskBank | None = None, affine=None):
        self.config = (config or LesionConfig()).validate()
        self.bank = bank
        self.affine = bank.affine if bank is not None else (None if affine is None else np.asarray(affine, float))

    # ---- constructors -------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path, like_shape, like_affine, threshold: float | None = None, split=None,
                    max_volume_ml: float | None = None, *, pattern: str | None = None, brain_mask=None,
                    max_outside_fraction: float | None = None, holdout_fraction: float | None = None,
                    config: LesionConfig | None = None, device="cpu", progress: bool = True) -> "LesionSource":
        """Masks from a folder (files matching ``pattern``) or a list of NIfTI files, resampled onto a grid.

        Arguments left as None take their value from ``config`` (threshold, max volume, outside-brain share,
        hold-out fraction, pattern). See :func:`synthgen.lesions.masks.load_mask_bank`; ``brain_mask``
        ``(D, H, W)`` bool on the target grid enables the outside-brain filter.
        """
        config = (config or LesionConfig()).validate()
        pick = lambda value, default: default if value is None else value  # noqa: E731
        files = list_mask_files(path, pick(pattern, config.mask_pattern))
        bank = load_mask_bank(files, like_shape, like_affine, pick(threshold, config.mask_threshold), split,
                              pick(holdout_fraction, config.holdout_fraction),
                              pick(max_volume_ml, config.max_volume_ml), brain_mask,
                              pick(max_outside_fraction, config.max_outside_fraction), device, progress)
        return cls(config, bank)

    @classmethod
    def from_store(cls, store, like_shape, like_affine, threshold: float | None = None, split=None,
                   max_volume_ml: float | None = None, *, pattern: str | None = None, brain_mask=None,
                   max_outside_fraction: float | None = None, holdout_fraction: float | None = None,
                   config: LesionConfig | None = None, device="cpu", progress: bool = True) -> "LesionSource":
        """Masks from the ``lesions`` section of a packed store (``python -m synthgen.data pack``).

        The same bank as :meth:`from_folder` on the packed files: masks are split by their source file name
        and filtered alike. Masks were binarised when packed (``pack --mask-threshold``), so ``threshold``
        only matters for none; ``pattern`` (default ``config.mask_pattern``) selects by source file name.

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
        bank = mask_bank_from_arrays(items, like_shape, like_affine, pick(threshold, config.mask_threshold),
                                     split, pick(holdout_fraction, config.holdout_fraction),
                                     pick(max_volume_ml, config.max_volume_ml), brain_mask,
                                     pick(max_outside_fraction, config.max_outside_fraction), device, progress)
        return cls(config, bank)

    @classmethod
    def from_tensor(cls, masks: torch.Tensor, like_shape=None, like_affine=None, masks_affine=None,
                    threshold: float | None = None, config: LesionConfig | None = None) -> "LesionSource":
        """Masks from an ``(N, [1,] D, H, W)`` tensor (see :func:`synthgen.lesions.masks.masks_from_tensor`)."""
        config = (config or LesionConfig()).validate()
        bank = masks_from_tensor(masks, like_shape, like_affine, masks_affine,
                                 config.mask_threshold if threshold is None else threshold)
        return cls(config, bank)

    @classmethod
    def procedural(cls, affine=None, config: LesionConfig | None = None) -> "LesionSource":
        """Procedural stroke lesions (no data set); ``affine`` places the midline and territories."""
        return cls(config, None, affine)

    # ---- sampling -----------------------------------------------------------------------------------------
    def _check(self, tissue, keys):
        if not torch.is_tensor(tissue) or tissue.ndim != 5:
            raise ValueError(f"`tissue` must be a (B, C, D, H, W) tensor, got "
                             f"{tuple(tissue.shape) if torch.is_tensor(tissue) else type(tissue).__name__}")
        if len(keys) != tissue.shape[0]:
            raise ValueError(f"`keys` must hold one key per sample ({tissue.shape[0]}), got {len(keys)}")
        if self.bank is not None and tuple(tissue.shape[2:]) != tuple(self.bank.shape):
            raise ValueError(f"`tissue` must be on the grid the lesion masks were resampled to, spatial shape "
                             f"{tuple(self.bank.shape)}, got {tuple(tissue.shape[2:])}")

    def sample_masks(self, tissue: torch.Tensor, keys: list[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
        """Binary lesion masks ``(B, 1, D, H, W)`` bool before Soft-CP, and each sample's generator."""
        self._check(tissue, keys)
        cfg = self.config
        shape = tuple(tissue.shape[2:])
        masks = torch.zeros((tissue.shape[0], 1, *shape), dtype=torch.bool, device=tissue.device)
        gens = []
        parenchyma = None
        for i, key in enumerate(keys):
            g = generator_for(int(key), "cpu")
            gens.append(g)
            healthy = float(torch.rand(1, generator=g, dtype=torch.float64)) < cfg.healthy_probability
            sub_key = int(torch.randint(0, 2 ** 62, (1,), generator=g))
            if healthy:
                continue
            if self.bank is not None:
                n = int(torch.randint(cfg.count[0], cfg.count[1] + 1, (1,), generator=g))
                for j in torch.randint(0, len(self.bank), (n,), generator=g).tolist():
                    self.bank.paste(j, masks[i, 0])
            else:
                if parenchyma is None:
                    parenchyma = tissue_share(tissue, PARENCHYMA) > 0.5
                for j in range(int(torch.randint(cfg.count[0], cfg.count[1] + 1, (1,), generator=g))):
                    masks[i, 0] |= procedural_lesion(parenchyma[i, 0], sub_key + j, cfg.procedural, self.affine)
        return masks, gens

    def sample(self, tissue: torch.Tensor, keys: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Lesion weights of a batch.

        Args:
            tissue: ``(B, 1, D, H, W)`` integer labels or ``(B, K, D, H, W)`` float probabilities (channels
                background, GM, WM, PV, CSF, extra...), on its device.
            keys: ``B`` 64-bit integers; ``keys[i]`` alone determines sample ``i``'s lesion.

        Returns:
            ``(intensity_weight, label_weight)``, each ``(B, 1, D, H, W)`` float32 in [0, 1] on ``tissue``'s
            device: ``label_weight`` is the Soft-CP weight clipped to ``config.clip_to`` tissue (lesion where
            > 0.5), ``intensity_weight = label_weight * fading``. Lesion-free samples are zeros.

        Raises:
            ValueError: ``tissue`` not 5D, ``len(keys) != B``, or a tissue grid other than the mask bank's.
        """
        masks, gens = self.sample_masks(tissue, keys)
        cfg = self.config
        shape = tuple(tissue.shape[2:])
        label = torch.zeros(masks.shape, dtype=torch.float32, device=tissue.device)
        intensity = torch.zeros_like(label)
        classes = PARENCHYMA if cfg.clip_to == "parenchyma" else BRAIN
        for i, g in enumerate(gens):
            # drawn for every sample, lesioned or not, so each key's stream keeps one order
            coeffs = fading_coefficients(g, shape, cfg.fading.control_spacing).to(tissue.device)
            faded = float(torch.rand(1, generator=g, dtype=torch.float64)) < cfg.fading.probability
            # Soft-CP rings reach cfg.softcp.dilate voxels beyond the mask: work inside that box only
            region = _bounding_box(masks[i, 0], cfg.softcp.dilate + 1)
            if region is None:
                continue
            box = (i, slice(None), *(slice(lo, hi) for lo, hi in region))
            w = soft_cp_config(masks[box][None], cfg.softcp)
            if cfg.clip_to != "none":
                w = w * tissue_share(tissue[box][None], classes)
            label[box] = w[0]
            fade = fading_config(coeffs, shape, cfg.fading, region) if faded else 1.0
            intensity[box] = (w * fade)[0]
        return intensity, label


def _bounding_box(mask: torch.Tensor, pad: int):
    """``((lo, hi),) * 3`` around the true voxels of a 3D mask, grown by ``pad`` and clipped; None if empty."""
    if not bool(mask.any()):
        return None
    box = []
    for dim in range(3):
        others = [d for d in range(3) if d != dim]
        idx = torch.nonzero(mask.any(dim=others[1]).any(dim=others[0])).flatten()
        box.append((max(int(idx[0]) - pad, 0), min(int(idx[-1]) + 1 + pad, mask.shape[dim])))
    return tuple(box)
