"""ms per training step with on-device synthesis vs a pre-made batch, and the share spent generating.

The headline of the project: with synthesis on the training device, a step costs the network step plus the
generator; nnU-Net's ``_noDataLoading`` idea gives the floor (the same pre-made batch every step).

    python benchmarks/train_step.py                    # paper preset on CUDA, quick preset on CPU
    python benchmarks/train_step.py --preset quick --steps 10 --json out.json

Prints a markdown table and writes JSON rows with device name, versions and git SHA. Median and p20-p80 over
the timed steps (after warm-up), CUDA timed with synchronisation around each phase.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_utils import git_sha  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import synthgen  # noqa: E402
from synthgen.data.prefetch import Prefetcher  # noqa: E402
from synthgen.io import atomic_path  # noqa: E402
from synthgen.segment import build_unet  # noqa: E402
from synthgen.train.config import preset  # noqa: E402
from synthgen.data.sources import tissue_maps  # noqa: E402
from synthgen.data.training import training_lesions  # noqa: E402
from synthgen.train.loop import amp_dtype, resolve_device  # noqa: E402
from synthgen.train.losses import DiceCE  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(ms: list) -> dict:
    a = np.asarray(ms)
    return {"median": float(np.median(a)), "p20": float(np.percentile(a, 20)), "p80": float(np.percentile(a, 80))}



def bench(preset_name: str, device: torch.device, steps: int, warmup: int, crop=None) -> dict:
    """Time ``steps`` training steps four ways: synthesis alone, step on a pre-made batch, step with synthesis
    inline, and step with synthesis made ahead on a side stream and thread (``generate_ahead``)."""
    cfg = preset(preset_name)
    if crop:
        cfg.generator.crop = crop
    cfg.device = str(device)
    cfg.validate()
    item = tissue_maps(voxel_size=cfg.generator.voxel_size).load(0)      # the bundled map
    tissue, affine = item.tensor().to(device), item.affine
    lesions, _ = training_lesions(cfg.data.lesion)
    gen = synthgen.SynthGenerator(cfg.generator, lesions=lesions)
    model = build_unet(**cfg.model_kwargs()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    loss_fn = DiceCE.from_config(cfg.optim)
    dtype = amp_dtype(cfg, device)

    def synth(i):
        return gen(tissue, seed=0, index=i, batch_size=cfg.batch_size, affine=affine)

    def step(image, target):
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            logits = model(image)
        loss = loss_fn(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()

    fixed = synth(10 ** 6)
    times = {"synthesis": [], "premade": [], "on_the_fly": []}
    for i in range(warmup + steps):
        keep = i >= warmup
        _sync(device)
        t0 = time.perf_counter()
        batch = synth(i)
        _sync(device)
        t1 = time.perf_counter()
        step(*batch)
        _sync(device)
        t2 = time.perf_counter()
        step(*fixed)
        _sync(device)
        t3 = time.perf_counter()
        if keep:
            times["synthesis"].append(1e3 * (t1 - t0))
            times["on_the_fly"].append(1e3 * (t2 - t0))
            times["premade"].append(1e3 * (t3 - t2))
    out = {k: _stats(v) for k, v in times.items()}
    # the training loop's generate_ahead: step n + 1's batch made on a side stream and thread while step n
    # trains; timed over all steps together (the overlap is the point, so no sync between phases)
    with Prefetcher(synth, range(warmup + steps), depth=1,
                    device=device if device.type == "cuda" else None) as ahead:
        for _ in range(warmup):
            step(*next(ahead))
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(*next(ahead))
        _sync(device)
        mean = 1e3 * (time.perf_counter() - t0) / steps
    out["ahead"] = {"median": mean, "p20": mean, "p80": mean}
    share = out["synthesis"]["median"] / out["on_the_fly"]["median"]
    return {"preset": preset_name, "crop": list(cfg.generator.crop), "voxel_size": cfg.generator.voxel_size,
            "batch_size": cfg.batch_size, "amp": str(dtype) if dtype else "fp32", "steps": steps, "warmup": warmup,
            "ms": out, "synthesis_share": share,
            "samples_s_on_the_fly": 1e3 * cfg.batch_size / out["on_the_fly"]["median"],
            "samples_s_premade": 1e3 * cfg.batch_size / out["premade"]["median"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("paper", "quick"), help="default: paper on CUDA, quick on CPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--crop", type=int, help="cubic crop override (multiple of the net stride)")
    p.add_argument("--json", default=None, help="also write the row here (JSON)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    name = args.preset or ("paper" if device.type == "cuda" else "quick")
    row = bench(name, device, args.steps, args.warmup, (args.crop,) * 3 if args.crop else None)
    row.update({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                or platform.machine(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                "synthgen": synthgen.__version__, "python": platform.python_version(), "git_sha": git_sha(short=False),
                "backend": os.environ.get("SYNTHGEN_BACKEND", "auto")})
    ms = row["ms"]
    print(f"\ntrain step, preset {name}, crop {row['crop']} at {row['voxel_size']:g} mm, {row['amp']}, "
          f"{row['device']} (median [p20-p80] ms over {args.steps} steps)\n")
    print("| | ms/step | samples/s |\n|---|---|---|")
    for key, label in (("premade", "pre-made batch (no synthesis)"), ("on_the_fly", "on-device synthesis"),
                       ("ahead", "on-device synthesis made ahead (mean)"), ("synthesis", "synthesis alone")):
        s = ms[key]
        sps = f"{1e3 * row['batch_size'] / s['median']:.2f}"
        print(f"| {label} | {s['median']:.1f} [{s['p20']:.1f}-{s['p80']:.1f}] | {sps} |")
    print(f"\nsynthesis share of a step: {100 * row['synthesis_share']:.0f} %")
    if args.json:
        with atomic_path(args.json, ".json") as tmp:
            Path(tmp).write_text(json.dumps(row, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
