"""The paper's evaluation as a library: Dice, HD95, AVD, ALD and lesion-wise F1 on binary masks
(:mod:`.scores`), and scoring of prediction / truth folders with CSV summaries and box plots (:mod:`.evaluate`,
behind ``train/evaluate.py``).

    synthgen.metrics.all_metrics(pred, truth, spacing=(1, 1, 1))   # {"dice": ..., "hd95_mm": ..., ...}
"""
from .evaluate import (COLUMNS, SUMMARY_COLUMNS, binarise_prediction, evaluate_dirs, find_pairs, format_summary,
                       load_case, plot_boxplots, score_case, summarise, write_csv)
from .scores import (METRICS, ald, all_metrics, avd, dice, hd95, label_components, lesion_f1, structure,
                     surface_distances)

__all__ = ["METRICS", "ald", "all_metrics", "avd", "dice", "hd95", "label_components", "lesion_f1", "structure",
           "surface_distances", "COLUMNS", "SUMMARY_COLUMNS", "binarise_prediction", "evaluate_dirs", "find_pairs",
           "format_summary", "load_case", "plot_boxplots", "score_case", "summarise", "write_csv"]
