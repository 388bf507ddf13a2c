"""Effective elastic and bias field amplitudes: synthgen's draws beside SynthStroke's cornucopia configuration.

Per draw, on the grid each pipeline evaluates its fields on:

- elastic: the displacement field's std (root mean square over the voxels of all three components, mm; its mean
  is zero) and its max (the longest displacement vector, mm);
- bias: the log bias field's std (root mean square of ``log b`` over the voxels).

SynthStroke (``custom_cc.py``: ``cc.RandomAffineElasticTransform(elastic=0.05, elastic_nodes=10, order=3,
bound='zeros', ...)`` and ``cc.IntensityTransform(bias=7, ...)``) runs cornucopia on the whole 256^3 1 mm volume
(``ResizeWithPadOrCrop`` in its ``preprocess.py``), then crops; its fields are measured over the central
``--crop`` voxels of that ``--grid``. The random parameters come from cornucopia's own samplers (control points and
their values for the displacement; node count, strength and coefficients for the bias, as
``BaseFieldTransform.make_field``); the splines are evaluated as cornucopia does (cubic, no prefilter; the
displacement with torch-interpol's ``bound='zero'`` at ``x (n - 1) / (N - 1)``, the bias with ``interpol.resize``'s
``'centers'`` anchors and replicated border), here by separable matrices on a ``--stride`` lattice, which
``tests/test_benchmarks.py`` checks against torch-interpol. The affine part that moves cornucopia's sampling
points is left out (it changes where the field is read, not its amplitude).

synthgen's fields are its own draws (``synthgen.sampling.sample_params`` with ``GeneratorConfig()``) evaluated by
``synthgen.fields`` on its crop. Prints a markdown table; ``--json`` writes the figures (via
``synthgen.io.atomic_path``). Never pass/fail.

Usage: ``python benchmarks/field_amplitudes.py [--draws 300] [--grid 256] [--crop 192] [--stride 2] [--json F]``
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from synthgen.config import GeneratorConfig  # noqa: E402
from synthgen.fields import bspline_matrix, cubic_bspline  # noqa: E402
from synthgen.io import atomic_path  # noqa: E402
from synthgen.sampling import sample_params  # noqa: E402

QUANTILES = (0.1, 0.5, 0.9)


def cornucopia_matrix(n_ctrl: int, n_grid: int, rows, bound: str) -> torch.Tensor:
    """``(len(rows), n_ctrl)`` weights of cornucopia's cubic spline (no prefilter) along one axis at voxels
    ``rows`` of an ``n_grid`` grid whose first and last voxels hold the first and last control points.

    ``bound``: ``"zero"`` (coefficients beyond the grid are 0: cornucopia's elastic ``grid_pull``) or
    ``"replicate"`` (the border coefficient repeats: ``interpol.resize``'s default ``bound='nearest'``).
    """
    x = torch.as_tensor(rows, dtype=torch.float64) * ((n_ctrl - 1) / (n_grid - 1) if n_grid > 1 else 0.0)
    base = torch.floor(x).long()
    w_all = torch.zeros(len(x), n_ctrl, dtype=torch.float64)
    at = torch.arange(len(x))
    for offset in (-1, 0, 1, 2):
        j = base + offset
        w = cubic_bspline(x - j.to(torch.float64))
        if bound == "zero":
            ok = (j >= 0) & (j < n_ctrl)
            w_all.index_put_((at[ok], j[ok]), w[ok], accumulate=True)
        elif bound == "replicate":
            w_all.index_put_((at, j.clamp(0, n_ctrl - 1)), w, accumulate=True)
        else:
            raise ValueError(f"`bound` must be 'zero' or 'replicate', got {bound!r}")
    return w_all


def _evaluate(coeffs: torch.Tensor, mats) -> torch.Tensor:
    """``(C, n1, n2, n3)`` coefficients through three axis matrices -> ``(C, x, y, z)`` float64."""
    return torch.einsum("cijk,xi,yj,zk->cxyz", coeffs.to(torch.float64), *mats)


def _displacement_stats(u: torch.Tensor) -> tuple[float, float]:
    """``(std, max)`` of a ``(3, ...)`` displacement field: RMS of all components, longest vector."""
    return float(u.pow(2).mean().sqrt()), float(u.pow(2).sum(0).sqrt().max())


def cornucopia_draws(n: int, grid: int, crop: int, stride: int, seed: int) -> dict:
    """SynthStroke's elastic and bias fields drawn by cornucopia, measured over the central crop."""
    import cornucopia as cc

    torch.manual_seed(seed)
    random.seed(seed)
    rows = torch.arange((grid - crop) // 2, (grid - crop) // 2 + crop, stride)
    x = torch.zeros(1, 1, 1, 1).expand(1, grid, grid, grid)       # only its shape and dtype are read
    # SynthStroke custom_cc.SynthFromLabelTransform defaults: elastic=0.05, elastic_nodes=10, order=3, bound='zeros'
    deform = cc.RandomAffineElasticTransform(0.05, 10, order=3, bound="zeros", rotations=15, shears=0.012, zooms=0.15)
    # cc.IntensityTransform(bias=7, bias_strength=0.5): its first step is this RandomMulFieldTransform
    bias_t = cc.IntensityTransform(7, 0.5, order=3)[0]
    el_std, el_max, b_std = [], [], []
    for _ in range(n):
        controls = deform.unroll(x, max_depth=1).elastic.final(x, flow=False).controls[0]   # (3, n1, n2, n3) mm
        mats = [cornucopia_matrix(int(c), grid, rows, "zero") for c in controls.shape[1:]]
        s, m = _displacement_stats(_evaluate(controls, mats))
        el_std.append(s)
        el_max.append(m)
        shape = [min(int(s), grid) for s in bias_t.shape(3)]
        vmax = float(bias_t.vmax())
        coeffs = torch.rand([1, *shape])                                   # make_field: U(0, 1) coefficients
        mats = [cornucopia_matrix(c, grid, rows, "replicate") for c in shape]
        field = (1 - vmax) + 2 * vmax * _evaluate(coeffs, mats)            # values in (1 - vmax, 1 + vmax)
        b_std.append(float(torch.log(field).pow(2).mean().sqrt()))
    return {"elastic_std_mm": el_std, "elastic_max_mm": el_max, "bias_log_std": b_std}


def synthgen_draws(n: int, crop: int, stride: int, seed: int, config: GeneratorConfig | None = None) -> dict:
    """synthgen's elastic and bias fields for ``n`` samples of ``config`` (default: the paper's, crop ``crop``^3)."""
    cfg = config or GeneratorConfig(crop=(crop,) * 3)
    params = sample_params(cfg, tuple(cfg.crop), seed, 0, n)
    el_std, el_max, b_std = [], [], []
    for i in range(n):
        e, b = params.elastic[i], params.bias[i]
        mats = [bspline_matrix(c, s, dtype=torch.float64)[::stride] for c, s in zip(e.shape[1:], cfg.crop)]
        s, m = _displacement_stats(_evaluate(e, mats) * cfg.voxel_size)
        el_std.append(s)
        el_max.append(m)
        mats = [bspline_matrix(c, s, dtype=torch.float64)[::stride] for c, s in zip(b.shape[1:], cfg.crop)]
        b_std.append(float(_evaluate(b, mats).pow(2).mean().sqrt()))
    return {"elastic_std_mm": el_std, "elastic_max_mm": el_max, "bias_log_std": b_std}


def summary(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    out = {f"p{int(q * 100)}": float(np.quantile(v, q)) for q in QUANTILES}
    out.update(mean=float(v.mean()), max=float(v.max()))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=300, help="fields drawn per pipeline")
    parser.add_argument("--grid", type=int, default=256, help="SynthStroke's volume (voxels per axis, 1 mm)")
    parser.add_argument("--crop", type=int, default=192, help="crop measured (voxels per axis)")
    parser.add_argument("--stride", type=int, default=2, help="evaluate every stride-th voxel per axis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    ours = synthgen_draws(args.draws, args.crop, args.stride, args.seed)
    try:
        theirs = cornucopia_draws(args.draws, args.grid, args.crop, args.stride, args.seed)
    except ImportError:
        theirs = None
        print("cornucopia is not installed (pip install -e '.[peers]'): synthgen's figures only\n")
    cfg = GeneratorConfig()
    print(f"# field amplitudes over {args.draws} draws: {args.crop}^3 crop (every {args.stride}th voxel); "
          f"SynthStroke on its {args.grid}^3 volume\n")
    print("| field | statistic | SynthStroke (cornucopia) | synthgen |\n|---|---|---|---|")
    rows = []
    for key, name in (("elastic_std_mm", "displacement std (mm)"), ("elastic_max_mm", "displacement max (mm)"),
                      ("bias_log_std", "bias log-field std")):
        a = summary(theirs[key]) if theirs else None
        b = summary(ours[key])
        for stat in ("p10", "p50", "p90", "mean", "max"):
            left = f"{a[stat]:.3g}" if a else "-"
            print(f"| {name} | {stat} | {left} | {b[stat]:.3g} |")
        rows.append({"field": key, "cornucopia": a, "synthgen": b})
    print(f"\nsynthgen: elastic std ~ U(0, {cfg.elastic.max_std:g}) mm on a {cfg.elastic.control_points}^3 grid, "
          f"bias log std ~ U(0, {cfg.bias.max_std:g}) on a {cfg.bias.control_points}^3 grid (synthgen.config)")
    if args.json is not None:
        versions = {"torch": torch.__version__}
        if theirs is not None:
            import cornucopia
            versions["cornucopia"] = cornucopia.__version__
        doc = {"draws": args.draws, "grid": args.grid, "crop": args.crop, "stride": args.stride, "seed": args.seed,
               "versions": versions, "rows": rows}
        with atomic_path(args.json, ".json") as tmp:
            Path(tmp).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
