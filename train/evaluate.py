"""Score predicted lesion masks against ground truth (see synthgen/metrics/cli.py or --help).

A thin caller of :mod:`synthgen.metrics.cli` (installed as ``synthgen-evaluate``), kept so the README's
``python train/evaluate.py ...`` runs from a checkout.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):   # `python train/evaluate.py` from a checkout: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.metrics.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
