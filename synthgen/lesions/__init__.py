"""Stroke lesions for the generator: paste real masks or synthesise procedural ones, fade, Soft-CP blend.

``LesionSource`` is what :class:`synthgen.generator.SynthGenerator` calls; the modules hold one job each:
``morphology`` (dilation/erosion, Soft-CP, fading field), ``masks`` (loading and filtering real masks),
``procedural`` (masks synthesised without data), ``source`` (the per-sample composition).
"""
from .masks import (MaskBank, holdout_bucket, list_mask_files, load_mask_bank, mask_bank_from_items, masks_from_tensor,
                    store_mask_items)
from .morphology import dilate, erode, fading_coefficients, fading_field, soft_cp
from .procedural import procedural_lesion
from .source import LesionSource, dense_weights, tissue_share

__all__ = ["LesionSource", "MaskBank", "dense_weights", "dilate", "erode", "fading_coefficients", "fading_field",
           "holdout_bucket", "list_mask_files", "load_mask_bank", "mask_bank_from_items", "masks_from_tensor",
           "procedural_lesion", "soft_cp", "store_mask_items", "tissue_share"]
