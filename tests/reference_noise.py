"""The reference generator with given texture and noise volumes, to compare fast paths with it exactly.

Kept free of Triton imports: the interpreter tests and the compiled GPU tests both use it.
"""
import torch

import synthgen
from synthgen import ops


class FixedLesion:
    """A lesion source returning the same ``(intensity_weight, label_weight)`` for every key."""

    def __init__(self, weights):
        self.weights = weights

    def sample(self, tissue, keys, affine=None, classes=None, region=None):
        return self.weights


def reference_with_noise(monkeypatch, cfg, tissue, params, texture, normals, lesion=None):
    """``SynthGenerator`` forced to the torch backend, its texture and noise replaced by the given volumes."""
    monkeypatch.setattr(ops, "texture_noise", lambda shape, fwhm, gens, device=None: texture)

    def add_noise(x, std, gens, kind="rician"):
        s = std.view(-1, 1, 1, 1, 1)
        if kind == "gaussian":
            return x + normals[0] * s
        return torch.sqrt((x + normals[0] * s) ** 2 + (normals[1] * s) ** 2)
    monkeypatch.setattr(ops, "add_noise", add_noise)
    monkeypatch.setenv("SYNTHGEN_BACKEND", "torch")
    gen = synthgen.SynthGenerator(cfg, lesions=FixedLesion(lesion) if lesion is not None else None)
    return gen(tissue, params=params)
