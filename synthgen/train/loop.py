"""The training loop: config -> data on the device -> model and optimiser -> loop (validate, checkpoint, log).

Each step synthesises its batch on the training device, in this process, under ``no_grad`` (no data
workers): sample ``i`` of step ``n`` on rank ``r`` is sample ``n * batch + i`` of stream ``seed + r``, so the
data need no saved state and resume is exact. Then bf16-autocast forward (CUDA) -> Dice + CE -> backward ->
grad-norm clip -> AdamW step -> poly lr step. Every ``val_every`` steps rank 0 scores a fixed held-out
synthetic set (and real scans when given); every ``ckpt_every`` steps, at the end and on SIGINT/SIGTERM (after
the current step) a checkpoint is written atomically. Under torchrun every rank trains (DDP), only rank 0
writes. Paper: Chalcroft et al., arXiv:2404.01946, section 2.

Bad input stops a run before it starts (the data by ``synthgen.data.check``, the run folder writable, a finished run
not overwritten without ``overwrite``); a run whose loss or weights stop being finite stops with
:class:`TrainingDiverged` and never saves them (the last good checkpoint is kept); a run stopped by a signal reports
it (``train/run.py`` exits 128 + N). Temporary files of a killed writer are removed on the next start.
"""
from __future__ import annotations

import csv
import functools
import io as _io
import json
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

import synthgen
from synthgen.data.prefetch import Prefetcher
from synthgen.data.sources import real_scans, tissue_maps
from synthgen.data.training import TrainingBatches, training_lesions, validation_set
from synthgen import validate
from synthgen.io import atomic_path, remove_stale_temporaries
from synthgen.train import plots
from synthgen.train.checkpoint import LAST, PREV, load_resume_checkpoint, rng_state, save_checkpoint, set_rng_state
from synthgen.train.config import TrainConfig
from synthgen.train.losses import DiceCE
from synthgen.train.model import build_unet, n_params
from synthgen.train.validate import REAL_CLASSES, evaluate

# ----------------------------------------------------------------------------------------------- devices


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite: training stopped, nothing non-finite was saved."""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; other names as given (:func:`synthgen.validate.resolve_device`).

    Raises:
        ValueError: CUDA asked for but not available, or not a device name.
    """
    return validate.resolve_device(name)


def amp_dtype(cfg: TrainConfig, device: torch.device):
    """bf16 on CUDA when the card supports it (``amp`` "auto"/"bf16"), None (fp32) otherwise."""
    if cfg.optim.amp == "off" or device.type != "cuda":
        return None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if cfg.optim.amp == "bf16":
        raise ValueError(f"`optim.amp` must be 'auto' or 'off' on a card without bf16, got 'bf16' on "
                         f"{torch.cuda.get_device_name(device)}")
    return None


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; joins the torchrun process group when ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, resolve_device(device_name)
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


# -------------------------------------------------------------------------------------------------- data


def check_data(cfg: TrainConfig) -> None:
    """Validate every user folder before training; raise with all problems listed.

    Raises:
        ValueError: any file problem of severity "error" (the message lists every one, naming the files).
    """
    d = cfg.data
    if not (d.tissue_maps or d.lesions or d.real or d.real_val):
        return
    from synthgen.data import check
    vox = cfg.generator.voxel_size
    problems = check.check_folders(tissue_maps=d.tissue_maps, real=d.real, label_map=d.label_map, progress=False,
                                   voxel_size=vox)
    if d.lesions:
        problems += check.check_folders(lesions=d.lesions, pattern=d.lesion.mask_pattern, progress=False)
    if d.real_val:
        problems += check.check_folders(real=d.real_val, progress=False, voxel_size=vox)
    if check.has_errors(problems):
        raise ValueError("training data have problems:\n" + check.format_problems(problems))
    for p in problems:
        print(p, file=sys.stderr)


def check_grids(cfg: TrainConfig, store) -> None:
    """The maps not read from folders (a packed store's, or the bundled one) must reslice to the training grid within
    the memory limit, checked from their index / header before any work (:func:`synthgen.validate.check_reslice`).

    Raises:
        ValueError: naming the map and the voxel sizes.
    """
    vox = cfg.generator.voxel_size
    if store is not None:
        for section in ("tissue_maps", "real"):
            for name, entry in store.index["sections"][section].items():
                validate.check_reslice(entry["shape"][-3:], entry["affine"], vox, f"{store.root}/{name} (packed)")
    elif not (cfg.data.tissue_maps or cfg.baseline):
        import nibabel as nib
        from synthgen.data.default_map import default_tissue_map_path
        img = nib.load(str(default_tissue_map_path()))
        validate.check_reslice(img.shape, img.affine, vox, f"{default_tissue_map_path()} (the bundled tissue map)")


def open_data_store(cfg: TrainConfig):
    """The packed store of ``data.store`` (a :class:`synthgen.data.store.PackedStore`), or None.

    Raises:
        FileNotFoundError: ``data.store`` is not a packed store.
    """
    if not cfg.data.store:
        return None
    from synthgen.data.store import open_store
    return open_store(cfg.data.store)


def lesion_vs_rest(logits: torch.Tensor) -> torch.Tensor:
    """Collapse C-class logits to [not lesion, lesion] (log-sum-exp of the non-lesion classes).

    A real scan's target knows only lesion vs the rest, so a 6-class network is scored on that marginal: the
    probability of "not lesion" is the sum of the tissue classes' probabilities, whatever their split.
    """
    return torch.stack([torch.logsumexp(logits[:, :-1].float(), 1), logits[:, -1].float()], 1)


def load_real_val(cfg: TrainConfig, device: torch.device) -> list:
    """Real validation scans and masks as ``(image (1, 1, ...), target (1, ...))`` on ``device``.

    Scans are resliced to ``generator.voxel_size``, histogram-normalised and z-scored like ``train.predict``;
    the target is the lesion mask (class ``num_classes - 1``; tissue classes are not known for real scans).
    """
    from synthgen.data import check
    from synthgen.data.tissue import read_mask, read_scan
    from synthgen.segment import histogram_normalise, zscore
    files, _ = check.list_nifti(cfg.data.real_val)
    pairs, _ = check.pair_real_files(files)
    out = []
    for pair in pairs:
        scan, _ = read_scan(pair.scan, voxel_size=cfg.generator.voxel_size)
        mask, _ = read_mask(pair.mask, voxel_size=cfg.generator.voxel_size)
        # pad to multiples of the crop so that the sliding window tiles the volume
        crop = cfg.generator.crop
        pad = [(0, (-s) % c) for s, c in zip(scan.shape, crop)]
        image = zscore(histogram_normalise(scan))
        image = np.pad(image, pad, constant_values=image.min())      # background, not 0 (= the mean after z-score)
        target = np.pad(mask.astype(np.uint8) * (cfg.num_classes - 1), pad)
        out.append((torch.from_numpy(image)[None, None].to(device), torch.from_numpy(target)[None].to(device)))
    return out


def _timed_batch(data, cuda: bool, step: int):
    """``data(step)`` plus its synthesis time: CUDA events around it on the current stream, or host ms."""
    if cuda:
        ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        ev[0].record()
        image, target = data(step)
        ev[1].record()
        return image, target, ev
    t0 = time.perf_counter()
    image, target = data(step)
    return image, target, 1e3 * (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ output


class MetricsLog:
    """``metrics.csv``: one row per log interval and per validation; on resume, rows after the step are dropped."""

    def __init__(self, path, class_names, resume_step: int | None):
        self.path = Path(path)
        val = ([f"val_dice_{c}" for c in class_names] + [f"real_dice_{c}" for c in REAL_CLASSES]
               + ["val_lesion_dice", "real_lesion_dice"])
        self.fields = ["step", "epoch", "lr", "loss", "grad_norm", "ms_step", "synth_ms", "samples_s"] + val
        self.rows = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self._rewrite()

    def _rewrite(self):
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, self.fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_path(self.path, ".csv") as tmp, open(tmp, "w", newline="") as f:   # the umask's mode
            f.write(buf.getvalue())

    def append(self, row: dict):
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:   # optional: tensorboard not installed
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _write_json(path: Path, obj) -> None:
    with atomic_path(path, ".json") as tmp, open(tmp, "w") as f:     # the umask's mode, not mkstemp's 0600
        json.dump(obj, f, indent=2)


class StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes its step, saves and exits. A second Ctrl-C aborts at once.
    ``signum`` is the first signal received."""

    def __init__(self):
        self.set, self._old, self.signum = False, {}, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True
        self.signum = self.signum or signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# -------------------------------------------------------------------------------------------------- train


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Before any work: the run folder is (or can be made) a writable folder, its checkpoint paths are not folders,
    and a run already there is neither overwritten silently nor resumed from nothing.

    Raises:
        ValueError: naming the folder and what to do (``--resume``, ``--overwrite`` or another ``--out``).
    """
    validate.check_output_dir(out, "run folder (--out)")
    for name in (LAST, PREV, "config.json", "metrics.csv"):
        if (out / name).is_dir():
            raise ValueError(f"{out / name}: is a folder where the run writes its {name}: move it away or use "
                             "another --out")
    found = [n for n in (LAST, PREV) if (out / n).is_file()]
    if found and not resume and not overwrite:
        raise ValueError(f"{out}: already holds a run ({', '.join(found)}): pass --resume to continue it, --overwrite "
                         "to start it again from scratch, or give another --out")


def train(cfg: TrainConfig, resume: bool = False, stop_at: int | None = None, lesions=None,
          progress: bool = True, overwrite: bool = False) -> dict:
    """Train (or resume) a run; return the last metrics.

    Args:
        cfg: the resolved configuration (validated here).
        resume: continue from ``<out>/last.pt`` exactly (model, optimiser, scheduler, step, random states); from
            ``<out>/prev.pt``, with a warning, when ``last.pt`` is missing or damaged.
        stop_at: stop after this step (checkpointing it) without changing the schedule; for tests and
            time-sliced jobs.
        lesions: ``(train_source, val_source)`` to use instead of
            :func:`synthgen.data.training.training_lesions`.
        progress: show the tqdm bar (rank 0).
        overwrite: start again in a folder that holds a run (its checkpoints are removed first); without it that is
            an error.

    Returns:
        ``{"step", "loss", "val_*"...}`` of the last interval / validation (rank 0; others get ``{"step"}``), and
        ``"signal"`` (the signal number) when a signal stopped the run (after its checkpoint).

    Raises:
        ValueError: bad config or data (all file problems listed), CUDA asked for but missing, a baseline run
            from a store without real scans, a run folder that cannot be written or already holds a run.
        FileNotFoundError: ``resume`` without a checkpoint in ``out``, or ``data.store`` not a packed store.
        TrainingDiverged: the loss or the weights stopped being finite (step, loss and the last good checkpoint in
            the message); nothing non-finite is saved.
    """
    cfg.resolve_labels().validate()
    rank, world, device = init_distributed(cfg.device)
    is_main = rank == 0
    out = Path(cfg.out)
    ckpt_path = out / LAST
    check_run_folder(out, resume, overwrite)
    check_data(cfg)
    store = open_data_store(cfg)
    check_grids(cfg, store)
    if resume and not (ckpt_path.is_file() or (out / PREV).is_file()):
        raise FileNotFoundError(f"{ckpt_path}: checkpoint not found (nothing to resume)")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)              # what a killed writer left
        if overwrite and not resume:
            for name in (LAST, PREV):
                (out / name).unlink(missing_ok=True)
        _write_json(out / "config.json", cfg.to_dict())

    seed = cfg.seed + rank
    torch.manual_seed(seed)          # dropout and weight init; saved and restored with every checkpoint
    dtype = amp_dtype(cfg, device)

    # data: read by index from the store or the folders (a bounded read-ahead), synthesised on the training device
    d = cfg.data
    if cfg.baseline and d.store and not len(store.real):
        raise ValueError(f"`baseline` trains on real scans only: the store {d.store} must hold real scans "
                         "(pack --real DIR), got none")
    real = real_scans(store, d.real, cfg.generator.voxel_size)
    maps = None if cfg.baseline else tissue_maps(store, d.tissue_maps, d.label_map, cfg.generator.voxel_size)
    if lesions is None:
        lesions = training_lesions(d.lesion, store, d.lesions or d.lesion.mask_dir, progress=False)
    train_lesions, val_lesions = lesions
    gen_cfg = cfg.generator
    data = TrainingBatches(synthgen.SynthGenerator(gen_cfg), maps, seed, cfg.batch_size, device,
                           lesions=train_lesions, real=real, real_only=cfg.baseline, prefetch=d.prefetch)

    # model and optimiser
    model_kwargs = cfg.model_kwargs()
    model = build_unet(**model_kwargs).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    total, power = cfg.steps, cfg.optim.poly_power
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: max(0.0, 1.0 - n / total) ** power)
    loss_fn = DiceCE.from_config(cfg.optim)

    step = 0
    resumed_from = ckpt_path
    if resume:
        ckpt, resumed_from = load_resume_checkpoint(out, map_location="cpu")   # RNG states must stay CPU tensors
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step = int(ckpt["step"])
        if len(ckpt["rng"]) == world:
            set_rng_state(ckpt["rng"][rank], device)
        elif is_main:
            print(f"warning: checkpoint saved by {len(ckpt['rng'])} ranks, resuming on {world}: "
                  "dropout streams restart (not bit-exact)", file=sys.stderr)
        del ckpt
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # validation set: its own stream, held-out lesions; built once, kept on the device (rank 0 only)
    val_set, real_val = [], []
    if is_main and cfg.val_every and cfg.val_samples and maps is not None:
        val_set = validation_set(synthgen.SynthGenerator(gen_cfg), maps, cfg.seed + cfg.val_seed_offset,
                                 cfg.val_samples, device, lesions=val_lesions)
    if is_main and cfg.val_every and cfg.data.real_val:
        real_val = load_real_val(cfg, device)

    log = MetricsLog(out / "metrics.csv", cfg.class_names, step if resume else None) if is_main else None
    tb = _tensorboard(out) if is_main else None
    if is_main:
        print(f"preset {cfg.preset}: {world} x {device} ({'bf16 autocast' if dtype else 'fp32'}), "
              f"{n_params(net) / 1e6:.2f} M parameters, crop {tuple(gen_cfg.crop)} at {cfg.generator.voxel_size:g} mm, "
              f"batch {cfg.batch_size}/rank, {cfg.num_classes} classes, steps {step} -> {cfg.steps}"
              + (f" (resumed from {resumed_from})" if resume else ""), flush=True)

    last: dict = {"step": step}

    def validate(at: int) -> None:
        if not is_main or not (val_set or real_val):
            return
        row = {"step": at, "epoch": at / cfg.iters_per_epoch}
        kept = []
        if val_set:
            m, kept = evaluate(net, val_set, cfg.class_names, dtype, keep=cfg.plot_samples)
            row.update(m)
        if real_val:
            m, _ = evaluate(net, real_val, cfg.class_names, dtype, roi=tuple(gen_cfg.crop), prefix="real_",
                            lesion_only=True)
            row.update(m)
        log.append(row)
        last.update({k: v for k, v in row.items() if k.startswith(("val_", "real_"))})
        shown = {k: v for k, v in row.items() if k.endswith("lesion_dice") or k.startswith("val_dice")}
        _write(f"validation @ {at}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
        if tb is not None:
            for k, v in shown.items():
                tb.add_scalar(k, v, at)
        plots.plot_curves(log.rows, out / "curves.png", cfg.class_names)
        if kept:
            plots.plot_samples(kept, out / "val_samples.png", cfg.num_classes, f"step {at}")

    bad_step = torch.full((), -1, dtype=torch.long, device=device)   # first step whose loss was not finite

    def diverged(at: int, loss_value=None) -> None:
        """Stop without saving: the loss (or the weights) of step ``at`` are not finite."""
        first = int(bad_step)
        what = (f"the loss is {loss_value if loss_value is not None else 'not finite'} from step {first} on"
                if first >= 0 else "the weights are not finite")
        kept = (f"{ckpt_path} (step {saved_at}) is the last good checkpoint, kept" if saved_at >= 0 and
                ckpt_path.is_file() else "no checkpoint was written")
        raise TrainingDiverged(
            f"training diverged: {what} (stopped after step {at}, nothing non-finite saved); {kept}. Train again "
            f"with a lower --lr (now {cfg.optim.lr:g}; with another --out or --overwrite) or check the data")

    def weights_finite() -> bool:
        params = [p.detach() for p in net.parameters()]
        return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())

    def checkpoint(at: int) -> None:
        if _agree(int(bad_step) >= 0 or not weights_finite(), world, device):
            diverged(at)
        states = [rng_state(device)]
        if world > 1:
            import torch.distributed as dist
            states = [None] * world
            dist.all_gather_object(states, rng_state(device))
        if is_main:
            save_checkpoint(ckpt_path, model=net, optimizer=optimizer, scheduler=scheduler, step=at,
                            config=cfg.to_dict(), model_kwargs=model_kwargs, rng=states)

    bar = None
    if is_main and progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stdout)

    def _write(msg: str) -> None:
        if bar is not None:
            bar.write(msg)
        else:
            print(msg, flush=True)

    if not resume and step == 0:
        validate(0)
    model.train()
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    window = {"loss": [], "gn": [], "synth": [], "t0": time.perf_counter(), "n": 0}
    saved_at = step if resume else -1
    cuda = device.type == "cuda"
    timed = functools.partial(_timed_batch, data, cuda)
    data.start(step, end)             # before the generate-ahead thread asks for step `step`
    ahead = None
    if cfg.generate_ahead == "on" or (cfg.generate_ahead == "auto" and cuda):
        # step n + 1's batch is made on a side stream (and thread) while step n trains; batches depend only on
        # (seed, step), so the run is the same as without
        ahead = Prefetcher(timed, range(step, end), depth=1, device=device if cuda else None)
    with StopFlag() as stop, data, ahead if ahead is not None else nullcontext():
        while step < end:
            image, target, synth = next(ahead) if ahead is not None else timed(step)
            window["synth"].append(synth)
            with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
                logits = model(image)
            if cfg.num_classes > 2 and data.is_real(step):
                logits = lesion_vs_rest(logits)
            loss = loss_fn(logits, target)
            bad_step.masked_fill_((bad_step < 0) & ~torch.isfinite(loss.detach()), step + 1)   # no host sync
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            window["loss"].append(loss.detach())
            window["gn"].append(grad_norm.detach())
            window["n"] += 1
            if bar is not None:
                bar.update(1)

            if step % cfg.log_every == 0 or step == end:
                if cuda:
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - window["t0"]
                synth = [x[0].elapsed_time(x[1]) if isinstance(x, tuple) else x for x in window["synth"]]
                n = window["n"]
                row = {"step": step, "epoch": step / cfg.iters_per_epoch, "lr": scheduler.get_last_lr()[0],
                       "loss": float(torch.stack(window["loss"]).float().mean()),
                       "grad_norm": float(torch.stack(window["gn"]).float().mean()),
                       "ms_step": 1e3 * elapsed / n, "synth_ms": float(np.mean(synth)),
                       "samples_s": n * cfg.batch_size * world / elapsed}
                last.update(row)
                if is_main:
                    log.append(row)
                    _write(f"step {step:>7d}  loss {row['loss']:.4f}  {row['ms_step']:.0f} ms/step  "
                           f"synthesis {row['synth_ms']:.0f} ms/step  {row['samples_s']:.2f} samples/s  "
                           f"lr {row['lr']:.3g}")
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.3f}", samples_s=f"{row['samples_s']:.2f}")
                    if tb is not None:
                        for k in ("loss", "lr", "grad_norm", "ms_step", "synth_ms", "samples_s"):
                            tb.add_scalar(k, row[k], step)
                window = {"loss": [], "gn": [], "synth": [], "t0": time.perf_counter(), "n": 0}
                if _agree(int(bad_step) >= 0, world, device):
                    diverged(step, f"{row['loss']:.4g}")

            if cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps):
                validate(step)
            stopping = _agree(stop.set, world, device)
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or stopping:
                checkpoint(step)
                saved_at = step
            if stopping:
                _write(f"stopped by signal after step {step}; checkpoint {ckpt_path} (resume with --resume)")
                last["signal"] = int(stop.signum or signal.SIGTERM)    # on another rank: a scheduler's SIGTERM
                break
        if saved_at != step:
            checkpoint(step)
    if bar is not None:
        bar.close()
    if tb is not None:
        tb.close()
    last["step"] = step
    return last


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when any rank was signalled (so all ranks stop after the same step)."""
    if world == 1:
        return flag
    import torch.distributed as dist
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
