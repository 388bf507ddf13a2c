"""MONAI dictionary transforms: synthetic samples from label maps, and the real-scan augmentation.

    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from synthgen.monai import RandSynthd
    train = Compose([LoadImaged("label"), EnsureChannelFirstd("label"), RandSynthd("label")])
    sample = train({"label": "sub-01_tissue.nii.gz"})   # sample["image"] (1, *crop), sample["label"] (1, *crop)

Both are ``Randomizable`` ``MapTransform`` s: each call draws one seed from the transform's ``R`` (a numpy
RandomState), and the sample is made from that seed alone, so ``set_random_state``, ``Compose.set_random_state``,
``monai.utils.set_determinism`` with ``monai.data.DataLoader`` (which seeds every worker's transforms) and plain
``torch.utils.data.DataLoader`` workers behave as for any MONAI random transform. Inputs are channel first, as
``LoadImaged`` + ``EnsureChannelFirstd`` give them (float or integer labels). Outputs are MetaTensors whose
``affine`` is the output grid's voxel -> world map, exact for the crop, rotation, shear, zoom and flips; the elastic
deformation is a displacement of a few mm about it (:func:`synthgen.ops.output_affine`). The input's other
metadata (file name, original affine and shape) is kept.

Needs MONAI: ``pip install 'synthgen[monai]'``.
"""
from __future__ import annotations

import numpy as np

from .generator import SynthGenerator
from .interop import affine_of, as_tensor, as_tissue, require, synth_one
from .ops import output_affine

require("monai.transforms", "monai")
from monai.data import MetaTensor  # noqa: E402
from monai.transforms import MapTransform, Randomizable  # noqa: E402

SEED_KEY = "synthgen_seed"      # metadata entry holding the seed a sample was made from (replay: gen(..., seed))


def _meta(src, seed: int) -> dict:
    meta = {k: v for k, v in (getattr(src, "meta", None) or {}).items() if k != "affine"}
    meta[SEED_KEY] = int(seed)
    return meta


def _draw_seed(state: np.random.RandomState) -> int:
    return int(state.randint(0, 2 ** 62, dtype=np.int64))


class RandSynthd(Randomizable, MapTransform):
    """Replace a tissue label map by a synthetic image and its segmentation target (paper section 2).

    Args:
        keys: the key of the tissue map ``(C, X, Y, Z)``: one channel of integer labels (0 bg, 1 GM, 2 WM, 3 PV,
            4 CSF, 5+ other tissue; float with integer values is fine) or 2+ channels of probabilities.
        image_key: where the synthetic image ``(1, *crop)`` float32 goes.
        target_key: where the target ``(1, *crop)`` uint8 goes (default: ``keys``, replacing the map).
        config: :class:`synthgen.GeneratorConfig` (crop, ranges, target classes); the paper's by default.
        lesions: a lesion source (:mod:`synthgen.lesions`), or None for healthy samples.
        generator: a ready :class:`synthgen.SynthGenerator` instead of ``config`` and ``lesions``.
        device: generate there (e.g. "cuda" with ``num_workers=0``); default: where the map is.
        allow_missing_keys: return the data unchanged when ``keys`` is absent.

    Raises:
        ValueError: more than one key, or ``generator`` given together with ``config`` / ``lesions``.
    """

    def __init__(self, keys="label", image_key: str = "image", target_key: str | None = None, config=None,
                 lesions=None, generator: SynthGenerator | None = None, device=None,
                 allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"`keys` must name one tissue map, got {list(self.keys)}")
        if generator is not None and (config is not None or lesions is not None):
            raise ValueError("`generator` already holds a config and lesions: pass either it or `config`/`lesions`")
        self.generator = generator or SynthGenerator(config, lesions=lesions)
        self.image_key = image_key
        self.target_key = self.keys[0] if target_key is None else target_key
        self.device = device
        self.seed = 0

    def randomize(self, data=None) -> None:
        self.seed = _draw_seed(self.R)

    def __call__(self, data):
        d = dict(data)
        key = self.keys[0]
        if key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"RandSynthd: key {key!r} is not in the data (keys: {sorted(map(str, d))})")
        self.randomize()
        src = d[key]
        tissue = as_tissue(src, str(key), self.generator.config.labels.num_labels)
        image, target, affine = synth_one(self.generator, tissue, self.seed, affine=affine_of(src),
                                          device=self.device)
        d[self.image_key] = MetaTensor(image, affine=affine, meta=_meta(src, self.seed))
        d[self.target_key] = MetaTensor(target, affine=affine.clone(), meta=_meta(src, self.seed))
        return d


class RandRealAugmentd(Randomizable, MapTransform):
    """Augment a real scan and its label map as the paper's real branch does (:class:`synthgen.real.RealAugmenter`):
    crop, affine + elastic, histogram normalisation and shift, bias field, gamma, flips, z-score.

    Args:
        keys: ``(scan key, label key)``: the scan ``(C, X, Y, Z)`` float (C contrasts on one grid) and its label map
            ``(1, X, Y, Z)`` (binary or multi-class; labels are kept) on the same grid.
        config: :class:`synthgen.GeneratorConfig` (crop and geometry, bias, gamma, flip ranges).
        histogram: :class:`synthgen.config.HistogramConfig`.
        lesions: a :class:`synthgen.lesions.LesionSource` (e.g. ``LesionSource.from_folder(masks)``) pasting stroke
            lesions into the scans first (:func:`synthgen.real.paste_lesions`, placed by the scan's affine), with
            label ``lesion_label``; None: the scans as they are.
        device: augment there; default: where the scan is.
        allow_missing_keys: return the data unchanged when a key is absent.

    Raises:
        ValueError: not two keys; at call time scan and labels whose affines differ.
    """

    def __init__(self, keys=("image", "label"), config=None, histogram=None, device=None,
                 allow_missing_keys: bool = False, lesions=None, lesion_label: int = 1):
        from .real import RealAugmenter
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise ValueError(f"`keys` must be (scan key, label key), got {list(self.keys)}")
        self.augmenter = RealAugmenter(config, histogram, lesions=lesions, lesion_label=lesion_label)
        self.device = device
        self.seed = 0

    def randomize(self, data=None) -> None:
        self.seed = _draw_seed(self.R)

    def __call__(self, data):
        d = dict(data)
        skey, lkey = self.keys
        missing = [k for k in self.keys if k not in d]
        if missing:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"RandRealAugmentd: keys {missing} are not in the data (keys: {sorted(map(str, d))})")
        self.randomize()
        scan_src, label_src = d[skey], d[lkey]
        scan, labels = as_tensor(scan_src, str(skey)), as_tensor(label_src, str(lkey))
        for name, t in ((skey, scan), (lkey, labels)):
            if t.ndim != 4:
                raise ValueError(f"`{name}` must be channel-first (C, X, Y, Z), got shape {tuple(t.shape)}")
        affine = affine_of(scan_src)
        if hasattr(label_src, "affine") and not np.allclose(affine_of(label_src), affine, atol=1e-4):
            raise ValueError(f"`{skey}` and `{lkey}` must lie on one grid, got affines\n{affine}\nand\n"
                             f"{affine_of(label_src)}")
        if self.device is not None:
            scan, labels = scan.to(self.device), labels.to(self.device)
        if not scan.is_floating_point():
            scan = scan.float()
        image, target, params = self.augmenter(scan[None], labels[None], seed=self.seed, index=0,
                                               return_params=True, affine=affine)
        g = params.geometry
        out = output_affine(g.matrix, g.center, g.flip, self.augmenter.config.crop, affine)[0]
        d[skey] = MetaTensor(image[0], affine=out, meta=_meta(scan_src, self.seed))
        d[lkey] = MetaTensor(target, affine=out.clone(), meta=_meta(label_src, self.seed))
        return d


__all__ = ["RandSynthd", "RandRealAugmentd", "SEED_KEY"]
