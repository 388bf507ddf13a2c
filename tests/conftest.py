import os
import re
import signal
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


# the device run first: the prefetcher and the training loop, then the kernels against the reference
GPU_FIRST = ("test_data_prefetch.py", "test_gpu.py")
GPU_TEST_TIMEOUT_S = float(os.environ.get("SYNTHGEN_GPU_TEST_TIMEOUT", "90"))   # a hang fails its test, not the run


def _gpu_run(config) -> bool:
    return "gpu" in (config.getoption("markexpr", "") or "")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        if _gpu_run(config):
            items.sort(key=lambda it: next((i for i, name in enumerate(GPU_FIRST) if it.path.name == name),
                                           len(GPU_FIRST)))
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """In a GPU run (``-m gpu``), a test module that needs a package this machine lacks is skipped, not an error
    that stops the session: the device image carries fewer packages than CI, which still fails on a missing one."""
    outcome = yield
    report = outcome.get_result()
    if not (report.failed and isinstance(collector, pytest.Module) and _gpu_run(collector.config)):
        return
    missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", str(report.longrepr))
    if missing and not missing.group(1).startswith(("synthgen", "train")):
        report.outcome = "skipped"
        report.longrepr = (str(collector.path), 0, f"Skipped: optional package {missing.group(1)!r} is missing")


@pytest.fixture(scope="session")
def _gpu_warm_kernels():
    """Compile the fast path's kernel variants once, before the first GPU test's alarm starts: a cold Triton cache
    takes 10-50 s a variant. Labels and probabilities, with and without a lesion, at a 96^3 crop (the self-check
    compiles the same specialisations, so training and the tests reuse them)."""
    import time
    from synthgen import fast
    from synthgen.config import GeneratorConfig
    from synthgen.data.default_map import default_tissue_map
    from synthgen.sampling import sample_params
    if "triton" not in fast.AVAILABLE:
        return
    t0 = time.perf_counter()
    cfg = GeneratorConfig(crop=(96, 96, 96))
    labels = default_tissue_map(device="cuda")
    soft = torch.nn.functional.one_hot(labels[:, 0].long(), 6).permute(0, 4, 1, 2, 3).float()
    try:
        for tissue in (labels, soft):
            params = sample_params(cfg, tuple(tissue.shape[2:]), 0, 0, 2)
            box = torch.zeros(2, 1, 8, 8, 8, device="cuda")
            for lesion in (None, (box, box, (90, 110, 90))):
                fast.generate_fast(cfg, tissue, params, lesion, "triton")
        torch.cuda.synchronize()
    except Exception as err:        # the tests themselves report it, each in its own right
        print(f"\nGPU warm-up failed: {type(err).__name__}: {err}", flush=True)
        return
    print(f"\nGPU kernels warmed up in {time.perf_counter() - t0:.0f} s", flush=True)


@pytest.fixture(autouse=True)
def _gpu_test_timeout(request):
    """A GPU test that runs past ``SYNTHGEN_GPU_TEST_TIMEOUT`` seconds fails (the alarm interrupts a blocked wait)."""
    if "gpu" not in request.keywords or not hasattr(signal, "setitimer"):
        yield
        return
    request.getfixturevalue("_gpu_warm_kernels")

    def expire(signum, frame):
        raise TimeoutError(f"{request.node.nodeid} ran past {GPU_TEST_TIMEOUT_S:g} s (a hang?)")
    before = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, GPU_TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


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
