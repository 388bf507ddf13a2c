"""Stroke and tissue segmentation as a library: the paper's network, its checkpoints, and prediction of a volume in
memory (:func:`predict_volume`) or of NIfTI files (:func:`predict_files`); ``train/predict.py`` is its CLI.

    model, config = synthgen.segment.load_checkpoint_model("runs/train/last.pt")
    out = synthgen.segment.predict_volume((model, config), data, affine)     # lesion, labels, probabilities
"""
from .model import PAPER_CHANNELS, build_unet, load_checkpoint_model, n_params, save_model_checkpoint, total_stride
from .predict import (LANDMARK_PERCENTILES, histogram_normalise, logits_to_outputs, predict_files, predict_volume,
                      preprocess, save_probabilities, segment, zscore)

__all__ = ["PAPER_CHANNELS", "build_unet", "load_checkpoint_model", "n_params", "save_model_checkpoint",
           "total_stride", "LANDMARK_PERCENTILES", "histogram_normalise", "logits_to_outputs", "predict_files",
           "predict_volume", "preprocess", "save_probabilities", "segment", "zscore"]
