"""Connected-component labelling for the lesion metrics: scipy.ndimage.label vs cc3d (connected-components-3d).

    python benchmarks/connected_components.py [--sizes 96 192 256] [--repeats 5] [--json out.json]

Masks: "lesions" (a few smooth blobs, ~1 % foreground, as a stroke mask or a good prediction) and "speckle"
(thresholded white noise, 10 % foreground: thousands of tiny components, a noisy prediction's worst case).
26-connectivity, as the metrics use. Reports the median [p20-p80] ms of each and checks both count the same
components. synthgen.metrics.label_components uses cc3d when it is installed only if this says it is faster.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.io import atomic_path  # noqa: E402


def masks(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.standard_normal((size,) * 3).astype(np.float32), size / 24)
    lesions = smooth > np.quantile(smooth, 0.99)
    speckle = rng.random((size,) * 3) < 0.10
    return {"lesions": lesions, "speckle": speckle}


def _time(fn, repeats: int) -> tuple[float, float, float]:
    fn()                                                   # warm-up
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ms.append(1e3 * (time.perf_counter() - t0))
    q = statistics.quantiles(ms, n=5) if len(ms) > 1 else [ms[0]] * 4
    return statistics.median(ms), q[0], q[3]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 192, 256], help="cube sizes (voxels)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case (after one warm-up)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON (default: print only)")
    args = p.parse_args(argv)
    try:
        import cc3d
    except ImportError:
        print("cc3d is not installed (pip install connected-components-3d): nothing to compare", file=sys.stderr)
        return 1
    structure = ndimage.generate_binary_structure(3, 3)
    rows = []
    print("| size | mask | components | scipy ms (p20-p80) | cc3d ms (p20-p80) | scipy / cc3d |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        for name, mask in masks(size).items():
            n_scipy = ndimage.label(mask, structure=structure)[1]
            n_cc3d = cc3d.connected_components(mask, connectivity=26, return_N=True)[1]
            if n_scipy != n_cc3d:
                raise SystemExit(f"component counts differ at {size}^3 {name}: scipy {n_scipy}, cc3d {n_cc3d}")
            s = _time(lambda: ndimage.label(mask, structure=structure), args.repeats)
            c = _time(lambda: cc3d.connected_components(mask, connectivity=26, return_N=True), args.repeats)
            rows.append({"size": size, "mask": name, "components": int(n_scipy), "scipy_ms": s, "cc3d_ms": c})
            print(f"| {size}^3 | {name} | {n_scipy} | {s[0]:.1f} ({s[1]:.1f}-{s[2]:.1f}) | "
                  f"{c[0]:.1f} ({c[1]:.1f}-{c[2]:.1f}) | {s[0] / c[0]:.1f}x |")
    if args.json:
        import scipy
        meta = {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version(),
                "numpy": np.__version__, "scipy": scipy.__version__, "cc3d": getattr(cc3d, "__version__", "?")}
        with atomic_path(args.json, ".json") as tmp, open(tmp, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
