"""Scale-out on Ray Serve: a real local Ray cluster, two replicas of the core with the reference
backend, commits rolled out while clients speak, and one commit that fails.

The cluster is this module's own (``alltalk_host.ray.local``: ``RAY_TMPDIR`` and ``HOME`` in the
test's folder, token auth on, no usage stats) and is shut down whatever happens; ``ray stop``,
which ends every Ray process on the machine, is never used. Skipped where Ray is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import wave
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from alltalk_host.errors import HostError
from alltalk_host.host import Host, HostOptions
from alltalk_host.ray.replica import Replica, ReplicaState
from alltalk_host.speech import SpeechInput

from .conftest import ConfigRepoHelper

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason="Ray is not installed: pip install 'alltalk-host[ray]' (make test does)")

CLIENTS = 4


# --- the replica's rules, without a cluster -------------------------------------------------

async def test_replica_keeps_its_commit_when_a_new_one_fails(
        config_repo: ConfigRepoHelper, tmp_path: Path) -> None:
    replica = Replica(HostOptions(config_repo=config_repo.path, state_dir=tmp_path / "state",
                                  directed=True), "r1")
    await replica.start()
    try:
        # Directed: it chose nothing at start, and serves only what it is told.
        assert replica.state == ReplicaState.STARTING and replica.commit is None
        good = config_repo.initial
        await replica.reconfigure({"commit": good})
        assert (replica.state, replica.commit) == (ReplicaState.SERVING, good)

        silent = config_repo.change("silent", "models.toml",
                                    "default.models.reference.settings.amplitude", 0.0)
        await replica.reconfigure({"commit": silent})  # no raise: Ray would replace it
        status = replica.status()
        assert status["state"] == ReplicaState.FAILED
        assert status["commit"] == good and status["target"] == silent
        assert status["last_error"]["commit"] == silent
        result = await replica.host.speech.synthesize(SpeechInput("Hi."))
        assert result.provenance.commit == good

        await replica.reconfigure({"commit": good})  # told the old one again: serving
        assert replica.status()["state"] == ReplicaState.SERVING
        assert replica.status()["last_error"]["commit"] == silent  # still reported
    finally:
        await replica.stop()


async def test_a_replica_with_nothing_to_keep_raises(config_repo: ConfigRepoHelper,
                                                      tmp_path: Path) -> None:
    bad = config_repo.change("silent", "models.toml",
                             "default.models.reference.settings.amplitude", 0.0)
    replica = Replica(HostOptions(config_repo=config_repo.path, state_dir=tmp_path / "state",
                                  directed=True), "r1")
    await replica.start()
    try:
        with pytest.raises(HostError):
            await replica.reconfigure({"commit": bad})
        assert replica.state == ReplicaState.STARTING
    finally:
        await replica.stop()


def test_a_replica_needs_a_directed_host(config_repo: ConfigRepoHelper, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directed"):
        Replica(HostOptions(config_repo=config_repo.path, state_dir=tmp_path), "r1",
                host=Host.__new__(Host))


# --- a real cluster -------------------------------------------------------------------------

@needs_ray
@pytest.mark.timeout(240)
async def test_rollouts_under_load_drop_nothing(config_repo: ConfigRepoHelper,
                                                tmp_path: Path) -> None:
    from alltalk_host.ray.local import LocalCluster
    from alltalk_host.ray.rollout import Fleet, FleetSpec

    repo = config_repo
    # A model load that takes a while, so rollouts overlap requests on every replica.
    repo.set("models.toml", "default.models.reference.settings.load_seconds", 0.3)
    first = repo.commit("slow load")
    second = repo.change("lower", "models.toml", "default.models.reference.settings.pitch_hz",
                         120)
    third = repo.change("higher", "models.toml", "default.models.reference.settings.pitch_hz",
                        180)
    silent = repo.change("silent", "models.toml",
                         "default.models.reference.settings.amplitude", 0.0)
    good = {first, second, third}

    cluster = LocalCluster(tmp_path / "cluster")
    info = await asyncio.to_thread(cluster.__enter__)
    try:
        spec = FleetSpec(config_repo=repo.path, state_dir=tmp_path / "fleet-state", replicas=2,
                         plugins=["reference"])
        async with Fleet(spec, info.dashboard, info.serve, info.token) as fleet:
            deployed = await fleet.apply(first, who="test")
            assert deployed["result"] == "applied", deployed

            answers: list[tuple[int, str | None, str | None, str]] = []
            stop = asyncio.Event()
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=60)) as http:
                clients = [asyncio.create_task(_speak(http, info.serve, i, stop, answers))
                           for i in range(CLIENTS)]
                await asyncio.sleep(0.5)
                results = [await fleet.apply(c, who="test") for c in (second, third)]
                failed = await fleet.apply(silent, who="test")
                await asyncio.sleep(0.5)
                stop.set()
                await asyncio.gather(*clients)

            status = await fleet.status()
    finally:
        await asyncio.to_thread(cluster.close)

    assert [r["result"] for r in results] == ["applied", "applied"], results
    for r in results:
        assert {x["commit"] for x in r["replicas"]} == {r["commit"]}, r

    # The failing commit: each replica refused it and kept serving; the fleet is back on the
    # last good commit, and the failure is recorded with the replica's reason.
    assert failed["result"] == "failed" and failed["rolled_back_to"] == third, failed
    assert {r["state"] for r in failed["replicas"]} == {ReplicaState.FAILED}, failed
    assert {r["commit"] for r in failed["replicas"]} == {third}
    assert {r["commit"] for r in failed["after_rollback"]} == {third}
    assert [r["state"] for r in status["replicas"]] == [ReplicaState.SERVING] * 2, status
    assert {r["commit"] for r in status["replicas"]} == {third}
    assert status["applied"] == third and silent in status["failed"], status

    # Nothing dropped; every answer names a commit that was serving, and a replica.
    codes = Counter(code for code, *_ in answers)
    assert codes and set(codes) == {200}, codes
    assert len(answers) >= 10 * CLIENTS, len(answers)  # bounds on counts, never timings
    commits = {commit for _, commit, _, _ in answers}
    assert commits <= good and silent not in commits, commits
    assert third in commits
    assert len({replica for _, _, replica, _ in answers}) == 2, Counter(
        replica for _, _, replica, _ in answers)  # both replicas served, each named
    assert {route for *_, route in answers} == {"/tts", "/v1/audio/speech"}


async def _speak(http: aiohttp.ClientSession, base: str, n: int, stop: asyncio.Event,
                 answers: list[tuple[int, str | None, str | None, str]]) -> None:
    """One client: /tts and OpenAI's route in turn until told to stop; every answer kept."""
    i = 0
    while not stop.is_set():
        i += 1
        if (i + n) % 2:
            route, body = "/tts", {"text": f"Client {n}, request {i}."}
        else:
            route, body = "/v1/audio/speech", {"model": "tts-1", "voice": "alloy",
                                               "input": f"Client {n}, request {i}.",
                                               "response_format": "wav"}
        try:
            async with http.post(base + route, json=body) as resp:
                data = await resp.read()
                code = resp.status
                if code == 200:
                    _check_wav(data)
                answers.append((code, resp.headers.get("X-AllTalk-Commit"),
                                resp.headers.get("X-AllTalk-Replica"), route))
                model = resp.headers.get("X-AllTalk-Model", "")
                assert code != 200 or model.startswith("reference; generation="), model
        except (aiohttp.ClientError, TimeoutError) as exc:
            answers.append((0, None, None, f"{route}: {exc!r}"))


def _check_wav(data: bytes) -> None:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnframes() > 0 or len(data) > 44
