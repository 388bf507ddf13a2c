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
