"""Training data at the paper's scale: start-up, memory and per-step data time for N tissue maps and M masks.

    python benchmarks/data_scale.py [--data ../shared/data] [--maps 20 200 2000] [--masks 100 1449]
                                    [--steps 20] [--work runs/data_scale] [--folder-baseline] [--json OUT]

Setup (once, cached in ``--work``): the 20 SynthSeg label maps of ``../shared/data`` resliced to 2 mm (to keep
the disk small) and packed with the FreeSurfer mapping at 2 mm, then repeated under new names up to N maps (the
array files hard-linked); the 1449 SOOP masks packed with their boxes (``--crop-masks``), the first M of them
per store. Each (N, M) runs in a fresh process that measures, as ``train/run.py --store`` would meet them:

- start-up: open the store, list the maps, build the one lesion bank (both splits), make the first batch;
- per-step data time (steps 1..K, the inputs read ahead as in training): the wait for the step's map and its
  copy to the device, plus the lesion masks placed on the map's grid (``MaskBank.paste``), against a
  quick-preset training step on a pre-made batch timed in the same process; the lesion's synthesis (Soft-CP,
  fading, clipping: ``LesionSource.sample`` as a whole) and the whole generator call are reported beside it;
- peak host RSS of the process, and what the device holds: the resident map's bytes (one map, whatever N) and
  the lesion bank's device bytes (0: the bank lives on the host, a mask goes up when pasted).

``--folder-baseline`` adds the same start-up from the NIfTI folders (N = 20 maps, M = all masks): the check
that training runs first, and the lesion bank read from the files. Never pass/fail.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_utils import git_sha  # noqa: E402



# --------------------------------------------------------------------------------------------------- setup
def _base_store(data: Path, work: Path) -> Path:
    """20 SynthSeg maps at 2 mm and all SOOP masks, packed once."""
    from synthgen import io
    from synthgen.data import pack
    base = work / "base"
    if (base / "index.json").is_file():
        return base
    maps = work / "maps_2mm"
    maps.mkdir(parents=True, exist_ok=True)
    for f in sorted((data / "synthseg_label_maps").glob("training_seg_*.nii.gz")):
        out = maps / f.name
        if not out.exists():
            labels, affine = io.load_nifti(f)
            labels, affine = io.to_ras_1mm(np.asarray(labels, np.int16), affine, order=0, voxel_size=2.0)
            io.save_nifti(out, labels, affine, dtype=np.int16)
    print("packing 20 maps at 2 mm and the SOOP masks (once)...", flush=True)
    pack(base, tissue_maps=maps, label_map="freesurfer", voxel_size=2.0, progress=False)
    pack(base, lesions=data / "lesions_soop_mni", pattern="*_lesion.nii.gz", crop_masks=True, progress=False)
    return base


def _store(base: Path, work: Path, n_maps: int, n_masks: int) -> Path:
    """A store with ``n_maps`` tissue maps (the base maps under new names, hard-linked) and ``n_masks`` masks."""
    out = work / f"store_{n_maps}_{n_masks}"
    if (out / "index.json").is_file():
        return out
    index = json.loads((base / "index.json").read_text())
    maps = sorted(index["sections"]["tissue_maps"].items())
    masks = sorted(index["sections"]["lesions"].items())[:n_masks]
    new = {"tissue_maps": {}, "lesions": dict(masks), "real": {}}
    for section in ("tissue_maps", "lesions"):
        (out / section).mkdir(parents=True, exist_ok=True)
    for i in range(n_maps):
        name, entry = maps[i % len(maps)]
        copy = json.loads(json.dumps(entry))
        key = f"{name}_r{i // len(maps):03d}"
        copy["files"] = {"data": f"tissue_maps/{key}.npy"}
        target = out / copy["files"]["data"]
        if not target.exists():
            os.link(base / entry["files"]["data"], target)
        new["tissue_maps"][key] = copy
    for _, entry in masks:
        target = out / entry["files"]["data"]
        if not target.exists():
            os.link(base / entry["files"]["data"], target)
    index["sections"] = new
    (out / "index.json").write_text(json.dumps(index))
    return out


# --------------------------------------------------------------------------------------------- measurement
def _measure(store: str, steps: int, voxel_size: float, crop: int) -> dict:
    """Run in a fresh process: start-up, per-step data time, memory (see the module docstring)."""
    import torch
    torch.set_num_threads(2)
    import synthgen
    from synthgen.config import GeneratorConfig
    from synthgen.data.sources import tissue_maps
    from synthgen.data.store import open_store
    from synthgen.data.training import TrainingBatches, data_labels, training_lesions
    from synthgen.train.config import quick_preset
    from synthgen.train.losses import DiceCE
    from synthgen.train.model import build_unet
    device = torch.device("cpu")
    t0 = time.perf_counter()
    opened = open_store(store)
    gen_cfg = GeneratorConfig(crop=(crop,) * 3, voxel_size=voxel_size, labels=data_labels(opened))
    maps = tissue_maps(opened, voxel_size=voxel_size)
    train_src, val_src = training_lesions(quick_preset().data.lesion, opened)
    t_index = time.perf_counter()
    data = TrainingBatches(synthgen.SynthGenerator(gen_cfg), maps, seed=0, batch_size=1, device=device,
                           lesions=train_src, prefetch=2).start(0, steps + 1)
    lesion_ms, delivered_ms, paste_ms = [], [], []
    sample, paste = train_src.sample, train_src.bank.paste

    def timed_sample(*a, **k):
        t = time.perf_counter()
        paste_ms.append(0.0)
        out = sample(*a, **k)
        lesion_ms.append(1e3 * (time.perf_counter() - t))
        return out

    def timed_paste(*a, **k):          # the mask delivered onto the map's grid (the rest is Soft-CP and fading)
        t = time.perf_counter()
        out = paste(*a, **k)
        paste_ms[-1] += 1e3 * (time.perf_counter() - t)
        return out
    train_src.sample, train_src.bank.paste = timed_sample, timed_paste
    take = data._take

    def timed_take(step):
        t = time.perf_counter()
        out = take(step)
        if out[0] == "map":            # the copy to the device belongs to delivery
            out = (out[0], out[1], out[2].to(device), out[3])
        delivered_ms.append(1e3 * (time.perf_counter() - t))
        return out
    data._take = timed_take
    first = data(0)
    t_first = time.perf_counter()
    synth_ms = []
    for s in range(1, steps + 1):
        t = time.perf_counter()
        data(s)
        synth_ms.append(1e3 * (time.perf_counter() - t))
    data.close()
    # a quick-preset training step on a pre-made batch, in this process (the 5 % yardstick)
    q = quick_preset()
    model = build_unet(**q.model_kwargs())
    opt = torch.optim.AdamW(model.parameters(), lr=q.optim.lr)
    loss_fn = DiceCE.from_config(q.optim)
    image = torch.randn(1, 1, *q.generator.crop)
    target = torch.randint(0, 2, (1, *q.generator.crop), dtype=torch.uint8)
    step_ms = []
    for i in range(8):
        t = time.perf_counter()
        loss = loss_fn(model(image), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:
            step_ms.append(1e3 * (time.perf_counter() - t))
    resident = data._resident[1] if data._resident else None
    per_step = [a + b for a, b in zip(delivered_ms[1:], paste_ms[1:])]
    return {
        "maps": len(maps), "train_masks": len(train_src.bank), "holdout_masks": len(val_src.bank), "index_s": t_index - t0, "startup_s": t_first - t0,
        "first_batch_shape": list(first[0].shape),
        "delivery_ms": statistics.median(delivered_ms[1:]), "paste_ms": statistics.median(paste_ms[1:]),
        "lesion_ms": statistics.median(lesion_ms[1:]),
        "data_ms": statistics.median(per_step), "data_ms_p90": float(np.percentile(per_step, 90)),
        "synthesis_ms": statistics.median(synth_ms), "quick_step_ms": statistics.median(step_ms),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "device_map_mb": (resident.numel() * resident.element_size() / 2 ** 20) if resident is not None else 0.0,
        "device_bank_mb": 0.0, "map_reads": maps.reads,
    }


def _folder_baseline(data: Path, work: Path) -> dict:
    """Start-up from the NIfTI folders: the check training runs first, then the lesion bank from the files."""
    from synthgen.config import LesionConfig
    from synthgen.data import check
    from synthgen.data.training import training_lesions
    t0 = time.perf_counter()
    problems = check.check_folders(tissue_maps=work / "maps_2mm", label_map="freesurfer", progress=False)
    problems += check.check_folders(lesions=data / "lesions_soop_mni", pattern="*_lesion.nii.gz", progress=False)
    t1 = time.perf_counter()
    train_src, val_src = training_lesions(LesionConfig(mask_pattern="*_lesion.nii.gz"),
                                          folder=data / "lesions_soop_mni")
    t2 = time.perf_counter()
    return {"check_s": t1 - t0, "bank_s": t2 - t1, "masks": len(train_src.bank) + len(val_src.bank),
            "errors": sum(p.severity == "error" for p in problems)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--maps", type=int, nargs="+", default=[20, 200, 2000])
    p.add_argument("--masks", type=int, nargs="+", default=[100, 1449])
    p.add_argument("--steps", type=int, default=20, help="steps timed per configuration")
    p.add_argument("--crop", type=int, default=48, help="generator crop (voxels) of the timed steps")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "data_scale", help="cached stores")
    p.add_argument("--folder-baseline", action="store_true", help="also time start-up from the NIfTI folders")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.child, args.steps, 2.0, args.crop)))
        return 0
    if not (args.data / "synthseg_label_maps").is_dir() or not (args.data / "lesions_soop_mni").is_dir():
        print(f"{args.data}: SynthSeg label maps and SOOP masks are needed; skipping", file=sys.stderr)
        return 0
    base = _base_store(args.data, args.work)
    rows = []
    for n in args.maps:
        for m in args.masks:
            store = _store(base, args.work, n, m)
            out = subprocess.run([sys.executable, __file__, "--child", str(store), "--steps", str(args.steps),
                                  "--crop", str(args.crop)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row.update(n_maps=n, n_masks=m)
            rows.append(row)
            print(f"N={n} M={m}: start-up {row['startup_s']:.2f} s, data {row['data_ms']:.1f} ms/step", flush=True)
    print(f"\n# data at scale: {platform.machine()}, {os.cpu_count()} cores, git {git_sha()}, maps 2 mm "
          f"(SynthSeg, FreeSurfer mapping), masks SOOP, {args.steps} steps at {args.crop}^3\n")
    print("| N maps | M masks | index + bank (s) | start-up to 1st batch (s) | peak RSS (MB) | device: map (MB) / "
          "bank (MB) | data ms/step: map + masks (p90) | share of a quick step | lesion synthesis / generator (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n_maps']} | {r['n_masks']} | {r['index_s']:.2f} | {r['startup_s']:.2f} | {r['peak_rss_mb']:.0f} "
              f"| {r['device_map_mb']:.1f} / {r['device_bank_mb']:.0f} | {r['delivery_ms']:.1f} + {r['paste_ms']:.1f} "
              f"({r['data_ms_p90']:.1f}) | {100 * r['data_ms'] / r['quick_step_ms']:.1f} % of {r['quick_step_ms']:.0f} ms "
              f"| {r['lesion_ms']:.1f} / {r['synthesis_ms']:.1f} |")
    result = {"rows": rows}
    if args.folder_baseline:
        fb = _folder_baseline(args.data, args.work)
        result["folder_baseline"] = fb
        print(f"\nfrom the folders (20 maps, {fb['masks']} masks): check {fb['check_s']:.1f} s + lesion bank "
              f"{fb['bank_s']:.1f} s")
    if args.json:
        from synthgen.io import atomic_path
        result.update(machine=platform.machine(), cores=os.cpu_count(), git=git_sha())
        with atomic_path(args.json, ".json") as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
