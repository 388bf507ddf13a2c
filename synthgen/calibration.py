"""Figures measured on real stroke lesions that calibrate the procedural lesion defaults (``ProceduralLesionConfig``).

Measured by ``scripts/calibrate_lesions.py`` over all 1449 acute ischaemic stroke masks of the Stroke Outcome
Optimization Project (SOOP: Absher et al. 2024, Sci Data 11:839; OpenNeuro ds004889, CC0), 1 mm MNI, components
with 26-connectivity; arterial territories from the JHU arterial atlas (Liu et al. 2023, CC BY-SA 4.0; only
statistics are kept here, no atlas voxels) on the same grid, grouped as the script's ``TERRITORY_LABELS``:
ACA, MCA, PCA, deep (lenticulostriate, choroidal, thalamoperforators) and vertebrobasilar (VB).
"""

TERRITORY_NAMES = ("aca", "mca", "pca", "deep", "vb")

# total lesion volume (mL) at quantiles 0, 5, ..., 100 %
VOLUME_QUANTILES_ML = (0.004, 0.299, 0.551, 0.949, 1.36, 2.01, 2.99, 4.20, 5.81, 8.67, 12.7,
    17.4, 23.8, 30.9, 39.9, 51.9, 68.8, 93.1, 122.7, 196.9, 860.2)

# P(1), ..., P(9), P(>= 10) connected components
COMPONENT_COUNT_PMF = (0.318, 0.191, 0.109, 0.084, 0.046, 0.052, 0.033, 0.031, 0.030, 0.106)

# share of the volume in the largest component of a multifocal lesion, deciles 0..100 % (satellites are small:
# median 0.6 % of the volume)
LARGEST_COMPONENT_SHARE_QUANTILES = (0.147, 0.46, 0.56, 0.65, 0.77, 0.855, 0.915, 0.958, 0.985,
    0.996, 0.999)

# share of a bilateral lesion's volume on its smaller side, deciles 0..100 % (315 lesions with >= 5 %)
BILATERAL_MINORITY_SHARE_QUANTILES = (0.05, 0.072, 0.101, 0.130, 0.164, 0.198, 0.256, 0.326, 0.379,
    0.440, 0.499)

# territory holding most of the lesion (0.5 % outside the atlas or in a ventricle left out)
TERRITORY_PROBABILITIES = (0.067, 0.530, 0.082, 0.186, 0.135)

# per territory, the lesion volume's percentile among all lesions (0..1) at quantiles 0, 5, ..., 100 %: medians
# ACA 4.5, MCA 30.5, PCA 30.6, deep 2.3, VB 5.1 mL (n = 96, 765, 118, 268, 195)
TERRITORY_VOLUME_RANKS = (
    (0.003, 0.025, 0.042, 0.068, 0.108, 0.127, 0.166, 0.221, 0.262, 0.29, 0.358, 0.427, 0.477, 0.5, 0.553,
     0.591, 0.72, 0.749, 0.819, 0.86, 0.944),
    (0.002, 0.071, 0.154, 0.246, 0.324, 0.392, 0.453, 0.504, 0.556, 0.601, 0.646, 0.694, 0.731, 0.774, 0.806,
     0.846, 0.883, 0.915, 0.944, 0.974, 1.0),
    (0.024, 0.294, 0.37, 0.408, 0.46, 0.505, 0.544, 0.554, 0.601, 0.628, 0.648, 0.675, 0.694, 0.732, 0.755,
     0.777, 0.817, 0.852, 0.874, 0.905, 0.953),
    (0.004, 0.032, 0.067, 0.106, 0.136, 0.157, 0.178, 0.199, 0.224, 0.249, 0.267, 0.287, 0.312, 0.334, 0.352,
     0.374, 0.398, 0.443, 0.497, 0.578, 0.749),
    (0.0, 0.038, 0.082, 0.108, 0.134, 0.163, 0.187, 0.217, 0.259, 0.309, 0.374, 0.426, 0.463, 0.522, 0.557,
     0.617, 0.663, 0.687, 0.743, 0.82, 0.971))

# per territory, where its lesions lie: a 3-component Gaussian mixture (EM, full covariance) of the centroids of
# the largest components of the masks it dominates, mirrored to the right hemisphere (x >= 0); each component
# (weight, (x, y, z) mean mm MNI, (x, y, z) std mm, (r_xy, r_xz, r_yz) correlations)
TERRITORY_COMPONENTS = (
    (   # aca: 96 masks
    (0.597, (11.2, 10.8, 41.7), (4.7, 21.6, 18.0), (-0.03, 0.19, -0.83)),
    (0.247, (25.1, -17.5, 44.5), (4.0, 20.1, 20.1), (-0.7, -0.78, 0.62)),
    (0.156, (12.1, -49.2, 46.3), (6.4, 11.9, 21.3), (-0.35, 0.39, -0.79)),
    ),
    (   # mca: 765 masks
    (0.449, (41.4, -5.4, 13.7), (8.9, 17.5, 13.9), (-0.55, -0.08, -0.04)),
    (0.357, (37.0, -5.1, 34.7), (8.1, 17.7, 14.8), (0.38, -0.32, -0.55)),
    (0.194, (41.5, -53.8, 26.3), (9.4, 16.8, 15.1), (0.65, 0.12, 0.34)),
    ),
    (   # pca: 118 masks
    (0.474, (22.9, -58.0, -2.0), (6.3, 11.2, 8.7), (0.68, -0.72, -0.62)),
    (0.461, (17.6, -82.0, 7.0), (9.1, 8.0, 10.8), (0.01, -0.19, 0.29)),
    (0.065, (12.8, -54.4, 19.5), (8.1, 11.5, 16.8), (-0.57, 0.54, -0.89)),
    ),
    (   # deep: 268 masks
    (0.615, (24.4, -5.3, 10.9), (3.8, 11.7, 8.2), (0.15, 0.17, 0.07)),
    (0.308, (16.0, -12.9, 3.9), (8.1, 5.7, 8.1), (0.46, 0.74, 0.61)),
    (0.077, (22.1, -11.3, -2.0), (9.0, 15.9, 10.0), (-0.48, -0.84, 0.13)),
    ),
    (   # vb: 195 masks
    (0.438, (22.2, -70.1, -38.0), (9.8, 8.1, 5.2), (-0.16, -0.1, -0.32)),
    (0.308, (5.9, -27.7, -28.6), (6.0, 11.0, 17.3), (0.09, 0.79, 0.06)),
    (0.253, (20.2, -55.1, -26.4), (9.0, 9.2, 6.8), (-0.02, -0.59, -0.27)),
    ),
)

# the whole atlas territory as one Gaussian (the placement before issue 12): (|x|, y, z) centroid and per-axis
# spread, mm MNI
TERRITORY_MEAN_MM = ((12.0, 3.5, 34.0), (43.3, -13.1, 13.6), (21.7, -70.8, 3.2), (17.7, -9.9, 3.8),
    (20.8, -58.7, -32.8))
TERRITORY_STD_MM = ((7.1, 41.9, 27.1), (12.8, 36.1, 27.2), (13.8, 20.0, 19.4), (9.2, 17.2, 13.1),
    (14.0, 18.6, 10.5))
