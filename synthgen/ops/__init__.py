"""Synthesis operations, one module per family. Each public function is the plain-torch reference (any device);
the generator's fused fast path is :mod:`synthgen.fast`, chosen by :mod:`synthgen.backend`."""
from .blur import gaussian_blur, gaussian_kernel1d, thick_slices
from .intensity import (LANDMARK_PERCENTILES, add_noise, bias_field, gamma_transform, gmm_sample,
                        histogram_normalise, interp, percentile_clip, quantiles,
                        skull_strip, texture_from_normals, texture_noise, z_normalise)
from .warp import affine_elastic_coords, flip, grid_pull, output_affine, reach_box, seeing_box

__all__ = ["gaussian_blur", "gaussian_kernel1d", "thick_slices", "add_noise", "bias_field", "gamma_transform",
           "histogram_normalise", "interp", "LANDMARK_PERCENTILES",
           "gmm_sample", "percentile_clip", "quantiles", "skull_strip", "texture_from_normals", "texture_noise", "z_normalise",
           "affine_elastic_coords", "flip", "grid_pull", "output_affine", "reach_box", "seeing_box"]
