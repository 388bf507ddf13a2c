"""Dice + cross-entropy, the paper's training loss (section 2: "a combined Dice and Cross Entropy loss").

MONAI's ``DiceCELoss`` with softmax over the logits and a one-hot target: the soft Dice is averaged over
every class including background (as in the paper's reference code), the cross-entropy over voxels, and the
two are summed with weights. Logits are cast to float32 first, so that a bf16 autocast forward does not
reduce in bf16.
"""
from __future__ import annotations

import torch
from monai.losses import DiceCELoss


class DiceCE(torch.nn.Module):
    """``dice_weight * soft Dice + ce_weight * cross-entropy`` of logits against integer labels.

    Args:
        dice_weight, ce_weight: weights of the two terms (paper: 1 and 1).

    Shape:
        logits ``(B, C, D, H, W)``, target ``(B, D, H, W)`` integer labels in ``[0, C)``; returns a scalar.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0):
        super().__init__()
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=dice_weight, lambda_ce=ce_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != logits.ndim - 1 or target.shape[0] != logits.shape[0] \
                or target.shape[1:] != logits.shape[2:]:
            raise ValueError(f"`target` must be (B, D, H, W) matching logits {tuple(logits.shape)}, "
                             f"got {tuple(target.shape)}")
        return self.loss(logits.float(), target[:, None].long())
