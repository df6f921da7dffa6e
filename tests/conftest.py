"""Fixtures: a fresh config repo (real git, from the real template), host and server per test.

Fixtures only: what tests share besides them is in ``helpers.py``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from alltalk_host.host import Host, HostOptions
from alltalk_host.web.app import create_app

from . import strict_reference
from .helpers import ROOT, TINY_XTTS_AUDIO_TOKENS, ConfigRepoHelper


def built_once(factory: pytest.TempPathFactory, name: str, code: str, *args: str) -> Path:
    """A folder of test models that ``code`` (run in a child process, so torch stays out of
    this one, with the folder and ``args`` as its arguments) builds once per run. Under
    pytest-xdist the workers share it: the first to need it builds it under a lock while the
    other waits (each used to build its own: 10-25 s of CPU each time). Tests only read it."""
    base = factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, built = shared / name, shared / f"{name}.built"  # the folder holds models only
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not built.exists():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed half-way
            root.mkdir()
            subprocess.run([sys.executable, "-c", code, str(root), *args], cwd=ROOT,
                           check=True, capture_output=True, timeout=600)
            built.touch()
    return root


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny real Piper-format voices: test-voice (one speaker) and test-voice-multi (three)."""
    return built_once(tmp_path_factory, "models", (
        "import sys; from tools.build_test_voice import build; "
        "build(sys.argv[1] + '/test-voice', speakers=1, seed=0); "
        "build(sys.argv[1] + '/test-voice-multi', speakers=3, seed=1)"))


@pytest.fixture(scope="session")
def xtts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny random-weight XTTS checkpoints (tiny-xtts-0, tiny-xtts-1). Every generation
    runs to the GPT's audio-token cap, and the decoder (full size) takes most of a request's
    time: a cap of 32 (1.35 s of audio) instead of the builder's 64 halves every XTTS request
    of the suite."""
    return built_once(tmp_path_factory, "xtts", (
        "import sys; from tools.build_tiny_xtts import build; "
        "cap = int(sys.argv[2]); "
        "build(sys.argv[1] + '/tiny-xtts-0', seed=0, gpt_max_audio_tokens=cap); "
        "build(sys.argv[1] + '/tiny-xtts-1', seed=1, gpt_max_audio_tokens=cap)"),
        str(TINY_XTTS_AUDIO_TOKENS))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's own ALLTALK_* variables must not leak into a test, and no test may
    write generated audio into the checkout (the template's outputs.dir is var/outputs)."""
    for key in list(os.environ):
        if key.startswith("ALLTALK_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ALLTALK_OUTPUTS__DIR", str(tmp_path / "outputs"))


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """A test that runs `serve` in-process sets up the root logger for a real server (a stream
    handler on the stderr of the moment, then closed): later tests must get pytest's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "process_workers: the test's config repo keeps the default isolation "
        "(every model in a worker process); unmarked tests serve inline, see ConfigRepoHelper")


# The longest test files (their summed test times in a run of make test), longest first. Each
# worker takes a file at a time (--dist loadfile): a long file given out last keeps one worker
# busy while the other has nothing left. xdist gives files out by their number of tests unless
# told not to (--no-loadscope-reorder, Makefile): then a one-test file of 90 s (Ray's nodes)
# ran last, alone, and this order was not used at all.
LONG_FILES = ("test_xtts.py", "test_kokoro.py", "test_onnx.py", "test_kokoro_host.py",
              "test_wyoming.py", "test_ray_cli.py", "test_plugin_kit.py", "test_ray_nodes.py",
              "test_xtts_gpu.py", "test_workers.py", "test_commit_hostile.py", "test_swaps.py",
              "test_voice_library.py", "test_crash_commits.py", "test_wyoming_hostile.py",
              "test_drain.py", "test_wheel_install.py", "test_ray.py", "test_apply.py",
              "test_conformance.py", "test_commit_untrusted.py", "test_on_demand.py",
              "test_openai_api.py", "test_generate.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as found


@pytest.fixture
def config_repo(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ConfigRepoHelper]:
    process = request.node.get_closest_marker("process_workers") is not None
    helper = ConfigRepoHelper(tmp_path / "config", isolation="process" if process else "inline")
    yield helper
    helper.repo.close()


@pytest.fixture
def host_options(tmp_path: Path, config_repo: ConfigRepoHelper) -> Callable[..., HostOptions]:
    """Options for a test host. Every one also has the strict-reference backend
    (tests/strict_reference.py), for the models that check the host never over-admits;
    ``extra_plugins`` given here are added to it."""
    def make(**overrides: Any) -> HostOptions:
        extra = [("strict_reference", strict_reference), *overrides.pop("extra_plugins", [])]
        values: dict[str, Any] = {"config_repo": config_repo.path,
                                  "state_dir": tmp_path / "state", "extra_plugins": extra}
        values.update(overrides)
        return HostOptions(**values)
    return make


@pytest.fixture
def start_server(aiohttp_client: Any, host_options: Callable[..., HostOptions]
                 ) -> Callable[..., Any]:
    """Start a real server on loopback; by default wait until it is ready."""
    async def start(wait: bool = True, **overrides: Any) -> TestClient:
        client = await aiohttp_client(create_app(Host(host_options(**overrides))),
                                      server_kwargs={"handler_cancellation": True})
        if wait:
            for _ in range(400):
                if (await client.get("/health/ready")).status == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the server did not become ready")
        return client
    return start


@pytest.fixture
async def ray_front(host_options: Callable[..., HostOptions], config_repo: ConfigRepoHelper,
                    tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """``await ray_front("r1", **host_options)``: a replica serving the config's head behind
    its own Ray front (served by uvicorn, as Serve's proxy does), its state where the
    deployment keeps it; the front's base URL. Fronts share ``tmp_path / "ray"``, the
    deployment's state_dir."""
    import uvicorn
    from starlette.requests import Request

    from alltalk_host.ray.board import Board, MemoryStore
    from alltalk_host.ray.front import RayFront
    from alltalk_host.ray.replica import Replica

    running: list[tuple[Replica, Any, asyncio.Task[None]]] = []

    async def start(replica_id: str = "r1", *, board: Any = None,
                    token_sha256: str | None = None, **overrides: Any) -> str:
        shared = tmp_path / "ray"
        board = board or Board(MemoryStore())  # this front's own, unless shared
        replica = Replica(host_options(state_dir=shared / "replicas" / replica_id,
                                       directed=True, **overrides), replica_id,
                          node=f"node-{replica_id}", board=board)
        await replica.start()
        await replica.reconfigure({"commit": config_repo.head})
        front = RayFront(replica, shared_dir=shared, board=board, token_sha256=token_sha256)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            response = await front.handle(Request(scope, receive))
            await response(scope, receive, send)

        server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off",
                                               ws="none", http="h11"))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        running.append((replica, server, task))
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.02)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for replica, server, task in running:
        server.should_exit = True
        await task
        await replica.stop()
