"""What the tests share besides fixtures: the checkout's root, a config repo helper, readers of
replies (WAV, error bodies, pitch), waits on a server's status, and plain requests to a host
served in a child process.

Test modules import these from here, never from ``conftest.py`` (pytest imports conftest files
itself; a test module that imports one as well can get a second copy of it). A host served in a
child process, and a free port, come from ``tools/server.py``, which the benchmarks use too.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import urllib.request
import wave
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import git
import numpy as np
import tomlkit
from aiohttp.test_utils import TestClient

from alltalk_host.config.repo import init_repo
from alltalk_host.config.template import template_dir

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = template_dir()  # the packaged template, as `config init` copies it
TINY_XTTS_AUDIO_TOKENS = 32  # the GPT cap of the tests' tiny XTTS checkpoints (conftest)


class ConfigRepoHelper:
    """A real config repo made from the template, with shortcuts for editing and committing.

    With ``reference=True`` (most tests) a second commit swaps the template's models for the
    fast reference backend's; ``initial`` is the commit the tests start from. That commit also
    sets ``isolation``: "inline" unless a test is marked ``process_workers`` (conftest), since a
    worker process per model and test costs the suite minutes and most tests are about
    something else; the template's own repo (``reference=False``) keeps its process default.
    """

    def __init__(self, path: Path, reference: bool = True, isolation: str = "inline") -> None:
        self.path = path
        # file -> (its text as last written here, the parsed document): set() parses a file
        # once, not at every change (tomlkit took a third of a 261-commit test's time).
        self._docs: dict[str, tuple[str, tomlkit.TOMLDocument]] = {}
        self.initial = init_repo(path, TEMPLATE)
        self.repo = git.Repo(path)
        if reference:
            self.write("models.toml", (Path(__file__).parent / "reference_models.toml").read_text())
            self.set("settings.toml", "default.default_model", "reference")
            self.set("settings.toml", "default.workers.isolation", isolation)
            self.initial = self.commit("tests: serve the reference backend")

    def set(self, file: str, dotted: str, value: Any) -> None:
        """Set ``a.b.c = value`` in a TOML file of the working tree (None removes it)."""
        target = self.path / file
        text = target.read_text() if target.exists() else ""
        cached = self._docs.get(file)
        doc = cached[1] if cached and cached[0] == text else tomlkit.parse(text)
        *parents, last = dotted.split(".")
        table = doc
        for part in parents:
            if part not in table:
                table[part] = tomlkit.table()
            table = table[part]
        if value is None:
            table.pop(last, None)
        else:
            table[last] = value
        text = tomlkit.dumps(doc)
        target.write_text(text)
        self._docs[file] = (text, doc)

    def write(self, file: str, text: str) -> None:
        (self.path / file).write_text(text)

    def commit(self, message: str = "test change") -> str:
        self.repo.git.add("-A")
        self.repo.index.commit(message)
        return self.repo.head.commit.hexsha

    def change(self, message: str, file: str, dotted: str, value: Any) -> str:
        self.set(file, dotted, value)
        return self.commit(message)

    def model(self, name: str, **settings: Any) -> None:
        """Define (or redefine) a reference model, host keys and backend settings mixed
        (``workers={...}`` is its ``[models.NAME.workers]`` table)."""
        host_keys = {"instances", "keep_loaded", "low_memory_swap", "default_voice",
                     "default_speed", "default_language", "workers", "on_demand",
                     "idle_unload_s", "warmup_text"}
        base = f"default.models.{name}"
        self.set("models.toml", f"{base}.backend", settings.pop("backend", "reference"))
        for key, value in settings.items():
            path = f"{base}.{key}" if key in host_keys else f"{base}.settings.{key}"
            self.set("models.toml", path, value)

    @property
    def head(self) -> str:
        return self.repo.head.commit.hexsha


async def wait_until(client: TestClient, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float = 20.0, headers: Mapping[str, str] | None = None
                     ) -> dict[str, Any]:
    """Poll /control/status (sending ``headers``: say, the control token) until
    ``predicate(status)`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await client.get("/control/status", headers=headers)
        status = await resp.json()
        if predicate(status):
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached; last status: {status}")
        await asyncio.sleep(0.05)


async def switch_under_load(client: TestClient, models: list[str], text: str,
                            clients: int, pause_s: float) -> list[tuple[int, str]]:
    """Switch the default model to each of ``models`` in turn while ``clients`` keep
    speaking; every response's (status, X-AllTalk-Model)."""
    results: list[tuple[int, str]] = []
    running = True

    async def speaker() -> None:
        while running:
            resp = await client.post("/tts", json={"text": text})
            await resp.read()
            results.append((resp.status, resp.headers.get("X-AllTalk-Model", "")))

    workers = [asyncio.create_task(speaker()) for _ in range(clients)]
    for model in models:
        resp = await client.post("/control/models/switch", json={"model": model})
        assert resp.status == 200, await resp.text()
        await asyncio.sleep(pause_s)
    running = False
    await asyncio.gather(*workers)
    return results


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        frames = w.readframes(w.getnframes())
        return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32767, w.getframerate()


def dominant_pitch(samples: np.ndarray, rate: int, lo: float = 50, hi: float = 500) -> float:
    """The fundamental frequency, from the autocorrelation peak between ``lo`` and ``hi`` Hz."""
    x = samples - samples.mean()
    spectrum = np.fft.rfft(x, n=2 * len(x))
    corr = np.fft.irfft(np.abs(spectrum) ** 2)[: len(x)]
    first, last = int(rate / hi), int(rate / lo)
    lag = first + int(np.argmax(corr[first:last]))
    return rate / lag


async def post(client: TestClient, path: str, **body: Any) -> Any:
    """POST ``body`` as JSON."""
    return await client.post(path, json=body)


async def status_of(client: TestClient) -> dict[str, Any]:
    """The body of /control/status."""
    return await (await client.get("/control/status")).json()


async def error_of(resp: Any) -> dict[str, Any]:
    """The error object of a JSON error reply."""
    body = await resp.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    return body["error"]


def get_json(url: str) -> Any:
    """GET ``url`` (on a server in a child process) and read its JSON body."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def send_and_forget(request: urllib.request.Request) -> None:
    """Send ``request`` to a server the test is about to kill: the reply, or the error of a
    connection cut off, is dropped."""
    with contextlib.suppress(OSError):
        urllib.request.urlopen(request, timeout=60).read()


async def read_events(resp, until, limit: int = 200) -> list[dict]:
    """Parse SSE frames from ``resp`` until ``until(event)`` holds (heartbeats skipped)."""
    events: list[dict] = []
    kind, data = None, None
    while len(events) < limit:
        line = (await asyncio.wait_for(resp.content.readline(), 30)).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and kind is not None:
            if kind not in ("heartbeat",):
                events.append({"event": kind, **(data or {})})
                if until(events[-1]):
                    return events
            kind, data = None, None
    raise AssertionError(f"no matching event in {events}")
