"""Issue 9, section 4: nothing wedges the controller.

A swap whose restore fails, a remote that never answers, one environment variable: each used to
leave control stuck or wrong until someone restarted the host by hand.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time

from .helpers import error_of, post, status_of, wait_until

# --- a low-memory swap whose restore fails -------------------------------------------------

async def test_a_swap_whose_restore_fails_leaves_the_model_out_and_the_next_apply_loads_it(
        start_server, config_repo, tmp_path, monkeypatch):
    weights = tmp_path / "weights.toml"
    weights.write_text("pitch_hz = 150\n")
    monkeypatch.setenv("ALLTALK_MODELS_DIR", str(tmp_path))  # a commit names files inside it
    config_repo.model("reference", low_memory_swap=True, model_file=weights.name)
    config_repo.commit("reference: unload first, weights from a file")
    client = await start_server()

    # The weights go away under the serving model: the new copy cannot load, and neither can
    # the old one the unload-first swap tries to put back.
    weights.unlink()
    broken = config_repo.change("higher", "models.toml",
                                "default.models.reference.settings.pitch_hz", 200)
    resp = await post(client, "/control/config/apply", commit=broken)
    assert resp.status == 422 and (await error_of(resp))["code"] == "model_load_failed"

    # The host says the model is gone instead of pretending it serves.
    status = await status_of(client)
    assert not [m for m in status["models"]
                if m["name"] == "reference" and m["state"] == "serving"], status["models"]
    assert status["ready"] is False
    assert (await client.get("/health/ready")).status == 503
    assert (await client.get("/health/models/reference")).status == 503
    resp = await post(client, "/tts", text="Hello there")
    error = await error_of(resp)
    assert resp.status == 503 and error["code"] == "not_ready", error
    assert "reference" in error["message"]

    # The weights are back: the next good commit loads the model again and is not marked
    # failed (it used to fail with a KeyError, for this and every later commit).
    weights.write_text("pitch_hz = 150\n")
    good = config_repo.change("lower", "models.toml",
                              "default.models.reference.settings.pitch_hz", 120)
    resp = await post(client, "/control/config/apply", commit=good)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["plan"]["load"] == ["reference"] and body["plan"]["reload"] == []
    assert (await client.get("/health/ready")).status == 200
    resp = await post(client, "/tts", text="Hello there")
    assert resp.status == 200
    assert resp.headers["X-AllTalk-Commit"] == good
    commits = {c["commit"]: c for c in
               (await (await client.get("/control/config/commits")).json())["commits"]}
    assert commits[broken]["failed"]
    assert not commits[good]["failed"] and commits[good]["known_good"]
    assert commits[good]["serving"]

    # And the one after that is an ordinary swap again.
    again = config_repo.change("again", "models.toml",
                               "default.models.reference.settings.pitch_hz", 130)
    resp = await post(client, "/control/config/apply", commit=again)
    assert resp.status == 200 and (await resp.json())["plan"]["reload"] == ["reference"]


# --- a remote that hangs -------------------------------------------------------------------

class HangingRemote:
    """A git remote over HTTP that accepts connections and never answers (a stalled server).

    ``open`` counts connections the client side has not closed: every git process still
    waiting on the remote holds one.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/config.git"
        self.accepted = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def open(self) -> int:
        with self._lock:
            return len(self._open)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        sel.register(conn, selectors.EVENT_READ)
                        with self._lock:
                            self.accepted += 1
                            self._open.add(conn)
                        continue
                    try:
                        data = sock.recv(65536)  # read the request, never answer it
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(sock)
                        sock.close()
                        with self._lock:
                            self._open.discard(sock)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for sock in self._open:
            sock.close()

    async def until(self, predicate, timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, (
                f"{what}: accepted {self.accepted}, still open {self.open}")
            await asyncio.sleep(0.02)


async def test_a_remote_that_hangs_times_out_and_never_stalls_control(start_server,
                                                                     config_repo):
    remote = HangingRemote()
    try:
        config_repo.repo.create_remote("origin", remote.url)
        config_repo.set("settings.toml", "default.watch.enabled", True)
        config_repo.set("settings.toml", "default.watch.interval_s", 0.05)
        config_repo.set("settings.toml", "default.watch.remote", "origin")
        config_repo.set("settings.toml", "default.watch.fetch_timeout_s", 1)
        config_repo.commit("watch a remote that hangs")
        client = await start_server()

        status = await wait_until(
            client, lambda s: "did not finish in 1 s" in (s["watch"]["last_error"] or ""))
        assert "origin" in status["watch"]["last_error"]
        # Each fetch that timed out is gone with everything it started (git runs a helper
        # process per HTTP remote): a hung remote does not pile up processes and sockets.
        await remote.until(lambda: remote.accepted >= 3, what="three fetches")
        await remote.until(lambda: remote.open <= 1, timeout=5,
                           what="timed-out fetches still connected")

        # While a fetch hangs, control answers: status, a plan, an apply (of a commit that
        # gives the fetch two minutes).
        patient = config_repo.change("patient", "settings.toml",
                                     "default.watch.fetch_timeout_s", 120)
        await remote.until(lambda: remote.open >= 1, what="a fetch under way")
        started = time.monotonic()
        assert (await client.get("/control/status")).status == 200
        assert (await post(client, "/control/config/plan", commit=patient)).status == 200
        resp = await post(client, "/control/config/apply", commit=patient)
        assert resp.status == 200, await resp.text()
        assert time.monotonic() - started < 5
        assert remote.open >= 1  # the fetch was still hanging all along

        # A fetch with two minutes to go does not hold up stopping the host, nor outlive it.
        await asyncio.sleep(1.5)  # past the old timeout: now only the new one can end it
        await remote.until(lambda: remote.open >= 1, what="a patient fetch under way")
        started = time.monotonic()
        await client.close()
        assert time.monotonic() - started < 5
        await remote.until(lambda: remote.open == 0, timeout=5,
                           what="fetches still connected after the host stopped")
    finally:
        remote.close()


# --- the layer of each key ------------------------------------------------------------------

async def test_one_env_variable_claims_only_the_key_it_sets(start_server, monkeypatch):
    monkeypatch.setenv("ALLTALK_MODELS__reference__settings__pitch_hz", "150")
    client = await start_server()
    body = await (await client.get("/control/config/effective")).json()
    keys = {k["key"]: k for k in body["keys"]}
    assert keys["models.reference.settings.pitch_hz"] == {
        "key": "models.reference.settings.pitch_hz", "value": 150, "layer": "env"}
    repo_models = {k: v["layer"] for k, v in keys.items()
                   if k.startswith("models.") and k != "models.reference.settings.pitch_hz"}
    assert "models.reference.settings.voices" in repo_models
    assert "models.reference-low.backend" in repo_models
    assert set(repo_models.values()) == {"repo:models.toml[default]"}, repo_models
    assert keys["default_model"]["layer"] == "repo:settings.toml[default]"
