"""PNG figures of a run: learning curves and validation samples with target and prediction (matplotlib Agg).

Figures are written to a temporary name in the same folder and renamed, so a viewer never sees half a file.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from synthgen.io import save_png  # noqa: E402
from synthgen.preview import CLASS_COLOURS  # noqa: E402


def _save(fig, path) -> Path:
    return save_png(fig, path, dpi=90, bbox_inches="tight")


def _column(rows: list, key: str):
    steps, values = [], []
    for row in rows:
        v = row.get(key, "")
        if v in ("", None):
            continue
        v = float(v)
        if math.isfinite(v):
            steps.append(int(row["step"]))
            values.append(v)
    return steps, values


def plot_curves(rows: list, path, class_names) -> Path:
    """Training loss and validation Dice against step, from ``metrics.csv`` rows (dicts of strings)."""
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    s, v = _column(rows, "loss")
    ax_loss.plot(s, v, label="train loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("Dice + CE")
    ax_loss.set_yscale("log") if v and min(v) > 0 else None
    ax_loss.legend()
    for key in [f"val_dice_{c}" for c in class_names[1:]] + ["val_lesion_dice", "real_lesion_dice"]:
        s, v = _column(rows, key)
        if s:
            ax_dice.plot(s, v, marker="o", ms=3, label=key, lw=2 if key.endswith("lesion_dice") else 1)
    ax_dice.set_xlabel("step")
    ax_dice.set_ylabel("Dice")
    ax_dice.set_ylim(0, 1)
    if ax_dice.lines:
        ax_dice.legend(fontsize=7)
    return _save(fig, path)


def _overlay(labels: np.ndarray, num_classes: int) -> np.ndarray:
    colours = CLASS_COLOURS if num_classes == len(CLASS_COLOURS) else CLASS_COLOURS[[0, -1]]
    return colours[np.clip(labels, 0, len(colours) - 1)]


def plot_samples(samples: list, path, num_classes: int, title: str = "") -> Path:
    """One row per ``(image, target, prediction)`` (3D CPU tensors): image, target overlay, prediction overlay.

    The slice shown is the one with the most target lesion voxels (the middle slice when there is none).
    """
    n = max(len(samples), 1)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    lesion = num_classes - 1
    for r, (image, target, pred) in enumerate(samples):
        image, target, pred = (np.asarray(x) for x in (image, target, pred))
        per_slice = (target == lesion).sum(axis=(0, 1))
        z = int(per_slice.argmax()) if per_slice.max() > 0 else image.shape[2] // 2
        img = np.rot90(image[:, :, z])
        for c, (labels, name) in enumerate(((None, "image"), (target, "target"), (pred, "prediction"))):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray")
            if labels is not None:
                ax.imshow(_overlay(np.rot90(labels[:, :, z]).astype(np.int64), num_classes))
            ax.set_title(f"{name} (z={z})", fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
