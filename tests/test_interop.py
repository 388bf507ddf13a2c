"""Optional libraries stay optional: importing synthgen pulls in neither MONAI nor TorchIO, and the adapters say
which extra to install when the library is missing."""
import importlib
import subprocess
import sys

import pytest


def test_import_synthgen_loads_neither_monai_nor_torchio():
    code = "import sys, synthgen; print(sorted(m for m in ('monai', 'torchio') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr


@pytest.mark.parametrize("module, missing", [("synthgen.monai", "monai.transforms"), ("synthgen.torchio", "torchio")])
def test_adapters_name_the_extra_when_the_library_is_missing(monkeypatch, module, missing):
    monkeypatch.setitem(sys.modules, missing, None)          # as if not installed
    monkeypatch.delitem(sys.modules, module, raising=False)
    extra = module.split(".")[1]
    with pytest.raises(ImportError, match=rf"pip install 'synthgen\[{extra}\]'"):
        importlib.import_module(module)


def test_as_tensor_and_affine_of_errors():
    import numpy as np
    from synthgen.interop import affine_of, as_tensor, as_tissue
    with pytest.raises(TypeError, match="`label` must be a torch.Tensor or numpy array, got list"):
        as_tissue([[1, 2]], "label")
    with pytest.raises(TypeError, match="`scan` must be a torch.Tensor or numpy array, got str"):
        as_tensor("scan.nii.gz", "scan")
    with pytest.raises(ValueError, match=r"affine must be 4x4, got shape \(3, 3\)"):
        affine_of(object(), default=np.eye(3))
    assert np.array_equal(affine_of(object()), np.eye(4))
    assert as_tissue(np.zeros((1, 2, 3, 4), np.float32)).dtype.is_floating_point is False    # float labels -> uint8
