"""Segment scans with a trained checkpoint (see synthgen/segment/cli.py or --help).

A thin caller of :mod:`synthgen.segment.cli` (installed as ``synthgen-predict``), kept so the README's
``python train/predict.py ...`` runs from a checkout.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):   # `python train/predict.py` from a checkout: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.segment.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
