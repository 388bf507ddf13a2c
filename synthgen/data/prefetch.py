"""Background prefetch: load the next items on a thread, pin them, copy them to the device asynchronously.

Training generates on the device and has no data workers; what it still reads from disk (tissue maps,
lesion masks, real scans) comes through a :class:`Prefetcher`: a daemon thread runs ``load(item)`` for the
next ``depth`` items, converts numpy arrays to tensors, pins them (only when the device is CUDA) and starts
their host-to-device copy (``non_blocking``, on a side stream). The consumer's stream waits for that
copy's event, so loading, copying and compute overlap; the queue is bounded, so at most ``depth`` items
are held (in pinned memory, with their device copies in flight).

On CUDA ``load`` itself runs on the side stream, so a ``load`` that synthesises on the device (the training
loop's ``generate_ahead``) makes step n + 1's batch while step n trains, and its host work (launches, host
syncs of lesion placement) happens on the worker thread, off the training thread.
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

_DONE = object()


class PrefetchError(RuntimeError):
    """Loading an item failed in the prefetch thread; the original exception is the ``__cause__``."""


def _to_tensors(value):
    """numpy arrays -> tensors (memmaps are read here, on the worker thread), recursively in dict/list/tuple."""
    if isinstance(value, np.ndarray):
        # np.memmap is read-only and lazily paged: copying here does the disk read off the main thread
        return torch.from_numpy(np.array(value, copy=True) if isinstance(value, np.memmap) or
                                not value.flags.writeable else np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: _to_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [_to_tensors(v) for v in value]
        return type(value)(out) if not hasattr(value, "_fields") else type(value)(*out)
    return value


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [_map_tensors(v, fn) for v in value]
        return type(value)(out) if not hasattr(value, "_fields") else type(value)(*out)
    return value


def _with_index(device: torch.device) -> torch.device:
    """A CUDA device with its index (``torch.cuda.set_device`` refuses an index-less ``cuda``): the current one."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class Prefetcher:
    """Iterate ``load(item)`` for ``item`` in ``items``, in order, loaded ahead on a background thread.

    Args:
        load: ``item -> value``; numpy arrays and tensors in the value (also inside dict/list/tuple) are
            moved to ``device``, other leaves pass through.
        items: item keys (indices, paths); may be an endless iterator.
        depth: how many items to keep ready (the queue bound), >= 1.
        device: target device; None keeps CPU tensors.
        pin_memory: pin host tensors before the copy; None = only when ``device`` is CUDA.

    Raises:
        ValueError: ``depth`` < 1.
        PrefetchError: (from iteration) ``load`` or ``items`` raised; the message names the item.

    Use as a context manager, or call :meth:`close`: stopping early never hangs.
    """

    def __init__(self, load, items, depth: int = 2, device=None, pin_memory: bool | None = None):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"`depth` must be an int >= 1, got {depth!r}")
        self.load, self.depth = load, depth
        self.device = _with_index(torch.device(device)) if device is not None else None
        cuda = self.device is not None and self.device.type == "cuda"
        self.pin_memory = cuda if pin_memory is None else bool(pin_memory and torch.cuda.is_available())
        self._cuda = cuda
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._ready = None
        if cuda:    # the side stream must see everything the consumer queued before (e.g. tissue map uploads)
            self._ready = torch.cuda.Event()
            self._ready.record(torch.cuda.current_stream(self.device))
        self._thread = threading.Thread(target=self._work, args=(iter(items),), daemon=True,
                                        name="synthgen-prefetch")
        self._thread.start()

    def _put(self, entry) -> bool:
        """Put unless stopped; False when the consumer has gone."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _load(self, item):
        """``load(item)`` with numpy arrays as tensors, host tensors pinned when asked."""
        value = _to_tensors(self.load(item))
        if self.pin_memory:
            value = _map_tensors(value, lambda t: t.pin_memory() if t.device.type == "cpu" else t)
        return value

    def _side_stream(self):
        """The worker's CUDA stream, after everything the consumer queued before the prefetcher started."""
        torch.cuda.set_device(self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_event(self._ready)
        return stream

    def _work(self, items):
        try:
            stream = self._side_stream() if self._cuda else None
        except BaseException as err:    # a dead worker must answer the consumer, never leave it waiting
            self._put(("error", "<stream set-up>", err))
            return
        while not self._stop.is_set():
            item = "<next item>"
            try:
                try:
                    item = next(items)
                except StopIteration:
                    break
                event = None
                if stream is not None:
                    # load on the side stream too: device work that ``load`` launches (on-the-fly synthesis)
                    # overlaps the consumer's stream instead of queueing behind it
                    with torch.cuda.stream(stream):
                        value = _map_tensors(self._load(item), lambda t: t.to(self.device, non_blocking=True))
                        event = torch.cuda.Event()
                        event.record(stream)
                else:
                    value = self._load(item)
                    if self.device is not None:
                        value = _map_tensors(value, lambda t: t.to(self.device))
            except BaseException as err:   # handed to the consumer, re-raised there naming the item
                self._put(("error", item, err))
                return
            if not self._put(("item", item, (value, event))):
                return
        self._put(("done", None, None))

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        kind, item, payload = self._get()
        if kind == "done":
            self._finished = True
            self._thread.join()
            raise StopIteration
        if kind == "error":
            self._finished = True
            self.close()
            if isinstance(payload, StopIteration):   # never let StopIteration leak out of a generator frame
                payload = RuntimeError(repr(payload))
            raise PrefetchError(f"prefetch: loading item {item!r} failed: {type(payload).__name__}: {payload}") \
                from payload
        value, event = payload
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            # the caching allocator must not reuse these blocks until the consumer's stream is done with them
            _map_tensors(value, lambda t: t.record_stream(current) if t.is_cuda else None)
        return value

    def _get(self):
        """The next entry; a worker that died without saying why (it always should) is an error, not a hang."""
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return ("error", "<next item>", RuntimeError("the prefetch thread stopped without a result"))

    def close(self) -> None:
        """Stop the thread and drop queued items; safe to call twice, and after the end."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._finished = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:   # interpreter shutdown: nothing left to clean
            pass
