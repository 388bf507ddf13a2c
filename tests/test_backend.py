import pytest

from synthgen.backend import backend_status, select_backend


def test_cpu_runs_the_reference(monkeypatch):
    monkeypatch.delenv("SYNTHGEN_BACKEND", raising=False)
    assert select_backend("cpu", available=("torch", "triton", "cuda")) == "torch"
    status = backend_status("cpu")
    assert status["torch"] is None and "CUDA device" in status["triton"]


def test_forced_backends_fail_clearly(monkeypatch):
    monkeypatch.setenv("SYNTHGEN_BACKEND", "torch")
    assert select_backend("cpu") == "torch"
    monkeypatch.setenv("SYNTHGEN_BACKEND", "opencl")
    with pytest.raises(ValueError, match="SYNTHGEN_BACKEND must be one of"):
        select_backend("cpu")
    monkeypatch.setenv("SYNTHGEN_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="cannot run: Triton kernels need a CUDA device"):
        select_backend("cpu", available=("torch", "triton"))


def test_forced_backend_missing_for_an_op(monkeypatch):
    import synthgen.backend as backend
    monkeypatch.setattr(backend, "backend_status", lambda device: {"torch": None, "triton": None, "cuda": None})
    monkeypatch.setenv("SYNTHGEN_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="no cuda implementation"):
        backend.select_backend("cuda", available=("torch", "triton"))
    monkeypatch.delenv("SYNTHGEN_BACKEND")
    assert backend.select_backend("cuda", available=("torch", "triton")) == "triton"
