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
import collections
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
from synthgen.validate import check_resume_fits
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
    # every folder listed before any file is read: a missing folder or a pattern that matches nothing is said at once
    listed = check.list_folders(d.tissue_maps, d.lesions, d.real,
                                check.folder_patterns(lesion_pattern=d.lesion.mask_pattern))[2]
    listed += check.list_folders(real=d.real_val)[2]
    problems = check.folder_errors(listed, (d.tissue_maps, d.lesions, d.real, d.real_val))
    if not problems:
        problems = check.check_folders(tissue_maps=d.tissue_maps, real=d.real, label_map=d.label_map,
                                       progress=False, voxel_size=vox)
        if d.lesions:
            problems += check.check_folders(lesions=d.lesions, lesion_pattern=d.lesion.mask_pattern, progress=False)
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
    store = prepare_run(cfg, rank, resume, overwrite)
    torch.manual_seed(cfg.seed + rank)     # dropout and weight init; saved and restored with every checkpoint
    data, maps, val_lesions = training_data(cfg, store, rank, device, lesions)
    run = Run(cfg, rank, world, device)
    resumed_from = run.restore() if resume else None
    run.open_outputs(maps, val_lesions, resumed=resume, progress=progress)
    run.announce(resumed_from)
    if not resume and run.step == 0:
        run.validate(0)
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    try:
        run_steps(run, data, end)
    finally:
        run.close()
    return run.last


def prepare_run(cfg: TrainConfig, rank: int, resume: bool, overwrite: bool):
    """Every check that needs no long read (the run folder, the data folders, the store's index and the grids), then
    the run folder made ready (rank 0): stale temporaries removed, old checkpoints gone with ``overwrite``, the
    config written. Returns the packed store of ``data.store`` or None."""
    out = Path(cfg.out)
    check_run_folder(out, resume, overwrite)
    check_data(cfg)
    store = open_data_store(cfg)
    check_grids(cfg, store)
    if resume and not ((out / LAST).is_file() or (out / PREV).is_file()):
        raise FileNotFoundError(f"{out / LAST}: checkpoint not found (nothing to resume)")
    if cfg.baseline and cfg.data.store and not len(store.real):
        raise ValueError(f"`baseline` trains on real scans only: the store {cfg.data.store} must hold real scans "
                         "(pack --real DIR), got none")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)              # what a killed writer left
        if overwrite and not resume:
            for name in (LAST, PREV):
                (out / name).unlink(missing_ok=True)
        _write_json(out / "config.json", cfg.to_dict())
    return store


def training_data(cfg: TrainConfig, store, rank: int, device: torch.device, lesions=None):
    """``(batches, maps, val_lesions)``: the training batches of stream ``seed + rank``, read by index from the store
    or the folders (a bounded read-ahead) and synthesised on the training device; the tissue maps (None for a
    baseline run) and the held-out lesions, for the validation set."""
    d = cfg.data
    real = real_scans(store, d.real, cfg.generator.voxel_size)
    maps = None if cfg.baseline else tissue_maps(store, d.tissue_maps, d.label_map, cfg.generator.voxel_size)
    if lesions is None:
        lesions = training_lesions(d.lesion, store, d.lesions or d.lesion.mask_dir, progress=False)
    train_lesions, val_lesions = lesions
    data = TrainingBatches(synthgen.SynthGenerator(cfg.generator), maps, cfg.seed + rank, cfg.batch_size, device,
                           lesions=train_lesions, real=real, real_only=cfg.baseline, prefetch=d.prefetch)
    return data, maps, val_lesions


class Run:
    """One rank's training state: model, optimiser, schedule, step, and (rank 0) the outputs it writes."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.is_main = rank == 0
        self.out = Path(cfg.out)
        self.ckpt_path = self.out / LAST
        self.dtype = amp_dtype(cfg, device)
        self.model_kwargs = cfg.model_kwargs()
        self.net = build_unet(**self.model_kwargs).to(device)
        self.model = self.net                # the DDP wrapper under torchrun (wrapped after restore)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                           weight_decay=cfg.optim.weight_decay)
        total, power = cfg.steps, cfg.optim.poly_power
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda n: max(0.0, 1.0 - n / total) ** power)
        self.loss_fn = DiceCE.from_config(cfg.optim)
        self.step, self.saved_at = 0, -1
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)   # first step whose loss was not finite
        self.last: dict = {"step": 0}
        self.val_set, self.real_val = [], []
        self.log = self.tb = self.bar = None

    def restore(self) -> Path:
        """Model, optimiser, schedule, step and this rank's own random state from the run's checkpoint; returns the
        checkpoint read (``prev.pt`` when ``last.pt`` is damaged)."""
        fits = functools.partial(check_resume_fits, steps=self.cfg.steps, model_kwargs=self.model_kwargs,
                                 state=self.net.state_dict())     # a last.pt of another run falls back to prev.pt
        ckpt, path = load_resume_checkpoint(self.out, map_location="cpu", fits=fits)   # RNG states stay on the CPU
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = self.saved_at = self.last["step"] = int(ckpt["step"])
        if len(ckpt["rng"]) == self.world:
            set_rng_state(ckpt["rng"][self.rank], self.device)
        elif self.is_main:
            print(f"warning: checkpoint saved by {len(ckpt['rng'])} ranks, resuming on {self.world}: "
                  "dropout streams restart (not bit-exact)", file=sys.stderr)
        return path

    def open_outputs(self, maps, val_lesions, resumed: bool, progress: bool) -> None:
        """DDP around the model; on rank 0 the validation sets (their own stream, held-out lesions, kept on the
        device), ``metrics.csv``, TensorBoard and the progress bar."""
        cfg = self.cfg
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            self.model = DistributedDataParallel(self.net, device_ids=[self.device.index]
                                                 if self.device.type == "cuda" else None)
        if not self.is_main:
            return
        if cfg.val_every and cfg.val_samples and maps is not None:
            self.val_set = validation_set(synthgen.SynthGenerator(cfg.generator), maps,
                                          cfg.seed + cfg.val_seed_offset, cfg.val_samples, self.device,
                                          lesions=val_lesions)
        if cfg.val_every and cfg.data.real_val:
            self.real_val = load_real_val(cfg, self.device)
        self.log = MetricsLog(self.out / "metrics.csv", cfg.class_names, self.step if resumed else None)
        self.tb = _tensorboard(self.out)
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True, file=sys.stdout)

    def announce(self, resumed_from) -> None:
        cfg = self.cfg
        if self.is_main:
            self.write(f"preset {cfg.preset}: {self.world} x {self.device} "
                       f"({'bf16 autocast' if self.dtype else 'fp32'}), {n_params(self.net) / 1e6:.2f} M parameters, "
                       f"crop {tuple(cfg.generator.crop)} at {cfg.generator.voxel_size:g} mm, "
                       f"batch {cfg.batch_size}/rank, {cfg.num_classes} classes, steps {self.step} -> {cfg.steps}"
                       + (f" (resumed from {resumed_from})" if resumed_from is not None else ""))

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def train_step(self, image, target, is_real: bool):
        """Forward (autocast), Dice + CE, backward, grad-norm clip, AdamW and schedule step: ``(loss, grad_norm)``
        as device tensors (no host sync; a non-finite loss is recorded in ``bad_step``)."""
        with torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext():
            logits = self.model(image)
        if self.cfg.num_classes > 2 and is_real:
            logits = lesion_vs_rest(logits)
        loss = self.loss_fn(logits, target)
        self.bad_step.masked_fill_((self.bad_step < 0) & ~torch.isfinite(loss.detach()), self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)
        return loss.detach(), grad_norm.detach()

    def log_interval(self, window: Window) -> None:
        """One log line (and ``metrics.csv`` row, TensorBoard scalars) for the steps in ``window``; stops the run
        when a loss in it was not finite."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        row = {"step": self.step, "epoch": self.step / self.cfg.iters_per_epoch,
               "lr": self.scheduler.get_last_lr()[0], **window.summary(self.cfg.batch_size * self.world)}
        self.last.update(row)
        if self.is_main:
            self.log.append(row)
            self.write(f"step {self.step:>7d}  loss {row['loss']:.4f}  {row['ms_step']:.0f} ms/step  "
                       f"synthesis {row['synth_ms']:.0f} ms/step  {row['samples_s']:.2f} samples/s  "
                       f"lr {row['lr']:.3g}")
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{row['loss']:.3f}", samples_s=f"{row['samples_s']:.2f}")
            if self.tb is not None:
                for k in ("loss", "lr", "grad_norm", "ms_step", "synth_ms", "samples_s"):
                    self.tb.add_scalar(k, row[k], self.step)
        if _agree(int(self.bad_step) >= 0, self.world, self.device):
            self.diverged(f"{row['loss']:.4g}")

    def validate(self, at: int) -> None:
        """Rank 0 scores the held-out synthetic set (and real scans when given); a row, a line, curves, samples."""
        cfg = self.cfg
        if not self.is_main or not (self.val_set or self.real_val):
            return
        row = {"step": at, "epoch": at / cfg.iters_per_epoch}
        kept = []
        if self.val_set:
            m, kept = evaluate(self.net, self.val_set, cfg.class_names, self.dtype, keep=cfg.plot_samples)
            row.update(m)
        if self.real_val:
            m, _ = evaluate(self.net, self.real_val, cfg.class_names, self.dtype, roi=tuple(cfg.generator.crop),
                            prefix="real_", lesion_only=True)
            row.update(m)
        self.log.append(row)
        self.last.update({k: v for k, v in row.items() if k.startswith(("val_", "real_"))})
        shown = {k: v for k, v in row.items() if k.endswith("lesion_dice") or k.startswith("val_dice")}
        self.write(f"validation @ {at}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
        if self.tb is not None:
            for k, v in shown.items():
                self.tb.add_scalar(k, v, at)
        plots.plot_curves(self.log.rows, self.out / "curves.png", cfg.class_names)
        if kept:
            plots.plot_samples(kept, self.out / "val_samples.png", cfg.num_classes, f"step {at}")

    def checkpoint(self) -> None:
        """Every rank's random state gathered, rank 0 writes; never weights or a loss that stopped being finite."""
        if _agree(int(self.bad_step) >= 0 or not self.weights_finite(), self.world, self.device):
            self.diverged()
        states = [rng_state(self.device)]
        if self.world > 1:
            import torch.distributed as dist
            states = [None] * self.world
            dist.all_gather_object(states, rng_state(self.device))
        if self.is_main:
            save_checkpoint(self.ckpt_path, model=self.net, optimizer=self.optimizer, scheduler=self.scheduler,
                            step=self.step, config=self.cfg.to_dict(), model_kwargs=self.model_kwargs, rng=states)
        self.saved_at = self.step

    def weights_finite(self) -> bool:
        params = [p.detach() for p in self.net.parameters()]
        return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())

    def diverged(self, loss_value=None) -> None:
        """Stop without saving: the loss (or the weights) of the current step are not finite."""
        first = int(self.bad_step)
        what = (f"the loss is {loss_value if loss_value is not None else 'not finite'} from step {first} on"
                if first >= 0 else "the weights are not finite")
        kept = (f"{self.ckpt_path} (step {self.saved_at}) is the last good checkpoint, kept"
                if self.saved_at >= 0 and self.ckpt_path.is_file() else "no checkpoint was written")
        raise TrainingDiverged(
            f"training diverged: {what} (stopped after step {self.step}, nothing non-finite saved); {kept}. Train "
            f"again with a lower --lr (now {self.cfg.optim.lr:g}; with another --out or --overwrite) or check the "
            "data")

    def close(self) -> None:
        for closable in (self.bar, self.tb):
            if closable is not None:
                closable.close()


class Window:
    """The steps since the last log line: their losses, grad norms and synthesis times, and the wall clock."""

    def __init__(self):
        self.loss, self.grad_norm, self.synth, self.t0 = [], [], [], time.perf_counter()

    def add(self, loss, grad_norm, synth) -> None:
        self.loss.append(loss)
        self.grad_norm.append(grad_norm)
        self.synth.append(synth)

    def summary(self, samples_per_step: int) -> dict:
        """Mean loss and grad norm, ms per step, synthesis ms per step (CUDA events or host ms) and samples/s."""
        elapsed, n = time.perf_counter() - self.t0, len(self.loss)
        synth = [x[0].elapsed_time(x[1]) if isinstance(x, tuple) else x for x in self.synth]
        return {"loss": float(torch.stack(self.loss).float().mean()),
                "grad_norm": float(torch.stack(self.grad_norm).float().mean()),
                "ms_step": 1e3 * elapsed / n, "synth_ms": float(np.mean(synth)),
                "samples_s": n * samples_per_step / elapsed}


def run_steps(run: Run, data, end: int) -> None:
    """Steps ``run.step .. end``: synthesise (on a side stream ahead of time on CUDA), train, log, validate,
    checkpoint; a signal on any rank stops every rank after the same step, checkpointed."""
    cfg, cuda = run.cfg, run.device.type == "cuda"
    timed = functools.partial(_timed_batch, data, cuda)
    data.start(run.step, end)             # before the generate-ahead thread asks for step `step`
    ahead = None
    if cfg.generate_ahead == "on" or (cfg.generate_ahead == "auto" and cuda):
        # step n + 1's batch is made on a side stream (and thread) while step n trains; batches depend only on
        # (seed, step), so the run is the same as without
        ahead = Prefetcher(timed, range(run.step, end), depth=1, device=run.device if cuda else None)
    agree_stop = StopAgreement(run.world, run.device)
    run.model.train()
    window = Window()
    with StopFlag() as stop, data, ahead if ahead is not None else nullcontext():
        while run.step < end:
            image, target, synth = next(ahead) if ahead is not None else timed(run.step)
            window.add(*run.train_step(image, target, data.is_real(run.step)), synth)
            step = run.step
            if step % cfg.log_every == 0 or step == end:
                run.log_interval(window)
                window = Window()
            if cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps):
                run.validate(step)
            stopping = agree_stop(stop.set)
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or stopping:
                run.checkpoint()
            if stopping:
                run.write(f"stopped by signal after step {step}; checkpoint {run.ckpt_path} (resume with --resume)")
                run.last["signal"] = int(stop.signum or signal.SIGTERM)    # on another rank: a scheduler's SIGTERM
                break
        if run.saved_at != run.step:
            run.checkpoint()
    run.last["step"] = run.step


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank, now (a host read-back: for log and checkpoint steps,
    which wait for the device anyway)."""
    if world == 1:
        return flag
    import torch.distributed as dist
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class StopAgreement:
    """Whether any rank was signalled, agreed by every rank ``lag`` steps later, without a host wait per step.

    Each call reduces this step's flag over the ranks on the device and copies the result into pinned host memory
    behind an event; it answers with the result of ``lag`` calls ago, whose copy finished long since, so the
    host keeps queueing work ahead of the device. Every rank calls it once per step, so all ranks read the same
    answer at the same step and stop together. One rank: the flag itself, at once.
    """

    def __init__(self, world: int, device: torch.device, lag: int = 2, reduce=None):
        self.world, self.device, self.lag = world, device, lag
        self._reduce = reduce or self._all_reduce_max
        self._pending: collections.deque = collections.deque()

    @staticmethod
    def _all_reduce_max(t: torch.Tensor) -> None:
        import torch.distributed as dist
        dist.all_reduce(t, op=dist.ReduceOp.MAX)

    def __call__(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.full((1,), float(flag), device=self.device)      # a fill kernel: no host-to-device copy
        self._reduce(t)
        event = None
        if t.is_cuda:
            host = torch.empty(1, pin_memory=True)
            host.copy_(t, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            t = host
        self._pending.append((t, event))
        if len(self._pending) <= self.lag:
            return False
        t, event = self._pending.popleft()
        if event is not None:
            event.synchronize()        # recorded `lag` steps ago: done unless the host is that far ahead
        return bool(t[0])
