from pathlib import Path

import numpy as np
import pytest
import torch

CHECKOUT = Path(__file__).resolve().parents[1]
SHARED_DATA = CHECKOUT.parent / "shared" / "data"
# None when the suite runs from a copy outside the checkout, against an installed synthgen (.ci/run does both)
SOURCE_TREE = CHECKOUT if (CHECKOUT / "setup.py").is_file() else None


def source_file(*parts: str) -> Path:
    """A file of the source checkout that the wheel does not ship (benchmarks/, scripts/, train/*.py); the test (or
    module) is skipped, saying so, when the suite runs outside the checkout."""
    if SOURCE_TREE is None:
        pytest.skip(f"needs {'/'.join(parts)} of the source checkout: this suite runs outside it, against the "
                    "installed synthgen", allow_module_level=True)
    return SOURCE_TREE.joinpath(*parts)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


def phantom_labels(shape=(30, 36, 32)) -> torch.Tensor:
    """A small head phantom (1, 1, *shape) uint8: head tissue, GM shell, PV band, WM core, CSF ventricles."""
    axes = [torch.linspace(-1, 1, n) for n in shape]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    r = (z ** 2 + y ** 2 + x ** 2).sqrt()
    lab = torch.zeros(shape, dtype=torch.uint8)
    lab[r < 0.95] = 5
    lab[r < 0.85] = 1
    lab[r < 0.7] = 3
    lab[r < 0.65] = 2
    lab[(r < 0.25) & (x.abs() > 0.08)] = 4
    return lab[None, None]


TO_TARGET = np.array([0, 1, 2, 3, 4, 0], dtype=np.uint8)     # phantom label -> target class (5: head -> bg)


def map_affine() -> np.ndarray:
    """An LPS-like, anisotropic, shifted map affine: nothing about it is the identity."""
    aff = np.diag([-1.5, 2.0, 2.5, 1.0])
    aff[:3, 3] = (40.0, -35.0, -12.0)
    return aff


def agreement(target, affine, labels, labels_affine, to_target=TO_TARGET) -> float:
    """Fraction of output voxels whose ``target`` is the label map's class where nibabel places them: the map
    resampled (nearest) onto the output grid ``(target.shape, affine)`` by nibabel.processing, independently of
    synthgen's warp."""
    import nibabel as nib
    import nibabel.processing
    target, labels = np.asarray(target), np.asarray(labels)
    img = nib.Nifti1Image(labels.astype(np.int16), np.asarray(labels_affine, dtype=np.float64))
    expect = nibabel.processing.resample_from_to(img, (target.shape, np.asarray(affine, dtype=np.float64)), order=0,
                                                 cval=0).get_fdata().astype(int)
    expect = expect if to_target is None else to_target[expect]
    return float((expect == target).mean())


@pytest.fixture
def phantom():
    return phantom_labels()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny volumes: one torch thread, no thread-pool overhead (restored after the module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
