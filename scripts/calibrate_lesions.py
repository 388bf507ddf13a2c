"""Measure the real stroke lesion masks that calibrate the procedural lesion defaults.

Reads the SOOP acute ischaemic stroke masks (``../shared/data/lesions_soop_mni``: 1449 binary masks
in MNI space, 157x189x136 LAS, with the JHU arterial territory atlas ``ArterialAtlas136`` on the same
grid) and writes one JSON of statistics; the tables in ``synthgen.calibration`` (ProceduralLesionConfig)
were copied from its output. Reading is by affine (world x < 0 is left, RAS+), never by array index.

Measured per mask: volume (mL), connected components (26-connectivity) with their volumes and
centroids, share of the volume in each hemisphere, and the arterial territory holding most of the
lesion; per territory, the volume quantiles and how bilateral lesions split. Placement
(``synthgen.calibration.SOOP_TERRITORY_COMPONENTS``): per territory, a 3-component full-covariance Gaussian
mixture (EM, :func:`fit_gaussian_mixture`) fitted to the centroids of the largest components of the masks whose
dominant territory it is, mirrored to the right hemisphere (x >= 0): where real lesions of that territory lie,
which a procedural lesion's main component is centred by. From the atlas alone: centroid and covariance (mm, MNI)
of each territory group, mirrored likewise (``territory_mean_mm`` / ``territory_std_mm``, the single-Gaussian
placement before issue 12).

Usage: ``python scripts/calibrate_lesions.py [--data DIR] [--subset N] [--out stats.json]``
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from synthgen.io import atomic_path, load_nifti  # noqa: E402

# Territory groups over the JHU ArterialAtlas labels (ArterialAtlas136.txt). The atlas' own level-2
# grouping puts the lenticulostriate arteries under ACA / MCA; we keep perforator territories apart
# because their infarcts (lacunes) are small and deep.
TERRITORY_LABELS = {
    "aca": (1, 2),
    "mca": tuple(range(7, 17)),
    "pca": (17, 18, 19, 20),
    "deep": (3, 4, 5, 6, 21, 22, 23, 24),     # medial/lateral lenticulostriate, choroidal, thalamoperforators
    "vb": tuple(range(25, 31)),               # basilar, superior and inferior cerebellar
    "ventricle": (31, 32),
}
QUANTILES = tuple(round(q, 2) for q in np.linspace(0, 1, 21))
BILATERAL_SHARE = 0.05   # a lesion is bilateral when its smaller hemisphere holds at least 5 % of it
STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def world_coords(shape, affine) -> np.ndarray:
    """(X, Y, Z, 3) world coordinates (mm) of every voxel centre."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def measure_mask(mask: np.ndarray, affine: np.ndarray, atlas_group: np.ndarray) -> dict:
    """Statistics of one binary mask (see the module docstring)."""
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    labels, n = ndimage.label(mask, structure=STRUCTURE_26)
    volume = float(mask.sum()) * voxel_ml
    out = {"volume_ml": volume, "components": int(n)}
    if n == 0:
        return out
    sizes = np.bincount(labels.ravel())[1:] * voxel_ml
    centroids = np.array(ndimage.center_of_mass(mask, labels, range(1, n + 1)))
    centroids = centroids @ affine[:3, :3].T + affine[:3, 3]
    order = np.argsort(-sizes)
    out["component_ml"] = sizes[order].tolist()
    main = centroids[order[0]]
    out["main_centroid_mm"] = main.tolist()
    out["satellite_distance_mm"] = np.linalg.norm(centroids[order[1:]] - main, axis=1).tolist()
    idx = np.nonzero(mask)
    x_world = np.stack(idx, 1) @ affine[0, :3] + affine[0, 3]
    left = x_world < 0
    out["left_share"] = float(left.mean())
    comp = labels[idx]
    on_left = np.bincount(comp, weights=left, minlength=n + 1)
    on_right = np.bincount(comp, weights=~left, minlength=n + 1)
    minority = on_left if left.mean() < 0.5 else on_right
    crossing = (on_left > 0) & (on_right > 0)
    out["crossing_share"] = float(minority[crossing].sum() / minority.sum()) if minority.sum() > 0 else 0.0
    groups = np.bincount(atlas_group[idx], minlength=len(TERRITORY_LABELS) + 1)
    out["territory_voxels"] = groups.tolist()   # index 0: outside the atlas
    return out


def atlas_groups(atlas: np.ndarray) -> np.ndarray:
    """Atlas labels -> territory group index (1-based in TERRITORY_LABELS order, 0 none)."""
    lut = np.zeros(int(atlas.max()) + 1, dtype=np.int64)
    for g, labels in enumerate(TERRITORY_LABELS.values(), start=1):
        lut[list(labels)] = g
    return lut[atlas.astype(np.int64)]


def territory_geometry(group: np.ndarray, affine: np.ndarray) -> dict:
    """Centroid and covariance (mm) of each territory group, mirrored to the right hemisphere."""
    world = world_coords(group.shape, affine)
    geometry = {}
    for g, name in enumerate(TERRITORY_LABELS, start=1):
        pts = world[group == g].copy()
        pts[:, 0] = np.abs(pts[:, 0])
        geometry[name] = {"mean_mm": pts.mean(0).round(1).tolist(),
                          "std_mm": pts.std(0).round(1).tolist(),
                          "volume_ml": round(len(pts) / 1000.0, 1)}
    return geometry


def summarise(per_mask: list[dict]) -> dict:
    """Aggregate per-mask statistics into the figures ProceduralLesionConfig takes."""
    nonempty = [m for m in per_mask if m["components"] > 0]
    vol = np.array([m["volume_ml"] for m in nonempty])
    counts = np.array([m["components"] for m in nonempty])
    pmf = [float((counts == k).mean()) for k in range(1, 10)] + [float((counts >= 10).mean())]
    largest_share = np.array([m["component_ml"][0] / m["volume_ml"] for m in nonempty])
    sat_rel = np.concatenate([np.array(m["component_ml"][1:]) / m["volume_ml"] for m in nonempty if m["components"] > 1]
                             or [np.zeros(0)])
    sat_dist = np.concatenate([m["satellite_distance_mm"] for m in nonempty if m["components"] > 1] or [np.zeros(0)])
    left = np.array([m["left_share"] for m in nonempty])
    minority = np.minimum(left, 1 - left)
    terr = np.array([m["territory_voxels"] for m in nonempty])
    dominant = terr.argmax(1)
    names = ["none"] + list(TERRITORY_LABELS)
    # percentile of each volume under the overall linear-interpolated quantile function (np.quantile's)
    rank = (rankdata(vol) - 1) / max(len(vol) - 1, 1)
    q = lambda a: dict(zip([f"{p:.2f}" for p in QUANTILES], np.quantile(a, QUANTILES).round(4).tolist())) if len(a) else {}
    return {
        "n_masks": len(per_mask),
        "n_empty": len(per_mask) - len(nonempty),
        "volume_ml_quantiles": q(vol),
        "volume_ml_mean": float(vol.mean()),
        "fraction_over_200ml": float((vol > 200).mean()),
        "fraction_multifocal": float((counts > 1).mean()),
        "component_count_pmf_1_to_10plus": pmf,
        "component_count_quantiles": q(counts.astype(float)),
        "largest_component_share_quantiles": q(largest_share),
        "largest_component_share_multifocal_deciles": np.quantile(largest_share[counts > 1], np.linspace(0, 1, 11)
                                                                  ).round(4).tolist() if (counts > 1).any() else [],
        "satellite_relative_volume_quantiles": q(sat_rel),
        "satellite_distance_mm_quantiles": q(sat_dist),
        "hemisphere": {
            "left_dominant": float((left > 0.5).mean()),
            "bilateral": float((minority >= BILATERAL_SHARE).mean()),
            "bilateral_share_threshold": BILATERAL_SHARE,
        },
        "dominant_territory": {n: float((dominant == i).mean()) for i, n in enumerate(names)},
        "territory_voxel_share": dict(zip(names, (terr.sum(0) / terr.sum()).round(4).tolist())),
        "median_volume_ml_by_territory": {n: float(np.median(vol[dominant == i])) if (dominant == i).any() else None
                                          for i, n in enumerate(names)},
        # volume depends on the territory (lacunes vs MCA infarcts): ProceduralLesionConfig draws from these
        "volume_ml_quantiles_by_territory": {n: {"n": int((dominant == i).sum()), "quantiles": q(vol[dominant == i])}
                                             for i, n in enumerate(names)},
        # the same, as the volume's percentile among all masks (0..1): ProceduralLesionConfig stores these so
        # that a changed overall volume distribution keeps the territory effect
        "volume_rank_quantiles_by_territory": {n: q(rank[dominant == i]) for i, n in enumerate(names)},
        "bilateral_detail": bilateral_detail(nonempty, counts, minority),
    }


def bilateral_detail(nonempty: list[dict], counts: np.ndarray, minority: np.ndarray) -> dict:
    """How bilateral lesions are bilateral: the rate among uni- and multifocal lesions, the share of the
    volume on the smaller side, and whether a single component crosses the midline."""
    bil = minority >= BILATERAL_SHARE
    multi = counts > 1
    crossing = np.array([m.get("crossing_share", 0.0) for m in nonempty])
    q = lambda a: np.quantile(a, np.linspace(0, 1, 11)).round(4).tolist() if len(a) else []
    return {
        "rate_unifocal": float(bil[~multi].mean()) if (~multi).any() else None,
        "rate_multifocal": float(bil[multi].mean()) if multi.any() else None,
        "share_of_bilateral_that_are_multifocal": float(multi[bil].mean()) if bil.any() else None,
        "minority_share_deciles_bilateral": q(minority[bil]),
        "minority_share_deciles_multifocal_bilateral": q(minority[bil & multi]),
        # share of the minority side's volume in components that also hold voxels on the other side
        "minority_in_crossing_component_deciles_bilateral": q(crossing[bil]),
    }


def _log_gauss(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (x - mean).T)
    return -0.5 * (z ** 2).sum(0) - np.log(np.diag(chol)).sum() - 0.5 * x.shape[1] * np.log(2 * np.pi)


def fit_gaussian_mixture(x: np.ndarray, k: int, iters: int = 300, seed: int = 0, floor_mm2: float = 1.0):
    """EM fit of a ``k``-component full-covariance Gaussian mixture to points ``x`` (n, 3), k-means++ start,
    ``floor_mm2`` added to each covariance's diagonal (no component collapses onto a few points).

    Returns:
        ``(weights (k,), means (k, 3), covariances (k, 3, 3), mean log-likelihood)``.
    """
    rng = np.random.default_rng(seed)
    n = len(x)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1) for c in centres], 0)
        centres.append(x[rng.choice(n, p=d2 / d2.sum())])
    mean = np.array(centres, dtype=np.float64)
    cov = np.array([np.cov(x.T)] * k)
    weight = np.full(k, 1.0 / k)
    for _ in range(iters):
        logp = np.stack([np.log(weight[j]) + _log_gauss(x, mean[j], cov[j]) for j in range(k)], 1)
        top = logp.max(1, keepdims=True)
        resp = np.exp(logp - top)
        loglik = float((top[:, 0] + np.log(resp.sum(1))).mean())
        resp /= resp.sum(1, keepdims=True)
        nk = resp.sum(0) + 1e-9
        weight = nk / n
        mean = resp.T @ x / nk[:, None]
        for j in range(k):
            d = x - mean[j]
            cov[j] = (resp[:, j, None] * d).T @ d / nk[j] + np.eye(x.shape[1]) * floor_mm2
    return weight, mean, cov, loglik


def territory_components(per_mask: list[dict], k: int = 3, seed: int = 0) -> list:
    """Per territory (TERRITORY_LABELS order, ventricle left out), the mixture of the main components' centroids
    (mirrored to x >= 0) of the masks it dominates, as ``ProceduralLesionConfig.territory_components`` takes it:
    ``(weight, mean, std, (r_xy, r_xz, r_yz))`` per component, rounded."""
    out = []
    for g, name in enumerate(list(TERRITORY_LABELS)[:5], start=1):
        pts = np.array([m["main_centroid_mm"] for m in per_mask
                        if m["components"] > 0 and int(np.argmax(m["territory_voxels"])) == g], dtype=np.float64)
        pts[:, 0] = np.abs(pts[:, 0])
        weight, mean, cov, _ = fit_gaussian_mixture(pts, min(k, len(pts)), seed=seed)
        comps = []
        for w, mu, c in sorted(zip(weight, mean, cov), key=lambda t: -t[0]):
            sd = np.sqrt(np.diag(c))
            r = c / np.outer(sd, sd)
            comps.append([round(float(w), 3), [round(float(v), 1) for v in mu], [round(float(v), 1) for v in sd],
                          [round(float(r[0, 1]), 2), round(float(r[0, 2]), 2), round(float(r[1, 2]), 2)]])
        out.append({"territory": name, "masks": len(pts), "components": comps})
    return out


def write_json_atomic(path: Path, obj) -> None:
    with atomic_path(path, ".json") as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "lesions_soop_mni")
    parser.add_argument("--subset", type=int, default=None, help="measure only the first N masks (sorted names)")
    parser.add_argument("--out", type=Path, default=Path("lesion_stats_soop.json"))
    args = parser.parse_args(argv)

    files = sorted(args.data.glob("*_lesion.nii.gz"))
    if not files:
        raise SystemExit(f"{args.data}: no *_lesion.nii.gz masks found")
    if args.subset is not None:
        files = files[: args.subset]
    atlas, atlas_affine = load_nifti(args.data / "ArterialAtlas136.nii.gz")
    group = atlas_groups(atlas)
    per_mask = []
    for path in tqdm(files, desc="masks", unit="mask"):
        mask, affine = load_nifti(path)
        if mask.shape != group.shape or not np.allclose(affine, atlas_affine, atol=1e-4):
            raise SystemExit(f"{path}: grid {mask.shape} differs from the atlas grid {group.shape}")
        stats = measure_mask(mask > 0.5, affine, group)
        stats["file"] = path.name
        per_mask.append(stats)
    result = {"source": str(args.data), "files": len(files), "summary": summarise(per_mask),
              "territory_geometry": territory_geometry(group, atlas_affine),
              "territory_components": territory_components(per_mask), "per_mask": per_mask}
    write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result["summary"].items()}, indent=1))
    print(json.dumps(result["territory_geometry"], indent=1))
    print(json.dumps(result["territory_components"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
