"""Generator throughput: samples/s per size and provider, side by side with the libraries people use today.

    python benchmarks/throughput.py --device cpu --sizes 96 128 [--batch 1] [--repeats 3] [--json out.json]
    python benchmarks/throughput.py --device cuda --sizes 96 128 192 --batch 1 4 --backends torch triton cuda \
        [--work-dtypes float32 float16]

Providers: ``synthgen`` (this project, batch B per call, once per ``--backends`` entry; SYNTHGEN_BACKEND is
set for the row), ``synthgen+lesions`` (the same with procedural stroke lesions, as training runs it by default),
``synthgen+masks`` (with lesion masks from a bank: the ``--masks`` folder, e.g. SOOP, or else 24 procedural
masks drawn once; as training runs it with ``--lesions``); the lesion rows are on by default, and their
``lesion %`` column is the lesion stage's share of the sample; and when installed the equivalent chain in
``cornucopia`` (SynthFromLabelTransform: affine+elastic, GMM, bias, gamma, smoothing, low-res, noise, quantile),
``torchio`` and ``monai`` (affine, elastic, label->GMM image, bias, gamma, blur, anisotropy, noise, percentile
rescale, flips, z-normalisation). Peers get the tissue map already cropped to the output size (less work than
ours, which crops through the warp). Timings: median and p20-p80 over repeats after one warm-up, wall clock
with device synchronisation. Each synthgen row also gets the roofline floor of benchmarks/roofline.py
(max(bytes / measured copy bandwidth, flop / --peak-tflops) per sample) and, on CUDA, its peak extra memory per
sample against the size of its outputs. The stage columns are the mean of up to 5 profiled batches after the
timed ones. Numbers compare only within one run on one machine. Never pass/fail.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_utils import git_sha  # noqa: E402

import roofline  # noqa: E402
import synthgen  # noqa: E402
from synthgen.config import GeneratorConfig  # noqa: E402
from synthgen.data.default_map import default_tissue_map  # noqa: E402
from synthgen.io import atomic_path  # noqa: E402
from synthgen.lesions import LesionSource  # noqa: E402


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats):
    fn()                                  # warm-up (allocations, kernel compilation)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _centre_crop(tissue: torch.Tensor, size: int) -> torch.Tensor:
    """Crop (or zero-pad) the spatial axes of (1, 1, X, Y, Z) labels to size^3 about the centre."""
    out = torch.zeros(1, 1, size, size, size, dtype=tissue.dtype, device=tissue.device)
    src, dst = [], []
    for n in tissue.shape[2:]:
        s0 = max((n - size) // 2, 0)
        d0 = max((size - n) // 2, 0)
        m = min(n, size)
        src.append(slice(s0, s0 + m))
        dst.append(slice(d0, d0 + m))
    out[(..., *dst)] = tissue[(..., *src)]
    return out


def synthgen_provider(tissue, size, batch, device, work_dtype="float32", lesions=None, affine=None):
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=(size, size, size), work_dtype=work_dtype), lesions=lesions)
    state = {"index": 0}

    def run():
        gen(tissue, seed=0, index=state["index"], batch_size=batch, affine=affine)
        state["index"] += batch
    return run, gen


def mask_bank(tissue, affine, folder=None, pattern="*_lesion.nii.gz", n=24):
    """Lesion masks for the ``synthgen+masks`` rows: a folder's (read once), else ``n`` procedural masks drawn on
    the map and kept as a bank in world space (the same placement path either way)."""
    from synthgen.config import LesionConfig
    if folder:
        return LesionSource.from_folder(folder, pattern=pattern, config=LesionConfig(healthy_probability=0.0),
                                        progress=False)
    procedural = LesionSource.procedural(affine, LesionConfig(healthy_probability=0.0))
    masks, _ = procedural.sample_masks(tissue[:1].cpu().expand(n, -1, -1, -1, -1), list(range(n)))
    return LesionSource.from_tensor(masks, masks_affine=affine, config=LesionConfig(healthy_probability=0.0))


def cornucopia_provider(tissue, size, device):
    import cornucopia as cc
    labels = _centre_crop(tissue, size)[0].long()          # (1, X, Y, Z) label map, channel first
    synth = cc.SynthFromLabelTransform(order=3)

    def run():
        synth(labels)
    return run


def torchio_provider(tissue, size, device):
    import torchio as tio
    labels = _centre_crop(tissue, size)[0].cpu()
    subject = tio.Subject(label=tio.LabelMap(tensor=labels.to(torch.int16)))
    chain = tio.Compose([
        tio.RandomAffine(scales=0.15, degrees=15), tio.RandomElasticDeformation(),
        tio.RandomLabelsToImage(label_key="label", image_key="image"),
        tio.RandomBiasField(), tio.RandomGamma(), tio.RandomBlur(std=(0, 1.3)),
        tio.RandomAnisotropy(downsampling=(1, 8)), tio.RandomNoise(std=(0, 25)), tio.RandomBlur(std=(0, 0.6)),
        tio.RescaleIntensity(out_min_max=(0, 1), percentiles=(1, 99)), tio.RandomFlip(axes=(0, 1, 2)),
        tio.ZNormalization(),
    ])

    def run():
        chain(subject)
    return run


def monai_provider(tissue, size, device):
    import monai.transforms as mt
    labels = _centre_crop(tissue, size)[0].to(device)
    geo = mt.Compose([mt.RandAffine(prob=1, rotate_range=(0.26,) * 3, scale_range=(0.15,) * 3, mode="nearest"),
                      mt.Rand3DElastic(sigma_range=(5, 7), magnitude_range=(0, 300), prob=1, mode="nearest")])
    inten = mt.Compose([
        mt.RandBiasField(prob=1), mt.RandAdjustContrast(prob=1, gamma=(0.5, 2)),
        mt.RandGaussianSmooth(prob=1, sigma_x=(0, 1.3), sigma_y=(0, 1.3), sigma_z=(0, 1.3)),
        mt.RandSimulateLowResolution(prob=1, zoom_range=(0.125, 1)), mt.RandRicianNoise(prob=1, std=25),
        mt.RandGaussianSmooth(prob=1, sigma_x=(0, 0.6), sigma_y=(0, 0.6), sigma_z=(0, 0.6)),
        mt.ScaleIntensityRangePercentiles(1, 99, 0, 1, clip=True), mt.RandFlip(prob=0.5, spatial_axis=0),
        mt.RandFlip(prob=0.5, spatial_axis=1), mt.RandFlip(prob=0.5, spatial_axis=2), mt.NormalizeIntensity(),
    ])

    def run():
        lab = geo(labels.float()).long()
        mu, sigma = torch.rand(16, device=device) * 255, torch.rand(16, device=device) * 16
        image = mu[lab] + sigma[lab] * torch.randn(lab.shape, device=device)   # MONAI has no label->GMM transform
        inten(image)
    return run


PEERS = {"cornucopia": cornucopia_provider, "torchio": torchio_provider, "monai": monai_provider}


def _versions():
    out = {"python": platform.python_version(), "torch": torch.__version__, "synthgen": synthgen.__version__}
    for name in ("cornucopia", "torchio", "monai", "triton"):
        try:
            out[name] = __import__(name).__version__
        except Exception:      # not installed, or broken: the table says so
            pass
    return out



def device_name(device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


@contextmanager
def forced_backend(name: str | None):
    """Set SYNTHGEN_BACKEND for the duration (None leaves the dispatcher's own choice)."""
    old = os.environ.get("SYNTHGEN_BACKEND")
    if name is not None:
        os.environ["SYNTHGEN_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SYNTHGEN_BACKEND", None)
        else:
            os.environ["SYNTHGEN_BACKEND"] = old


def floor_ms(gen, tissue, size: int, batch: int, bandwidth: float, peak_tflops: float) -> tuple[float, float]:
    """Roofline floor per sample (ms) and bytes moved per sample, from benchmarks/roofline.py's pass model."""
    params = gen.sample_params(tissue.shape, seed=0, index=0, batch=batch)
    passes = roofline.passes(params, (size,) * 3, lesion=gen.lesions is not None,
                             work_bytes=2 if gen.config.work_dtype == "float16" else 4)
    voxels = size ** 3
    nbytes = voxels * sum(p[1] for p in passes)
    flop = voxels * sum(p[2] for p in passes)
    return 1e3 * max(nbytes / bandwidth, flop / (peak_tflops * 1e12)), nbytes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="crop sizes (default cpu: 96 128; cuda: 96 128 192)")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="synthgen samples per call (default cpu: 1; cuda: 1 8)")
    parser.add_argument("--backends", nargs="+", default=None, choices=("torch", "triton", "cuda"),
                        help="synthgen backends to time (default cpu: the dispatcher's choice; cuda: triton cuda)")
    parser.add_argument("--work-dtypes", nargs="+", default=None, choices=("float32", "float16"),
                        help="GeneratorConfig.work_dtype of the fast path (default cpu: float32; cuda: both)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per configuration (default cpu 3, cuda 20)")
    parser.add_argument("--providers", nargs="+", default=None,
                        help="synthgen cornucopia torchio monai (peers run only when installed)")
    parser.add_argument("--peak-tflops", type=float, default=67.0,
                        help="fp32 peak for the roofline floor (H100 SXM: 67; meaningless on a CPU)")
    parser.add_argument("--json", default=None, help="write the rows and the machine description here")
    parser.add_argument("--masks", default=None, help="lesion masks for the synthgen+masks rows (e.g. SOOP); "
                                                      "default: 24 procedural masks drawn once")
    args = parser.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    sizes = args.sizes or ([96, 128, 192] if cuda else [96, 128])
    repeats = args.repeats or (20 if cuda else 3)
    batches = args.batch or ([1, 8] if cuda else [1])
    backends = args.backends or (["triton", "cuda"] if cuda else [None])
    work_dtypes = args.work_dtypes or (["float32", "float16"] if cuda else ["float32"])
    tissue, affine = default_tissue_map(device=args.device, with_affine=True)
    # "synthgen+lesions" / "+masks": the same chain with procedural lesions or a mask bank (peers have none)
    providers = args.providers or ["synthgen", "synthgen+lesions", "synthgen+masks", *PEERS]
    bank = mask_bank(tissue, affine, args.masks) if "synthgen+masks" in providers else None
    bandwidth = roofline.bandwidth(args.device, nbytes=(1 << 30) if cuda else (1 << 28))
    rows = []
    for size in sizes:
        for provider in providers:
            if provider == "synthgen":
                configs = [(b, k, w) for b in backends for k in batches for w in work_dtypes
                           if not (w == "float16" and b in ("torch", "cuda"))]      # float16 work: Triton only
            elif provider in ("synthgen+lesions", "synthgen+masks"):
                configs = [(backends[0], k, "float32") for k in batches]
            else:
                configs = [(None, 1, None)]
            for backend, batch, work in configs:
                row = {"provider": provider, "backend": backend or "", "size": size, "batch": batch,
                       "device": args.device, "work_dtype": work or ""}
                try:
                    if provider.startswith("synthgen"):
                        lesions = {"synthgen+lesions": LesionSource.procedural(affine),
                                   "synthgen+masks": bank}.get(provider)
                        run, gen = synthgen_provider(tissue, size, batch, args.device, work, lesions, affine)
                    else:
                        run, gen = PEERS[provider](tissue, size, args.device), None
                except ImportError as err:
                    print(f"skip {provider}: not installed ({err})", file=sys.stderr)
                    break
                if cuda:
                    torch.cuda.synchronize(args.device)
                    before = torch.cuda.memory_allocated(args.device)
                    torch.cuda.reset_peak_memory_stats(args.device)
                try:
                    with forced_backend(backend):
                        times = _time(run, args.device, repeats)
                except Exception as err:            # a peer or a backend failing must not lose the other rows
                    print(f"skip {provider}{f'[{backend}]' if backend else ''} at {size}: "
                          f"{type(err).__name__}: {err}", file=sys.stderr)
                    continue
                per_sample = [t / batch for t in times]
                q = statistics.quantiles(per_sample, n=5) if len(per_sample) > 1 else per_sample * 4
                row.update(ms_per_sample=1e3 * statistics.median(per_sample), ms_p20=1e3 * q[0], ms_p80=1e3 * q[-1],
                           samples_per_s=1.0 / statistics.median(per_sample))
                if cuda:
                    extra = (torch.cuda.max_memory_allocated(args.device) - before) / batch
                    row["peak_mem_mb"] = torch.cuda.max_memory_allocated(args.device) / 2 ** 20
                    row["extra_mem_per_sample_vs_outputs"] = extra / (size ** 3 * 5)   # float32 image + uint8 target
                if gen is not None:
                    row["floor_ms"], row["bytes_per_sample"] = floor_ms(gen, tissue, size, batch, bandwidth,
                                                                        args.peak_tflops)
                    row["ratio_to_floor"] = row["ms_per_sample"] / row["floor_ms"]
                    # stages averaged over a few more batches: a lesion's cost varies with its drawn size
                    gen.profile, gen.stage_ms, profiled = True, {}, min(repeats, 5)
                    with forced_backend(backend):
                        for _ in range(profiled):
                            run()
                    row["stage_ms"] = {k: round(v / batch / profiled, 2) for k, v in gen.stage_ms.items()}
                    if "lesion" in row["stage_ms"] and sum(row["stage_ms"].values()) > 0:
                        row["lesion_share"] = row["stage_ms"]["lesion"] / sum(row["stage_ms"].values())
                rows.append(row)
                print(f"{provider:>10}{f'[{backend}]' if backend else ''} {size}^3 batch {batch}: "
                      f"{row['ms_per_sample']:.1f} ms/sample", file=sys.stderr)
    # ratios against the fastest peer of the same size, in this run
    for row in rows:
        peers = [r["ms_per_sample"] for r in rows
                 if r["size"] == row["size"] and not r["provider"].startswith("synthgen")]
        if row["provider"] == "synthgen" and peers:
            row["speedup_vs_fastest_peer"] = min(peers) / row["ms_per_sample"]
    print(f"\ndevice: {device_name(args.device)}; torch {torch.__version__}; git {git_sha()}; "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s\n")
    print("| provider | size | batch | ms/sample (p20-p80) | samples/s | vs fastest peer | x floor | extra mem / outputs "
          "| lesion % | stages (ms/sample) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r.get("stage_ms", {}).items())
        speed = f"{r['speedup_vs_fastest_peer']:.1f}x" if "speedup_vs_fastest_peer" in r else ""
        floor = f"{r['ratio_to_floor']:.1f}" if "ratio_to_floor" in r else ""
        mem = f"{r['extra_mem_per_sample_vs_outputs']:.1f}" if "extra_mem_per_sample_vs_outputs" in r else ""
        tags = ",".join(t for t in (r["backend"], "fp16 work" if r["work_dtype"] == "float16" else "") if t)
        name = f"{r['provider']}[{tags}]" if tags else r["provider"]
        print(f"| {name} | {r['size']}^3 | {r['batch']} | {r['ms_per_sample']:.1f} "
              f"({r['ms_p20']:.1f}-{r['ms_p80']:.1f}) | {r['samples_per_s']:.2f} | {speed} | {floor} | {mem} | "
              f"{100 * r['lesion_share']:.0f} % | {stages} |" if "lesion_share" in r else
              f"({r['ms_p20']:.1f}-{r['ms_p80']:.1f}) | {r['samples_per_s']:.2f} | {speed} | {floor} | {mem} | | "
              f"{stages} |")
    if args.json:
        out = {"device": device_name(args.device), "versions": _versions(), "git_sha": git_sha(),
               "repeats": repeats, "bandwidth_gbs": bandwidth / 1e9, "rows": rows}
        with atomic_path(args.json, ".json") as tmp:
            Path(tmp).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
