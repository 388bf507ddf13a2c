"""Roofline of the fused generator (synthgen.fast): bytes and flop per voxel per pass, and the time floor.

    python benchmarks/roofline.py --size 192 --batch 64 [--device cuda] [--peak-tflops 67] [--work-dtype float16]
                                  [--time] [--json out.json]

The model costs the passes synthgen.fast launches (synthgen.fast.pass_plan) for a batch drawn from the default config
(an axis pass runs when any sample of the batch needs it, so large batches run them all). Bandwidth is measured with a device copy
(read + write); ``--peak-tflops`` is the fp32 non-tensor peak (H100 SXM: 67). Floor = max(bytes / bandwidth,
flop / peak) per sample. ``--time`` also times generate_fast on a CUDA device (needs Triton) and reports the
ratio to the floor. Standalone: benchmarks/throughput.py does not import it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import synthgen  # noqa: E402
from synthgen.config import GeneratorConfig  # noqa: E402
from synthgen.io import atomic_path  # noqa: E402
from synthgen import fast  # noqa: E402

F32 = 4


def passes(params, crop, labels_channels: int = 1, lesion: bool = True, lesion_target: bool = False,
           work_bytes: int = F32):
    """(name, bytes per voxel, flop per voxel) of every pass synthgen.fast runs for this batch (Triton backend;
    ``work_bytes`` per intermediate voxel: 4 float32, 2 float16), read from :func:`synthgen.fast.pass_plan`:
    the passes the launcher runs, costed here. Noise and min/max ride in epilogues."""
    w = work_bytes
    tissue_bytes = 1 if labels_channels == 1 else 8 * labels_channels * F32 / 8   # gathers mostly hit cache
    warp_flop = 30 + 64 * 3 * 2 + 64 * 2 + 40 + (8 * 2 * labels_channels if labels_channels > 1 else 4)
    rows, histograms = [], 0
    for p in fast.pass_plan(GeneratorConfig(crop=tuple(crop)), params):
        if p.name == "randn":
            row = ["texture randn (Philox)", w, 40]
        elif p.name == "blur" and p.stage == "thick":
            row = [f"motion blur + slice profile axis {p.axis} ({p.taps} taps{', gamma' if p.gamma else ''})",
                   2 * w, 2 * p.taps + (20 * p.taps if p.gamma else 0)]
        elif p.name == "blur":
            row = [f"{'texture blur' if p.stage == 'texture' else 'smoothing'} axis {p.axis} ({p.taps} taps)", 2 * w,
                   2 * p.taps]
        elif p.name == "warp":
            row = ["warp+sample+GMM+bias+target", w + tissue_bytes + (2 * F32 if lesion else 0) + w + 1,
                   warp_flop + (40 if lesion else 0)]
        elif p.name == "resample":
            row = [f"thick-slice resample axis {p.axis}", 2 * w, 20]
        elif p.name == "histogram":
            histograms += 1
            row = [f"histogram level {histograms}", w, 6 if histograms == 1 else 8]
        elif p.name == "stats":
            row = ["clip/strip statistics", w + 1, 8]
        else:
            row = ["final: clip, strip, flip, z-norm", w + 1 + F32 + (1 if lesion_target else 0), 8]
        if "noise" in p.epilogue:
            row[0] += " + noise (Philox, Rician)"
            row[2] += 2 * 40 + 8
        if "minmax" in p.epilogue:
            row[0] += ", min/max"
            row[2] += 2
        rows.append(tuple(row))
    return rows


def bandwidth(device, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Copy bandwidth in bytes/s (read + write counted)."""
    a = torch.empty(nbytes // 4, device=device)
    b = torch.empty_like(a)
    times = []
    for _ in range(repeats + 1):
        if a.is_cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        b.copy_(a)
        if a.is_cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times[1:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=67.0, help="fp32 peak of the device (H100 SXM: 67)")
    ap.add_argument("--channels", type=int, default=1, help="1: label map; K: K probability channels")
    ap.add_argument("--work-dtype", choices=("float32", "float16"), default="float32",
                    help="intermediate volumes of the fast path (GeneratorConfig.work_dtype)")
    ap.add_argument("--time", action="store_true", help="time synthgen.fast.generate_fast (CUDA only)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    crop = (args.size,) * 3
    cfg = GeneratorConfig(crop=crop, work_dtype=args.work_dtype)
    params = synthgen.SynthGenerator(cfg).sample_params((1, 1, 197, 233, 189), seed=0, batch=args.batch)
    rows = passes(params, crop, args.channels, work_bytes=2 if args.work_dtype == "float16" else F32)
    n = args.size ** 3
    total_b = sum(r[1] for r in rows)
    total_f = sum(r[2] for r in rows)
    bw = bandwidth(args.device)
    t_bytes, t_flop = n * total_b / bw, n * total_f / (args.peak_tflops * 1e12)
    floor = max(t_bytes, t_flop)
    print("| pass | bytes/voxel | flop/voxel |\n|---|---|---|")
    for name, b, f in rows:
        print(f"| {name} | {b:.0f} | {f:.0f} |")
    print(f"| **total ({len(rows)} passes)** | **{total_b:.0f}** | **{total_f:.0f}** |\n")
    print(f"device {args.device}: copy bandwidth {bw / 1e9:.0f} GB/s, peak {args.peak_tflops} TFLOP/s (given)")
    print(f"per sample at {args.size}^3: bytes {1e3 * t_bytes:.3f} ms, flop {1e3 * t_flop:.3f} ms, "
          f"floor {1e3 * floor:.3f} ms = {1 / floor:.0f} samples/s")
    out = {"size": args.size, "batch": args.batch, "device": args.device, "work_dtype": args.work_dtype,
           "bandwidth_gbs": bw / 1e9,
           "peak_tflops": args.peak_tflops, "bytes_per_voxel": total_b, "flop_per_voxel": total_f,
           "floor_ms": 1e3 * floor, "passes": rows}
    if args.time:
        from synthgen.data.default_map import default_tissue_map
        tissue = default_tissue_map(device=args.device)
        fast.generate_fast(cfg, tissue, params, None, "triton")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            fast.generate_fast(cfg, tissue, params, None, "triton")
        torch.cuda.synchronize()
        per = (time.perf_counter() - t0) / 5 / args.batch
        out.update(measured_ms=1e3 * per, ratio_to_floor=per / floor)
        print(f"measured {1e3 * per:.3f} ms/sample ({1 / per:.0f} samples/s), {per / floor:.1f}x the floor")
    if args.json:
        with atomic_path(args.json, ".json") as tmp:
            Path(tmp).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
