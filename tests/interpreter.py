"""Triton kernels on a CPU: TRITON_INTERPRET=1 must be set before Triton is first imported.

A test module calls ``run_here()`` before importing Triton. When this process can still turn the interpreter
on without harming compiled GPU tests (no CUDA device, and Triton not yet imported, or imported with the
interpreter), its tests run here; otherwise they are skipped here and ``child_process_test(__file__)`` re-runs
the module in a child process with the interpreter on.
"""
import os
import subprocess
import sys

import pytest
import torch

CHILD_FLAG = "SYNTHGEN_INTERPRETER_CHILD"


def run_here() -> bool:
    here = os.environ.get(CHILD_FLAG) == "1" or (
        not torch.cuda.is_available() and ("triton" not in sys.modules or os.environ.get("TRITON_INTERPRET") == "1"))
    if here:
        os.environ["TRITON_INTERPRET"] = "1"
    return here


def skip_unless_here(here: bool):
    """An autouse fixture skipping every test but the child-process one when the module cannot run here."""
    @pytest.fixture(autouse=True)
    def _interpreter_here(request):
        if not here and request.node.originalname != "test_interpreter_child_process":
            pytest.skip("runs in a child process (test_interpreter_child_process)")
    return _interpreter_here


def child_process_test(module_file: str, here: bool):
    """A test that runs ``module_file`` under the interpreter in a child process (skipped when ``here``)."""
    @pytest.mark.skipif(here, reason="this process runs the interpreter tests itself")
    def test_interpreter_child_process():
        env = dict(os.environ, TRITON_INTERPRET="1", **{CHILD_FLAG: "1"})
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module_file], env=env,
                             capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(module_file)))
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    return test_interpreter_child_process
