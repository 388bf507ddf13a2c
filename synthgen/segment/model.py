"""The paper's segmentation network (MONAI UNet), and checkpoints that rebuild it.

Paper (Chalcroft et al., "Synthetic Data for Robust Stroke Segmentation", arXiv:2404.01946), section 2: "A UNet ... with symmetric encoder and
decoder with channels of (32, 64, 128, 256, 320, 320), instance normalisation, PReLU activation, and one
residual unit per block. In the decoder, the up-sampling was performed with transposed convolutions. Six
output channels ... A dropout of 0.2". ``monai.networks.nets.UNet`` with ``num_res_units=1`` matches this
exactly: every encoder block is one residual unit (3^3 strided conv -> instance norm -> dropout -> PReLU,
plus a strided 3^3 conv on the skip path), the bottom block (320 channels) is one residual unit at stride 1,
and every decoder block is a 3^3 *transposed* conv with stride 2 (-> norm -> dropout -> PReLU) followed by
one residual unit; skips are concatenated. The last decoder unit ends in a plain conv (raw logits). With
six channel entries there are five stride-2 steps, so input sizes must be multiples of 32 (192^3 windows are).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..io import atomic_path

PAPER_CHANNELS = (32, 64, 128, 256, 320, 320)
CHECKSUM = "checksum"
_BUILD_KEYS = ("out_channels", "in_channels", "channels", "strides", "dropout", "num_res_units")


def build_unet(out_channels: int = 6, in_channels: int = 1, channels=PAPER_CHANNELS, strides=None,
               dropout: float = 0.2, num_res_units: int = 1) -> torch.nn.Module:
    """Build the paper's 3D UNet (MONAI ``UNet``, instance norm, PReLU, transposed-conv up-sampling).

    Args:
        out_channels: classes predicted (6: background, GM, WM, PV, CSF, lesion; 2 for the baseline).
        in_channels: input contrasts.
        channels: features per level; the last entry is the bottom block (stride 1).
        strides: down-sampling factor per step, ``len(channels) - 1`` entries (default 2 each).
        dropout: dropout probability in every block.
        num_res_units: residual units per block (paper: 1).

    Returns:
        The untrained network; ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` logits, with
        D, H, W multiples of ``prod(strides)``.

    Raises:
        ValueError: a size is not positive, fewer than two levels, or ``strides`` of the wrong length.
    """
    channels = tuple(int(c) for c in channels)
    if len(channels) < 2 or min(channels) < 1:
        raise ValueError(f"`channels` must be at least two positive ints, got {channels}")
    for name, value in (("out_channels", out_channels), ("in_channels", in_channels)):
        if int(value) != value or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value}")
    strides = (2,) * (len(channels) - 1) if strides is None else tuple(int(s) for s in strides)
    if len(strides) != len(channels) - 1 or min(strides) < 1:
        raise ValueError(f"`strides` must be {len(channels) - 1} positive ints (one per down step), got {strides}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout}")
    if int(num_res_units) != num_res_units or num_res_units < 0:
        raise ValueError(f"`num_res_units` must be a non-negative int, got {num_res_units}")
    from monai.networks.nets import UNet
    return UNet(spatial_dims=3, in_channels=int(in_channels), out_channels=int(out_channels),
                channels=channels, strides=strides, num_res_units=int(num_res_units),
                norm="instance", act="prelu", dropout=float(dropout))


def n_params(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def total_stride(model_cfg: dict) -> int:
    """Product of the down-sampling strides of a ``build_unet`` config: input sizes must be multiples of it."""
    n_down = len(model_cfg.get("channels", PAPER_CHANNELS)) - 1
    strides = model_cfg.get("strides") or (2,) * n_down
    out = 1
    for s in strides:
        out *= int(s)
    return out


def state_digest(obj) -> str:
    """SHA-256 of everything a checkpoint holds (tensors' dtype, shape and bytes; other values by ``repr``), walked in
    a fixed order: a flipped byte anywhere in the data gives another digest."""
    h = hashlib.sha256()

    def feed(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(o, dict):
            h.update(b"D%d" % len(o))
            for k in sorted(o, key=repr):
                feed(k)
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(b"L%d" % len(o))
            for x in o:
                feed(x)
        else:
            h.update(f"{type(o).__name__}:{o!r};".encode())
    feed(obj)
    return h.hexdigest()


def with_checksum(payload: dict) -> dict:
    """``payload`` plus ``"checksum"``: its :func:`state_digest`, verified by :func:`verify_checkpoint`."""
    payload = {k: v for k, v in payload.items() if k != CHECKSUM}
    payload[CHECKSUM] = state_digest(payload)
    return payload


def read_checkpoint(path, map_location="cpu", missing: str = "checkpoint not found"):
    """``torch.load`` a checkpoint file (weights only), naming the file in every error.

    Raises:
        FileNotFoundError: no file at ``path`` (``missing`` says what that means to the caller).
        ValueError: the file cannot be read as a torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {missing}")
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as err:   # noqa: BLE001 -- a damaged file fails in many ways (zip, pickle, storage records)
        raise ValueError(f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})") from err


def verify_checkpoint(ckpt: dict, path) -> None:
    """Refuse a checkpoint whose checksum does not match its content (corrupt) or whose weights are not finite (the
    run that wrote it diverged). Checkpoints written before checksums existed are only checked for finiteness.

    Raises:
        ValueError: naming ``path``, and the previous checkpoint to use when one lies beside it.
    """
    from ..validate import nonfinite_tensors
    hint = ""
    prev = Path(path).with_name("prev.pt")
    if Path(path).name != "prev.pt" and prev.is_file():
        hint = f"; the previous checkpoint {prev} may be intact"
    if CHECKSUM in ckpt and state_digest({k: v for k, v in ckpt.items() if k != CHECKSUM}) != ckpt[CHECKSUM]:
        raise ValueError(f"{path}: checkpoint is corrupt: its checksum does not match its content (a damaged copy "
                         f"or disk?){hint}")
    bad = nonfinite_tensors(ckpt.get("model", {}))
    if bad:
        raise ValueError(f"{path}: checkpoint weights are not finite (NaN/Inf in {len(bad)} tensors, e.g. {bad[0]}): "
                         f"the run that wrote it diverged; retrain with a lower learning rate{hint}")


def save_model_checkpoint(path, model: torch.nn.Module, model_cfg: dict, config: dict | None = None,
                          **extra) -> Path:
    """Write ``{"model": state_dict, "config": {..., "model": model_cfg}, **extra, "checksum": ...}`` atomically.

    The format ``load_checkpoint_model`` reads; training may add optimiser state etc. through ``extra``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = dict(config or {})
    cfg["model"] = dict(model_cfg)
    with atomic_path(path) as tmp:
        torch.save(with_checksum({"model": model.state_dict(), "config": cfg, **extra}), tmp)
    return path


def _strip_prefixes(state: dict) -> dict:
    # DDP ("module.") and torch.compile ("_orig_mod.") wrap the weights under a prefix
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_checkpoint_model(path, map_location="cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network stored in a checkpoint and load its weights (in eval mode).

    Args:
        path: file written by ``torch.save`` holding ``"model"`` (a state_dict) and ``"config"`` (a plain
            dict whose ``"model"`` entry holds the ``build_unet`` keyword arguments; missing -> defaults).
        map_location: passed to ``torch.load``.

    Returns:
        ``(model, config)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable checkpoint, lacks ``"model"``/``"config"``, is corrupt (checksum),
            holds weights that are not finite, has unknown model arguments, or its weights do not fit the configured
            network. Every message names the file.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: checkpoint must be a dict with 'model' and 'config' entries, got {keys}")
    verify_checkpoint(ckpt, path)
    cfg = ckpt["config"]
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: checkpoint 'config' must be a dict, got {type(cfg).__name__}")
    model_cfg = dict(cfg.get("model") or {})
    unknown = sorted(set(model_cfg) - set(_BUILD_KEYS))
    if unknown:
        raise ValueError(f"{path}: config['model'] has unknown build_unet arguments {unknown}; "
                         f"expected a subset of {list(_BUILD_KEYS)}")
    try:
        model = build_unet(**model_cfg)
        model.load_state_dict(_strip_prefixes(ckpt["model"]))
    except (ValueError, TypeError, RuntimeError, AttributeError) as err:
        raise ValueError(f"{path}: weights do not fit the network config {model_cfg} ({err})") from err
    model.eval()
    return model, cfg
