"""Per-item load time: NIfTI decode (+ RAS 1 mm reslice) versus a packed store (memory map + full read).

    python benchmarks/data_loading.py [--data ../shared/data] [--items 5] [--repeats 3] [--out results.json]
                                      [--mask-section N]

Uses the real files in ``<repo>/../shared/data`` (lesion masks, FreeSurfer label maps); skips when absent.
Packs them into a temporary store first. Times are medians over repeats, warm page cache (the store was just
written, the NIfTI files were just read): the difference is decoding and reslicing, not disk speed.
``--mask-section N`` also packs the first N SOOP masks (``--crop-masks``) into one store and reports the lesion
section as training meets it: its bytes on disk beside the gzipped NIfTI files, and per mask the read of its box
as the lesion bank pastes it (``store_mask_items`` -> a writable uint8 box: memory map plus copy or bit decode).
It uses only the public store API, so the same script measures an older checkout (run it from that checkout).
Never pass/fail: prints a markdown table and writes JSON rows with the machine and versions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_utils import git_sha  # noqa: E402

from synthgen.data import open_store, pack, read_mask, read_tissue_map  # noqa: E402

CASES = {
    # name: (folder, glob, section, reader for the NIfTI path, pack kwargs)
    "lesion mask (SOOP, 157x189x136 LAS)": ("lesions_soop_mni", "bwsrsub-*_lesion.nii.gz", "lesions",
                                           lambda p: read_mask(p), {}),
    "lesion mask (SOOP, --crop-masks store)": ("lesions_soop_mni", "bwsrsub-*_lesion.nii.gz", "lesions",
                                               lambda p: read_mask(p), {"crop_masks": True}),
    "lesion mask (LESYMAP, 181x217x181 f32)": ("lesions_lesymap_mni", "Subject_*.nii.gz", "lesions",
                                              lambda p: read_mask(p), {}),
    "label map (SynthSeg 256^3 LIA, mapped)": ("synthseg_label_maps", "training_seg_*.nii.gz", "tissue_maps",
                                              lambda p: read_tissue_map(p, "freesurfer").data,
                                              {"label_map": "freesurfer"}),
}


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)



def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def mask_section(data: Path, n: int, tmp: Path, repeats: int) -> dict:
    """Bytes and per-mask box reads of the lesion section of a store of the first ``n`` SOOP masks."""
    from synthgen.lesions.masks import store_mask_items
    files = sorted((data / "lesions_soop_mni").glob("bwsrsub-*_lesion.nii.gz"))[:n]
    src, store_dir = tmp / "section_src", tmp / "section_store"
    src.mkdir()
    for f in files:
        (src / f.name).symlink_to(f)
    t0 = time.perf_counter()
    pack(store_dir, lesions=src, crop_masks=True, progress=False, check=False)
    pack_s = time.perf_counter() - t0
    open_ms, read_ms, voxels = [], [], 0
    for _, _, load in store_mask_items(store_dir):
        t = time.perf_counter()
        box = load()[0]                       # once per bank: the memory map of the item
        open_ms.append(1e3 * (time.perf_counter() - t))
        read_ms.append(_median_ms(lambda: np.array(box, dtype=np.uint8), repeats))   # per paste
        voxels += int(np.prod(box.shape))
    return {"masks": len(files), "nifti_bytes": sum(f.stat().st_size for f in files),
            "section_bytes": _folder_bytes(store_dir / "lesions"), "box_voxels": voxels,
            "open_ms_median": statistics.median(open_ms), "read_ms_median": statistics.median(read_ms),
            "read_ms_p90": float(np.percentile(read_ms, 90)), "read_s_total": sum(read_ms) / 1e3, "pack_s": pack_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="shared data folder")
    ap.add_argument("--items", type=int, default=5, help="files per case")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--mask-section", type=int, default=0, metavar="N",
                    help="also measure the lesion section of a store of the first N SOOP masks (1449: all)")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"skipped: {data} is absent")
        return 0
    rows = []
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "numpy": np.__version__, "nibabel": nib.__version__,
               "git": git_sha()}
    with tempfile.TemporaryDirectory() as tmp:
        for case, (folder, pattern, section, reader, kw) in CASES.items():
            files = sorted((data / folder).glob(pattern))[: args.items]
            if not files:
                continue
            src = Path(tmp) / f"src_{section}_{folder}_{len(kw)}"
            src.mkdir()
            for f in files:   # symlinks: pack only these files, read in place
                (src / f.name).symlink_to(f)
            store_dir = Path(tmp) / f"store_{folder}_{len(kw)}"
            t0 = time.perf_counter()
            pack(store_dir, **{section: src}, progress=False, check=False, **kw)
            pack_s = time.perf_counter() - t0
            store = open_store(store_dir)[section]
            for i, f in enumerate(files):
                raw = _median_ms(lambda: np.asanyarray(nib.load(str(f)).dataobj), args.repeats)
                full = _median_ms(lambda: reader(f), args.repeats)
                mm = _median_ms(lambda: np.array(store[i].data), args.repeats)
                rows.append({"case": case, "file": f.name, "nifti_decode_ms": raw, "nifti_ras_1mm_ms": full,
                             "store_ms": mm, "nifti_bytes": f.stat().st_size,
                             "store_bytes": (store_dir / store[i].meta["files"]["data"]).stat().st_size,
                             "pack_s_per_item": pack_s / len(files), **machine})
    print(f"machine: {machine}")
    print("| case | NIfTI decode ms | NIfTI -> RAS 1 mm ms | store read ms | speed-up | NIfTI MB | store MB |")
    print("|---|---|---|---|---|---|---|")
    for case in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == case]
        dec = statistics.median(r["nifti_decode_ms"] for r in rs)
        full = statistics.median(r["nifti_ras_1mm_ms"] for r in rs)
        st = statistics.median(r["store_ms"] for r in rs)
        nb = statistics.median(r["nifti_bytes"] for r in rs) / 1e6
        sb = statistics.median(r["store_bytes"] for r in rs) / 1e6
        print(f"| {case} | {dec:.1f} | {full:.1f} | {st:.2f} | {full / max(st, 1e-9):.0f}x | {nb:.2f} | {sb:.2f} |")
    result = {"rows": rows}
    if args.mask_section > 0 and (data / "lesions_soop_mni").is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            sec = mask_section(data, args.mask_section, Path(tmp), args.repeats)
        result["mask_section"] = {**sec, **machine}
        print(f"\nlesion section, {sec['masks']} SOOP masks (--crop-masks): {sec['section_bytes'] / 1e6:.1f} MB on disk "
              f"for {sec['nifti_bytes'] / 1e6:.1f} MB of NIfTI ({sec['box_voxels'] / 1e6:.0f} M box voxels); "
              f"open {sec['open_ms_median']:.3f} ms, box read {sec['read_ms_median']:.3f} ms per mask (p90 {sec['read_ms_p90']:.3f}), "
              f"{sec['read_s_total']:.2f} s for all; pack {sec['pack_s']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
