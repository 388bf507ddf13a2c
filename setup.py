"""synthgen: GPU-native on-the-fly synthesis of brain MRI with stroke lesions."""
import re
import sys
from pathlib import Path

from setuptools import find_packages, setup

# the version lives in synthgen/__init__.py only (read as text: the build must not import torch)
VERSION = re.search(r'^__version__ = "([^"]+)"', Path("synthgen/__init__.py").read_text(), re.M).group(1)

install_requires = [
    "torch>=2.1",
    "numpy>=1.24",
    "nibabel>=5.0",
    "torch-interpol>=0.2.5",
    "tqdm>=4.60",
    "matplotlib>=3.6",   # PNG previews, learning curves, box plots
    "scipy>=1.10",       # connected components and distance transforms for metrics, calibration
    "monai>=1.3",        # the paper's UNet, sliding-window inference, metric cross-checks
]
if sys.platform.startswith("linux"):
    install_requires.append("triton>=3.0")

setup(
    name="synthgen",
    version=VERSION,
    description="GPU-native on-the-fly synthesis of brain MRI with stroke lesions (SynthStroke-style)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # only synthgen at the top level: train/*.py are thin scripts over synthgen.train / .segment / .metrics
    # csrc/ stays the one copy of the CUDA sources at the top of the repo; the wheel maps it to synthgen/kernels/csrc
    # (synthgen.kernels.cuda_loader reads that copy when installed, csrc/ in a checkout)
    packages=find_packages(include=["synthgen", "synthgen.*"]) + ["synthgen.kernels.csrc"],
    package_dir={"synthgen.kernels.csrc": "csrc"},
    package_data={"synthgen": ["data/default/*", "data/mappings/*.json", "models/*.json", "models/*.pt", "models/*.md"],
                  "synthgen.kernels.csrc": ["*.cu", "*.cpp", "*.h"]},
    include_package_data=True,
    install_requires=install_requires,
    extras_require={
        # torchio and cc3d: synthgen.torchio's tests and the cc3d path of the metrics run in CI
        "dev": ["pytest>=7", "hypothesis>=6", "torchio>=0.20", "connected-components-3d>=3.10"],
        "monai": ["monai>=1.3"],              # synthgen.monai (MONAI is already a dependency: the UNet)
        "torchio": ["torchio>=0.20"],         # synthgen.torchio
        "fast-metrics": ["connected-components-3d>=3.10"],   # lesion counting 3-7x faster than scipy
        "peers": ["cornucopia", "torchio"],   # benchmarks compare against them when installed
        "cuda": ["cupy-cuda12x"],
    },
    entry_points={"console_scripts": [
        "synthgen-train=synthgen.train.run:main",
        "synthgen-predict=synthgen.segment.cli:main",
        "synthgen-evaluate=synthgen.metrics.cli:main",
        "synthgen-sample=synthgen.sample:main",
        "synthgen-preview=synthgen.preview:main",
    ]},
    license="MIT",
)
