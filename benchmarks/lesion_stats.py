"""Procedural vs real stroke lesions: the same statistics side by side (table + JSON + PNG).

Draws ``--n`` procedural lesions on the bundled default tissue map (MNI152 2009a, resliced by affine to
``--voxel-mm``), measures them exactly as ``scripts/calibrate_lesions.py`` measures the real SOOP masks
(volume, 26-connected components, hemisphere, dominant JHU arterial territory), and prints a markdown
table with a bootstrap interval of each procedural figure and the delivered / drawn volume
ratio. The real column comes from ``--real-json`` (calibrate_lesions output) or is measured on
``--real-subset`` SOOP masks. Never pass/fail.

Usage: ``python benchmarks/lesion_stats.py [--n 300] [--voxel-mm 2] [--real-json stats.json] [--out DIR]``
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from synthgen.config import ProceduralLesionConfig  # noqa: E402
from synthgen.io import atomic_path, load_nifti, resample_to_grid  # noqa: E402
from synthgen.lesions import procedural_lesion  # noqa: E402
from synthgen.lesions.procedural import draw_lesion_plan  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "lesions_soop_mni"


def _calibrate_module():
    spec = importlib.util.spec_from_file_location("calibrate_lesions", ROOT / "scripts" / "calibrate_lesions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _grid(voxel_mm: float, like_shape, like_affine):
    """A ``voxel_mm`` RAS grid covering the field of view of ``(like_shape, like_affine)``."""
    out_affine = like_affine.copy()
    out_affine[:3, :3] = like_affine[:3, :3] * voxel_mm / np.sqrt((like_affine[:3, :3] ** 2).sum(0))
    shape = tuple(int(np.floor((n - 1) / voxel_mm)) + 1 for n in like_shape)
    return shape, out_affine


def _rows(real: dict, proc: dict) -> list[tuple[str, float, float]]:
    rows = []
    for q in ("0.10", "0.25", "0.50", "0.75", "0.90"):
        rows.append((f"volume p{int(float(q) * 100)} (mL)", real["volume_ml_quantiles"][q], proc["volume_ml_quantiles"][q]))
    rows.append(("volume mean (mL)", real["volume_ml_mean"], proc["volume_ml_mean"]))
    rows.append(("fraction multifocal", real["fraction_multifocal"], proc["fraction_multifocal"]))
    for k in (1, 2, 3):
        rows.append((f"P({k} components)", real["component_count_pmf_1_to_10plus"][k - 1],
                     proc["component_count_pmf_1_to_10plus"][k - 1]))
    rows.append(("P(>=10 components)", real["component_count_pmf_1_to_10plus"][-1],
                 proc["component_count_pmf_1_to_10plus"][-1]))
    rows.append(("components p90", real["component_count_quantiles"]["0.90"], proc["component_count_quantiles"]["0.90"]))
    rows.append(("largest component share p50", real["largest_component_share_quantiles"]["0.50"],
                 proc["largest_component_share_quantiles"]["0.50"]))
    rows.append(("left-dominant", real["hemisphere"]["left_dominant"], proc["hemisphere"]["left_dominant"]))
    rows.append(("bilateral (>= 5 %)", real["hemisphere"]["bilateral"], proc["hemisphere"]["bilateral"]))
    for name in real["dominant_territory"]:
        rows.append((f"territory {name}", real["dominant_territory"][name], proc["dominant_territory"].get(name, 0.0)))
    for name in ("aca", "mca", "pca", "deep", "vb"):
        rows.append((f"volume p50, {name} (mL)", real["median_volume_ml_by_territory"][name],
                     proc["median_volume_ml_by_territory"].get(name) or float("nan")))
    return rows


def _bootstrap(proc_per: list, real: dict, summarise, n_boot: int = 200, seed: int = 0) -> np.ndarray:
    """(rows, 2) 2.5 / 97.5 % bootstrap interval of each procedural statistic: how far a draw of this many
    lesions scatters (300 lesions cannot tell a p90 of 100 mL from one of 125 mL)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(proc_per), len(proc_per))
        values.append([r[2] for r in _rows(real, summarise([proc_per[i] for i in pick]))])
    return np.nanquantile(np.array(values, dtype=np.float64), [0.025, 0.975], axis=0).T


def _write_atomic(path: Path, write):
    with atomic_path(path, path.suffix) as tmp:
        write(tmp)


def _plot(path: Path, real_per: list, proc_per: list, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    bins = np.linspace(-3, 3, 31)
    for per, label in ((real_per, "real (SOOP)"), (proc_per, "procedural")):
        v = np.array([m["volume_ml"] for m in per if m["components"] > 0])
        ax[0].hist(np.log10(v), bins=bins, density=True, histtype="step", label=label, linewidth=2)
        c = np.minimum([m["components"] for m in per if m["components"] > 0], 10)
        ax[1].hist(c, bins=np.arange(0.5, 11.5), density=True, histtype="step", label=label, linewidth=2)
    ax[0].set_xlabel("log10 lesion volume (mL)")
    ax[1].set_xlabel("components (26-conn., 10 = 10+)")
    terr = [r for r in rows if r[0].startswith("territory")]
    x = np.arange(len(terr))
    ax[2].bar(x - 0.2, [r[1] for r in terr], 0.4, label="real (SOOP)")
    ax[2].bar(x + 0.2, [r[2] for r in terr], 0.4, label="procedural")
    ax[2].set_xticks(x, [r[0].split()[1] for r in terr])
    ax[2].set_ylabel("share of lesions (dominant territory)")
    for a in ax:
        a.legend()
    fig.tight_layout()
    _write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="procedural lesions to draw")
    parser.add_argument("--voxel-mm", type=float, default=2.0, help="grid of the tissue map (mm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-json", type=Path, default=None, help="output of scripts/calibrate_lesions.py")
    parser.add_argument("--real-subset", type=int, default=200, help="SOOP masks to measure without --real-json")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (small volumes: 1 is fastest)")
    parser.add_argument("--out", type=Path, default=Path("runs/lesion_stats"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: SOOP lesion folder absent (needed for the atlas and the real statistics)")
    cal = _calibrate_module()

    from synthgen.data.default_map import default_tissue_map
    labels, affine = default_tissue_map(with_affine=True)
    shape, grid_affine = _grid(args.voxel_mm, labels.shape[2:], affine)
    tissue = resample_to_grid(labels[0, 0].numpy(), affine, shape, grid_affine, order=0)
    parenchyma = torch.from_numpy((tissue >= 1) & (tissue <= 3)).to(args.device)
    atlas, atlas_affine = load_nifti(DATA / "ArterialAtlas136.nii.gz")
    group = cal.atlas_groups(resample_to_grid(atlas.astype(np.int16), atlas_affine, shape, grid_affine, order=0))

    cfg = ProceduralLesionConfig()
    proc_per, drawn = [], []
    t0 = time.perf_counter()
    for i in tqdm(range(args.n), desc="procedural lesions", unit="lesion"):
        key = args.seed * 1_000_003 + i
        mask = procedural_lesion(parenchyma, key, cfg, grid_affine).cpu().numpy()
        proc_per.append(cal.measure_mask(mask, grid_affine, group))
        drawn.append(draw_lesion_plan(torch.Generator().manual_seed(key), cfg)["volume_ml"])
    seconds = (time.perf_counter() - t0) / args.n
    drawn = np.array(drawn)
    ratio = np.array([m["volume_ml"] for m in proc_per]) / drawn

    if args.real_json is not None:
        real_doc = json.loads(args.real_json.read_text())
        real, real_per, real_n = real_doc["summary"], [], real_doc["files"]
    else:
        files = sorted(DATA.glob("*_lesion.nii.gz"))[: args.real_subset]
        real_per = []
        for f in tqdm(files, desc="SOOP masks", unit="mask"):
            m, a = load_nifti(f)
            real_per.append(cal.measure_mask(m > 0.5, a, cal.atlas_groups(atlas)))
        real, real_n = cal.summarise(real_per), len(files)
    proc = cal.summarise(proc_per)
    rows = _rows(real, proc)

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
    except OSError:
        sha = ""
    print(f"# procedural ({args.n} lesions, {args.voxel_mm} mm grid {shape}, {seconds * 1000:.0f} ms/lesion on "
          f"{args.device}) vs real (SOOP, {real_n} masks, 1 mm)\n")
    interval = _bootstrap(proc_per, real, cal.summarise)
    print("| statistic | real | procedural | procedural 95 % (bootstrap) |\n|---|---|---|---|")
    for (name, r, p), (a, b) in zip(rows, interval):
        print(f"| {name} | {r:.3g} | {p:.3g} | {a:.3g} - {b:.3g} |")
    delivered = {}
    for lo, hi in ((1, 10), (10, 50), (50, 1e9)):
        sel = (drawn >= lo) & (drawn < hi)
        if sel.any():
            qs = np.quantile(ratio[sel], [0.1, 0.5, 0.9])
            delivered[f"{lo}-{hi:g}"] = {"n": int(sel.sum()), "p10": qs[0], "p50": qs[1], "p90": qs[2],
                                         "min": float(ratio[sel].min())}
            print(f"\ndelivered / drawn volume, drawn {lo}-{hi:g} mL (n={int(sel.sum())}): p10 {qs[0]:.3f} "
                  f"p50 {qs[1]:.3f} p90 {qs[2]:.3f} min {ratio[sel].min():.3f}", end="")
    print()
    doc = {"git": sha, "device": args.device, "torch": torch.__version__, "n": args.n, "voxel_mm": args.voxel_mm,
           "ms_per_lesion": seconds * 1000, "real_masks": real_n, "real": real, "procedural": proc,
           "delivered_over_drawn": delivered,
           "table": [{"statistic": n, "real": r, "procedural": p, "procedural_95": [a, b]}
                     for (n, r, p), (a, b) in zip(rows, interval)]}
    _write_atomic(args.out / "lesion_stats.json", lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    if not real_per:      # histograms need per-mask values: measure a small real subset for the figure
        files = sorted(DATA.glob("*_lesion.nii.gz"))[: min(args.real_subset, 200)]
        for f in tqdm(files, desc="SOOP masks (figure)", unit="mask"):
            m, a = load_nifti(f)
            real_per.append(cal.measure_mask(m > 0.5, a, cal.atlas_groups(atlas)))
    _plot(args.out / "lesion_stats.png", real_per, proc_per, rows)
    print(f"\nwrote {args.out / 'lesion_stats.json'} and {args.out / 'lesion_stats.png'}")


if __name__ == "__main__":
    main()
