"""Which CPU recipe transfers to real strokes? Train each variant, then score it on the shared real case.

    python benchmarks/transfer_ablation.py --out runs/ablation [--only NAME ...] [--steps N]

Every variant is the ``quick`` preset with the changes named in :data:`VARIANTS` (one idea per row), trained on
this machine's CPU (resumable: a variant whose ``last.pt`` is at its last step is not trained again; a stopped
one resumes) and scored by ``benchmarks/transfer.py`` on ``../shared/data/real_stroke_isles22`` (DWI, ADC, both).
Each variant's row of ``<out>/ablation.json`` holds its steps, CPU hours, held-out synthetic lesion Dice and the
real-scan rows; ``benchmarks/README.md`` has the table. One case checks transfer: it is too small to tune on.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_utils import git_sha
from transfer import CASE, load_case, score_checkpoint


def _variants() -> dict:
    """name -> function(cfg) editing a fresh quick preset in place."""
    from synthgen.config import GMMConfig, ProceduralLesionConfig

    def soop_lesions(cfg):               # the SOOP-calibrated default: small, multifocal lesions included
        cfg.data.lesion.procedural = ProceduralLesionConfig()

    def conspicuous(cfg):                # lesions brighter or darker than GM and WM, the rest fully random
        cfg.generator.gmm = GMMConfig(lesion_contrast=(25.0, 100.0))

    def healthy(cfg):
        cfg.data.lesion.healthy_probability = 0.1

    def grid2mm(cfg):
        cfg.generator.voxel_size, cfg.generator.crop = 2.0, (64, 64, 64)

    def chain(*edits):
        def edit(cfg):
            for e in edits:
                e(cfg)
        return edit

    return {
        "quick": chain(),                                               # dark prior, large lesions, 3 mm
        "conspicuous-3mm": chain(conspicuous, soop_lesions, healthy),
        "conspicuous-2mm": chain(conspicuous, soop_lesions, healthy, grid2mm),
        "conspicuous-2mm-large": chain(conspicuous, healthy, grid2mm),  # quick's large single lesions
        "random-2mm": chain(lambda c: setattr(c.generator, "gmm", GMMConfig()), soop_lesions, healthy, grid2mm),
    }


VARIANTS = tuple(_variants())


def variant_config(name: str, out: Path, steps: int | None = None):
    """The TrainConfig of variant ``name``, writing to ``out / name``."""
    from synthgen.train.config import quick_preset
    cfg = quick_preset()
    _variants()[name](cfg)
    if steps:
        cfg.steps = steps
    cfg.out = str(out / name)
    return cfg.validate()


def _synthetic_dice(run: Path) -> float | None:
    import csv
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_lesion_dice")]
    return float(rows[-1]["val_lesion_dice"]) if rows else None


def run_variant(name: str, out: Path, steps: int | None) -> dict:
    import torch
    from synthgen.train.loop import train
    cfg = variant_config(name, out, steps)
    run = Path(cfg.out)
    last = run / "last.pt"
    done = last.is_file() and torch.load(last, map_location="cpu", weights_only=False).get("step") == cfg.steps
    t0 = time.time()
    if not done:
        train(cfg, resume=last.is_file(), progress=False)
    hours_file = run / "cpu_hours.json"
    hours = json.loads(hours_file.read_text())["hours"] if hours_file.is_file() else 0.0
    if not done:
        hours += (time.time() - t0) / 3600
        hours_file.write_text(json.dumps({"hours": hours}))
    scans, truth, ml = load_case(CASE)
    rows, _ = score_checkpoint(str(last), scans, truth, ml)
    return {"variant": name, "steps": cfg.steps, "voxel_size": cfg.generator.voxel_size,
            "crop": list(cfg.generator.crop), "cpu_hours": round(hours, 3), "synthetic_dice": _synthetic_dice(run),
            "real": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--only", nargs="+", choices=VARIANTS, help="variants to run (default: all)")
    p.add_argument("--steps", type=int, help="override every variant's steps")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "ablation.json"
    results = json.loads(table.read_text()) if table.is_file() else {}
    for name in args.only or VARIANTS:
        row = run_variant(name, out, args.steps)
        row["git"] = git_sha()
        results[name] = row
        table.write_text(json.dumps(results, indent=1))
        for r in row["real"]:
            print(f"{name:24s} {r['input']:8s} dice {r['dice']:.3f}  pred {r['pred_ml']:7.2f} mL  "
                  f"true {r['true_ml']:.2f} mL  F1 {r['lesion_f1']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
