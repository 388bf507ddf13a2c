"""Prefetcher: order, early stop without hanging, errors re-raised naming the item."""
import itertools
import threading
import time

import numpy as np
import pytest
import torch

from synthgen.data import PrefetchError, Prefetcher


def _load(i):
    return {"x": np.full((2, 3), i, np.float32), "name": f"item{i}"}


def test_items_arrive_in_order_as_tensors():
    with Prefetcher(_load, range(10), depth=3) as pf:
        out = list(pf)
    assert [o["name"] for o in out] == [f"item{i}" for i in range(10)]
    assert all(isinstance(o["x"], torch.Tensor) and float(o["x"][0, 0]) == i for i, o in enumerate(out))


def test_memmaps_tuples_and_device(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.uint8).reshape(2, 3))
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    pf = Prefetcher(lambda i: (mm, i), range(2), device="cpu")
    (a, i0), (b, i1) = list(pf)
    assert a.dtype == torch.uint8 and a.tolist() == [[0, 1, 2], [3, 4, 5]] and (i0, i1) == (0, 1)
    assert not pf.pin_memory   # pinned memory only for CUDA targets


def test_early_stop_does_not_hang_on_endless_items():
    started = threading.active_count()
    pf = Prefetcher(lambda i: np.zeros(4), itertools.count(), depth=2)
    first = [next(pf) for _ in range(3)]
    assert len(first) == 3
    t0 = time.monotonic()
    pf.close()
    pf.close()   # twice is fine
    assert time.monotonic() - t0 < 5 and not pf._thread.is_alive()
    assert threading.active_count() <= started
    with pytest.raises(StopIteration):
        next(pf)


def test_break_out_of_context_manager_stops_worker():
    with Prefetcher(lambda i: i, itertools.count(), depth=1) as pf:
        for i in pf:
            if i == 2:
                break
    assert not pf._thread.is_alive()


def test_worker_error_is_reraised_naming_the_item():
    def load(i):
        if i == 3:
            raise OSError("disk on fire")
        return i
    pf = Prefetcher(load, range(10), depth=2)
    assert [next(pf) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(PrefetchError, match="loading item 3 failed: OSError: disk on fire") as info:
        next(pf)
    assert isinstance(info.value.__cause__, OSError)
    assert not pf._thread.is_alive()
    with pytest.raises(StopIteration):
        next(pf)


def test_items_iterator_error_is_reraised():
    def items():
        yield 0
        raise KeyError("bad index")
    with Prefetcher(lambda i: i, items()) as pf:
        assert next(pf) == 0
        with pytest.raises(PrefetchError, match="loading item '<next item>' failed: KeyError"):
            next(pf)


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="`depth` must be an int >= 1, got 0"):
        Prefetcher(lambda i: i, range(3), depth=0)


@pytest.mark.gpu
def test_cuda_copies_arrive_on_device_in_order():
    with Prefetcher(lambda i: np.full((64, 64, 64), i, np.float32), range(6), depth=2, device="cuda") as pf:
        assert pf.pin_memory
        out = [float(x[0, 0, 0]) for x in pf]
    assert out == [float(i) for i in range(6)]


def _within(seconds, fn):
    """``fn()``'s result or exception, or a failure if it has not answered after ``seconds`` (a hang)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as err:     # handed back to the test's thread
            box["error"] = err
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"no answer after {seconds} s: the consumer hangs"
    if "error" in box:
        raise box["error"]
    return box["value"]


class _FakeStream:
    def wait_event(self, event):
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    """Just enough of torch.cuda for the prefetcher's CUDA path on a CPU; ``set_device`` refuses an index-less
    device as torch does ("Expected a torch.device with a specified index")."""
    def set_device(device):
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError("Expected a torch.device with a specified index or an integer, but got:cuda")
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "Event", lambda *a, **k: type("E", (), {"record": lambda self, s=None: None})())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: __import__("contextlib").nullcontext())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_index_less_cuda_device_gets_the_current_index_and_items_arrive(fake_cuda):
    # torch.device("cuda") is what resolve_device gives a single-GPU run: the worker's set_device needs an index
    pf = Prefetcher(lambda i: i * 10, range(3), depth=1, device="cuda")
    assert pf.device == torch.device("cuda", 0)
    assert _within(10, lambda: list(pf)) == [0, 10, 20]


def test_worker_set_up_failure_is_an_error_not_a_hang(fake_cuda, monkeypatch):
    def broken(device=None):
        raise RuntimeError("CUDA error: out of streams")
    monkeypatch.setattr(torch.cuda, "Stream", broken)
    pf = Prefetcher(lambda i: i, range(3), depth=1, device="cuda:0")
    with pytest.raises(PrefetchError, match=r"'<stream set-up>' failed: RuntimeError: CUDA error: out of streams"):
        _within(10, lambda: next(pf))
    assert not pf._thread.is_alive()


def test_a_worker_that_dies_silently_is_noticed():
    class Mute(Prefetcher):      # a worker that loses its error instead of handing it over
        def _put(self, entry):
            return entry[0] != "error" and super()._put(entry)

    def load(i):
        if i == 1:
            raise OSError("lost")
        return i
    pf = Mute(load, range(3), depth=1)
    assert next(pf) == 0
    with pytest.raises(PrefetchError, match="the prefetch thread stopped without a result"):
        _within(10, lambda: next(pf))
