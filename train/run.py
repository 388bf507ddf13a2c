"""Train the paper's stroke + tissue segmentation UNet (see synthgen/train/run.py or --help).

A thin caller of :mod:`synthgen.train.run` (installed as ``synthgen-train``), kept so the README's
``python train/run.py ...`` runs from a checkout.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):   # `python train/run.py` from a checkout: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.train.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
