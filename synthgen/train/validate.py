"""Validation: a fixed held-out synthetic set and, when given, real labelled scans.

The synthetic set (:func:`synthgen.data.training.validation_set`) is drawn once from its own stream (``seed +
val_seed_offset``, never used in training) with the held-out lesions, and kept on the device, so every validation
sees the same samples. Dice per class uses ``synthgen.metrics.dice`` (both masks empty -> 1); ``lesion_dice`` is
the mean lesion Dice over the samples whose target holds a lesion (the number that matters for stroke), NaN when
none does.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch

from synthgen.metrics import dice


def _autocast(device: torch.device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


@torch.no_grad()
def predict_labels(model, image: torch.Tensor, amp_dtype=None, roi=None) -> torch.Tensor:
    """Argmax labels ``(B, *spatial)`` of ``image`` ``(B, 1, *spatial)``; sliding window over ``roi`` if given."""
    with _autocast(image.device, amp_dtype):
        if roi is not None and any(s > r for s, r in zip(image.shape[2:], roi)):
            from monai.inferers import sliding_window_inference
            logits = sliding_window_inference(image, roi, 1, model, overlap=0.5, mode="gaussian", sigma_scale=0.125,
                                              padding_mode="constant", cval=float(image.min()))
        else:
            logits = model(image)
    return logits.float().argmax(1)


def dice_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> list:
    """Dice of every class of one sample (labels ``(*spatial)``), by ``synthgen.metrics.dice``."""
    p, t = pred.cpu().numpy(), target.cpu().numpy()
    return [dice(p == c, t == c) for c in range(num_classes)]


def summarise(scores: list, has_lesion: list, class_names, prefix: str = "") -> dict:
    """Mean Dice per class and the lesion Dice over samples with a lesion, as ``{prefix + name: value}``."""
    arr = np.asarray(scores, dtype=np.float64).reshape(len(scores), len(class_names))
    out = {f"{prefix}dice_{name}": float(arr[:, c].mean()) for c, name in enumerate(class_names)}
    lesion = [row[-1] for row, flag in zip(arr, has_lesion) if flag]
    out[f"{prefix}lesion_dice"] = float(np.mean(lesion)) if lesion else math.nan
    return out


REAL_CLASSES = ("rest", "lesion")   # real scans are labelled lesion vs everything else


@torch.no_grad()
def evaluate(model, samples: list, class_names, amp_dtype=None, roi=None, prefix: str = "val_",
             keep: int = 0, lesion_only: bool = False) -> tuple[dict, list]:
    """Dice of ``model`` on ``samples`` (list of ``(image, target)``), in eval mode; restores train mode.

    Args:
        class_names: names of the classes, lesion last.
        roi: sliding-window size for inputs larger than the training crop (real scans).
        keep: how many ``(image, target, prediction)`` triples to return for plotting.
        lesion_only: targets know only lesion vs the rest (real scans): score ``REAL_CLASSES`` after
            collapsing the prediction the same way.

    Returns:
        ``(metrics, kept)``: ``{prefix}dice_<class>`` means, ``{prefix}lesion_dice``, and the kept triples (CPU).
    """
    was_training = model.training
    model.eval()
    scores, has_lesion, kept = [], [], []
    lesion_class = len(class_names) - 1
    try:
        for image, target in samples:
            pred = predict_labels(model, image, amp_dtype, roi)
            if lesion_only:
                pred, target = (pred == lesion_class).long(), (target == lesion_class).long()
            for b in range(image.shape[0]):
                scores.append(dice_scores(pred[b], target[b], 2 if lesion_only else len(class_names)))
                has_lesion.append(bool((target[b] == (1 if lesion_only else lesion_class)).any()))
                if len(kept) < keep:
                    kept.append((image[b, 0].float().cpu(), target[b].cpu(), pred[b].cpu()))
    finally:
        model.train(was_training)
    return summarise(scores, has_lesion, REAL_CLASSES if lesion_only else class_names, prefix), kept
