"""Dice + cross-entropy, the paper's training loss (section 2: "a combined Dice and Cross Entropy loss").

MONAI's ``DiceCELoss`` with softmax over the logits and a one-hot target:
``dice_weight * (1 - mean soft Dice) + ce_weight * mean cross-entropy``. The soft Dice of class ``c`` is
``(2 sum p_c y_c + 1e-5) / (sum p_c + sum y_c + 1e-5)``; the cross-entropy is averaged over voxels.

The paper's text gives only "Dice + cross-entropy"; the defaults read it literally (every class in the Dice, the
background included; one Dice per sample, averaged). The paper's code (SynthStroke ``train.py``) leaves the
background out of the Dice and pools each class over the batch before dividing: ``include_background=False,
batch=True`` (``OptimConfig(dice_include_background=False, dice_batch=True)``). Logits are cast to float32 first,
so that a bf16 autocast forward does not reduce in bf16.
"""
from __future__ import annotations

import torch
from monai.losses import DiceCELoss


class DiceCE(torch.nn.Module):
    """``dice_weight * (1 - soft Dice) + ce_weight * cross-entropy`` of logits against integer labels.

    Args:
        dice_weight, ce_weight: weights of the two terms (paper: 1 and 1).
        include_background: average the Dice over every class (True, the default) or leave class 0 out
            (SynthStroke's code). The cross-entropy always covers every class.
        batch: pool the Dice's sums over the batch before dividing (SynthStroke's code), instead of one Dice per
            sample averaged (the default).

    Shape:
        logits ``(B, C, D, H, W)``, target ``(B, D, H, W)`` integer labels in ``[0, C)``; returns a scalar.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, include_background: bool = True,
                 batch: bool = False):
        super().__init__()
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=dice_weight, lambda_ce=ce_weight,
                               include_background=include_background, batch=batch)

    @classmethod
    def from_config(cls, optim) -> "DiceCE":
        """The loss of an ``OptimConfig`` (weights, background, batch Dice)."""
        return cls(optim.dice_weight, optim.ce_weight, optim.dice_include_background, optim.dice_batch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != logits.ndim - 1 or target.shape[0] != logits.shape[0] \
                or target.shape[1:] != logits.shape[2:]:
            raise ValueError(f"`target` must be (B, D, H, W) matching logits {tuple(logits.shape)}, "
                             f"got {tuple(target.shape)}")
        return self.loss(logits.float(), target[:, None].long())
