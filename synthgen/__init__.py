"""synthgen: GPU-native on-the-fly synthesis of brain MRI with stroke lesions.

Implements Chalcroft et al., "Synthetic Data for Robust Stroke Segmentation" (SynthSeg-style domain
randomisation with pasted stroke lesions), with every sample generated on the device that trains.
"""
from . import ops, real
from .config import TARGET_CLASSES, TISSUE_CLASSES, GeneratorConfig
from .dataset import SynthDataset
from .generator import SynthGenerator
from .sampling import SampleParams

__version__ = "0.1.0"


def __getattr__(name):
    # imported lazily: file handling (nibabel), the network (MONAI), optional libraries (synthgen.monai, .torchio)
    if name in ("data", "lesions", "io", "segment", "metrics", "monai", "torchio", "interop"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'synthgen' has no attribute {name!r}")


__all__ = ["SynthGenerator", "SynthDataset", "GeneratorConfig", "SampleParams", "TARGET_CLASSES", "TISSUE_CLASSES",
           "ops", "real"]
