"""Registers, spills and shared memory of every Triton kernel variant of the fast path, per GPU target.

    python benchmarks/kernel_resources.py [--arch 80 90] [--json out.json]

No GPU needed: the variants are compiled ahead of time (benchmarks/triton_aot.py) with Triton's own ptxas. Use it
when editing a kernel: register pressure bounds occupancy (65,536 registers per SM), spills go to local memory.
Must run without TRITON_INTERPRET=1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton_aot as aot  # noqa: E402

from synthgen.io import atomic_path  # noqa: E402

REGS_PER_SM, MAX_WARPS_PER_SM = 65536, 64


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90], help="sm_XX targets (80: A100, 90: H100)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for (name, _, _), (kernel, signature, constexprs) in sorted(aot.launched_variants().items(),
                                                               key=lambda kv: kv[0][0]):
        flags = {k: v for k, v in constexprs.items() if k != "BLOCK"}
        types = sorted({t for t in signature.values() if t.startswith("*fp")})
        for arch in args.arch:
            use = aot.resources(aot.compile_variant(kernel, signature, constexprs, arch))
            threads = 32 * use["warps"]
            blocks = REGS_PER_SM // max(1, use["reg"] * threads)
            warps = min(MAX_WARPS_PER_SM, blocks * use["warps"])
            rows.append(dict(kernel=name, arch=arch, flags=flags, float_pointers=types, **use,
                             occupancy=warps / MAX_WARPS_PER_SM))
    print("| kernel | flags | float buffers | sm | regs/thread | stack (spills) | shared | warps "
          "| register-bound occupancy |")
    print("|---|---|---|---|---|---|---|---|---|")
    seen = set()
    for r in rows:
        key = (r["kernel"], str(r["flags"]), r["arch"], r["reg"], r["stack"])
        if key in seen:     # float16 / float32 buffers usually compile to the same resources
            continue
        seen.add(key)
        flags = ", ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in r["flags"].items())
        print(f"| {r['kernel']} | {flags} | {' '.join(r['float_pointers'])} | {r['arch']} | {r['reg']} | "
              f"{r['stack']} | {r['shared']} | {r['warps']} | {r['occupancy']:.0%} |")
    if args.json:
        with atomic_path(args.json, ".json") as tmp:
            Path(tmp).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
