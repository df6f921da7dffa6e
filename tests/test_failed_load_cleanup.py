"""A model whose load or warm-up fails leaves nothing behind: every instance is unloaded, the
failed one included, and what it held is freed, not kept alive by the failure's traceback.

The backend here stands for a GPU model hit by a CUDA out-of-memory error: it holds 64 MiB of
"weights", and the failing call keeps a reference to them in its own frame, as a real load()
does with its local ``model``. It runs inline (``isolation = "inline"``): what is checked is
what the host's own process frees, read from the class's records in this process (a worker
gives all of its memory back when it exits: tests/test_workers.py).
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from alltalk_host import Audio, Backend, ModelContext, SpeechRequest, hookimpl, parse_settings

from .helpers import error_of


class Weights:
    """What a loaded model holds; weak references to it say whether it was freed."""

    def __init__(self) -> None:
        self.data = bytearray(64 * 2**20)


@dataclass(frozen=True)
class HoarderSettings:
    fail_at: str = "warm up"  # "load" or "warm up"


class HoarderBackend(Backend):
    name = "hoarder"
    weights: list[weakref.ref[Weights]] = []  # one per instance that got as far as its weights
    unloaded: list[int] = []  # ids of the instances unload() ran on
    # Per unload(): were its weights gone when it released the cache (as XTTS's unload runs
    # gc.collect() and torch.cuda.empty_cache())?
    freed_at_release: list[bool] = []
    lock = threading.Lock()

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> HoarderSettings:
        parsed = parse_settings(HoarderSettings, settings)
        if parsed.fail_at not in ("load", "warm up", "never"):
            raise ValueError("fail_at: load, warm up or never")
        return parsed

    def __init__(self, settings: HoarderSettings, context: ModelContext) -> None:
        super().__init__(settings, context)
        self._weights: Weights | None = None

    def load(self) -> None:
        weights = Weights()
        with self.lock:
            self.weights.append(weakref.ref(weights))
        self._weights = weights
        if self.settings.fail_at == "load":
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")

    def unload(self) -> None:
        ref = weakref.ref(self._weights) if self._weights is not None else None
        self._weights = None
        gc.collect()  # then a GPU backend empties its cache: it frees only what is unreachable
        with self.lock:
            self.unloaded.append(id(self))
            self.freed_at_release.append(ref is None or ref() is None)

    @property
    def sample_rate(self) -> int:
        return 16000

    def voices(self) -> list[str]:
        return []

    def synthesize(self, request: SpeechRequest) -> Audio:
        weights = self._weights  # noqa: F841 - held by this frame, as a real forward pass does
        if self.settings.fail_at == "warm up":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        t = np.arange(16000) / 16000
        return Audio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)


class Plugin:
    @staticmethod
    @hookimpl
    def alltalk_host_register_backends(register):  # type: ignore[no-untyped-def]
        register(HoarderBackend)


@pytest.fixture(autouse=True)
def fresh_records():
    HoarderBackend.weights.clear()
    HoarderBackend.unloaded.clear()
    HoarderBackend.freed_at_release.clear()


@pytest.mark.parametrize("fail_at", ["load", "warm up"])
@pytest.mark.parametrize("instances", [1, 2])
async def test_a_failed_load_unloads_every_instance_and_frees_what_it_held(
        start_server, config_repo, fail_at, instances):
    client = await start_server(extra_plugins=[("hoarder", Plugin)])
    config_repo.set("models.toml", "default.models.big.backend", "hoarder")
    config_repo.set("models.toml", "default.models.big.instances", instances)
    config_repo.set("models.toml", "default.models.big.workers.isolation", "inline")
    config_repo.set("models.toml", "default.models.big.settings.fail_at", fail_at)
    config_repo.set("settings.toml", "default.default_model", "big")
    commit = config_repo.commit("serve a model that cannot fit")
    resp = await client.post("/control/config/apply", json={"commit": commit})
    error = await error_of(resp)
    assert resp.status == 422 and "CUDA out of memory" in error["message"], error
    assert error["details"]["step"] == fail_at
    # The first instance fails, so exactly one was created, and unload() ran on it.
    assert len(HoarderBackend.weights) == 1 and len(HoarderBackend.unloaded) == 1
    # Unreachable when unload() released the cache: no traceback or frame held it any more.
    assert HoarderBackend.freed_at_release == [True]
    assert HoarderBackend.weights[0]() is None
    resp = await client.post("/tts", json={"text": "Still here."})
    assert resp.headers["X-AllTalk-Commit"] == config_repo.initial


async def test_a_second_instance_failing_unloads_the_first_too(start_server, config_repo,
                                                             monkeypatch):
    """instances = 2: the first loads and warms up, the second's load fails; both go."""
    calls = {"n": 0}
    real_load = HoarderBackend.load

    def load_then_fail(self: HoarderBackend) -> None:
        calls["n"] += 1
        real_load(self)
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory on the second copy")

    client = await start_server(extra_plugins=[("hoarder", Plugin)])
    config_repo.set("models.toml", "default.models.big.backend", "hoarder")
    config_repo.set("models.toml", "default.models.big.instances", 2)
    config_repo.set("models.toml", "default.models.big.workers.isolation", "inline")
    config_repo.set("models.toml", "default.models.big.settings.fail_at", "never")
    config_repo.set("settings.toml", "default.default_model", "big")
    commit = config_repo.commit("two copies, the second cannot fit")
    monkeypatch.setattr(HoarderBackend, "load", load_then_fail)
    resp = await client.post("/control/config/apply", json={"commit": commit})
    error = await error_of(resp)
    assert resp.status == 422 and "second copy" in error["message"], error
    assert len(HoarderBackend.weights) == 2 and len(set(HoarderBackend.unloaded)) == 2
    assert HoarderBackend.freed_at_release == [True, True]
    assert [ref() for ref in HoarderBackend.weights] == [None, None]
