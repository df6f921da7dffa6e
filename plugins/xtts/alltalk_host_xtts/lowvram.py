"""Low-VRAM mode: the weights live in pinned CPU memory and visit the GPU for one request.

Two things make it safe and cheap:

- A ``DeviceGate`` per CUDA device, shared by every low-VRAM model copy in the process, lets
  one copy onto the device at a time. A lock per copy would let a reload's warm-up, or a second
  instance, bring a second copy onto the GPU while the first serves: exactly the memory a
  low-VRAM user does not have. The gate empties torch's cache when the last waiting visitor
  leaves, not after every request: emptying synchronises the whole device, and back-to-back
  requests reuse the blocks the previous one freed.
- A ``WeightShuttle`` copies the weights in from pinned memory (faster than pageable, and
  asynchronous) and, afterwards, points the parameters back at their CPU storage. Inference
  changes no weight, so nothing is copied back.

The gates are process-wide state on purpose: a device is one per process, whoever owns the
models on it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any


class DeviceGate:
    """Low-VRAM visitors of one device, one at a time."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._turn = threading.Lock()
        self._count = threading.Lock()
        self._wanting = 0  # visitors inside or waiting
        self._release = release
        self.visits = 0
        self.releases = 0

    @contextlib.contextmanager
    def visit(self) -> Iterator[None]:
        with self._count:
            self._wanting += 1
        self._turn.acquire()
        try:
            self.visits += 1
            yield
        finally:
            with self._count:
                self._wanting -= 1
                last = self._wanting == 0
            try:
                if last:
                    self.releases += 1
                    self._release()
            finally:
                self._turn.release()


_GATES: dict[str, DeviceGate] = {}
_GATES_LOCK = threading.Lock()


def gate_for(device: str, release: Callable[[], None]) -> DeviceGate:
    """The gate of ``device`` ("cuda:0"), created on first use."""
    with _GATES_LOCK:
        gate = _GATES.get(device)
        if gate is None:
            gate = _GATES[device] = DeviceGate(release)
        return gate


class WeightShuttle:
    """A module's parameters and buffers, kept on the CPU (pinned when ``pin``), lent to
    ``device`` for the length of a ``visit()``."""

    def __init__(self, model: Any, device: str, pin: bool) -> None:
        self.device = device
        self._params = [p for p in model.parameters()]
        self._buffers = [(module, name) for module in model.modules()
                         for name, b in module._buffers.items() if b is not None]
        if pin:
            for p in self._params:
                p.data = p.data.pin_memory()
            for module, name in self._buffers:
                module._buffers[name] = module._buffers[name].pin_memory()
        self._host = [p.data for p in self._params]
        self._host_buffers = [module._buffers[name] for module, name in self._buffers]
        self.bytes = sum(t.numel() * t.element_size() for t in self._host + self._host_buffers)

    @contextlib.contextmanager
    def visit(self) -> Iterator[None]:
        try:
            # copy=True: a real copy even where the device is the CPU (the tests), so the
            # weights used during a visit are never the host ones.
            for p, host in zip(self._params, self._host, strict=True):
                p.data = host.to(self.device, non_blocking=True, copy=True)
            for (module, name), host in zip(self._buffers, self._host_buffers, strict=True):
                module._buffers[name] = host.to(self.device, non_blocking=True, copy=True)
            yield
        finally:
            for p, host in zip(self._params, self._host, strict=True):
                p.data = host
            for (module, name), host in zip(self._buffers, self._host_buffers, strict=True):
                module._buffers[name] = host
