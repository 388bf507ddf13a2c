"""synthgen: GPU-native on-the-fly synthesis of brain MRI with stroke lesions.

Implements Chalcroft et al., "Synthetic Data for Robust Stroke Segmentation" (SynthSeg-style domain
randomisation with pasted stroke lesions), with every sample generated on the device that trains.
"""
from . import ops
from .config import TARGET_CLASSES, TISSUE_CLASSES, GeneratorConfig
from .generator import SynthGenerator
from .sampling import SampleParams

__version__ = "0.1.0"


def __getattr__(name):
    # `synthgen.data` and `synthgen.lesions` are imported lazily: they pull in nibabel and file handling
    if name in ("data", "lesions", "io"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'synthgen' has no attribute {name!r}")


__all__ = ["SynthGenerator", "GeneratorConfig", "SampleParams", "TARGET_CLASSES", "TISSUE_CLASSES", "ops"]
