"""A host killed during a model switch leaves the config repo clean and its branch honest: at the
old commit, or at the new one only if the state file says it was applied. A restarted host
serves that commit, finishes a branch move the kill cut short, and switches again."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from alltalk_host.change.state import STATE_FILE, HostState, StateStore
from alltalk_host.config.repo import ConfigRepo
from alltalk_host.config.repo_write import HOST_ACTOR
from tools.server import Server

from .helpers import get_json, send_and_forget, wait_until

SLOW_LOAD_S = 1.5  # reference-low's load: the window for a kill while loading


def porcelain(config_repo) -> str:
    return config_repo.repo.git.status("--porcelain", "--untracked-files=all")


def saved_state(state: Path) -> dict:
    return json.loads((state / STATE_FILE).read_text())


def switch_request(port: int, model: str) -> urllib.request.Request:
    return urllib.request.Request(
        f"http://127.0.0.1:{port}/control/models/switch",
        data=json.dumps({"model": model}).encode(), method="POST",
        headers={"Content-Type": "application/json"})


def switch(port: int, model: str) -> dict:
    with urllib.request.urlopen(switch_request(port, model), timeout=60) as resp:
        return json.load(resp)


def wait_for(port: int, predicate, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate(get_json(f"http://127.0.0.1:{port}/control/status")):
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def kill_just_after_sending(port: int) -> None:
    threading.Thread(target=send_and_forget, args=(switch_request(port, "reference-low"),),
                     daemon=True).start()
    time.sleep(0.03)


def kill_while_loading(port: int) -> None:
    threading.Thread(target=send_and_forget, args=(switch_request(port, "reference-low"),),
                     daemon=True).start()
    wait_for(port, lambda s: any(m["name"] == "reference-low" and m["state"] == "loading"
                                 for m in s["models"]))


def kill_just_after_the_reply(port: int) -> None:
    assert switch(port, "reference-low")["result"] == "applied"


@pytest.mark.parametrize("kill", [kill_just_after_sending, kill_while_loading,
                                  kill_just_after_the_reply],
                         ids=["just-sent", "while-loading", "just-replied"])
def test_a_kill_during_a_switch_leaves_the_repo_clean_and_the_branch_honest(
        config_repo, tmp_path, kill):
    config_repo.model("reference-low", load_seconds=SLOW_LOAD_S)
    base = config_repo.commit("reference-low loads slowly")
    state = tmp_path / "state"
    state.mkdir()
    (state / "local.toml").write_text(f'[outputs]\ndir = "{tmp_path / "outputs"}"\n')
    server = Server(config_repo.path, state)
    try:
        assert get_json(f"{server.base}/control/status")["serving_commit"] == base
        kill(server.port)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)

        assert porcelain(config_repo) == ""
        assert not (Path(config_repo.repo.git_dir) / "index.lock").exists()
        saved = saved_state(state)
        head = config_repo.repo.head.commit
        if head.hexsha != base:  # only a switch that was applied may be on the branch
            assert head.parents[0].hexsha == base and saved["applied"] == head.hexsha
        if kill is kill_while_loading:
            assert head.hexsha == base and saved["applied"] == base
        if kill is kill_just_after_the_reply:
            assert head.hexsha != base

        server = Server(config_repo.path, state)
        status = get_json(f"{server.base}/control/status")
        assert status["serving_commit"] == saved["applied"]
        assert saved["applied"] in saved["known_good"]
        assert config_repo.repo.head.commit.hexsha == saved["applied"]  # the branch says so
        assert porcelain(config_repo) == ""

        # Nothing is wedged: the next switch goes through.
        other = "reference" if status["default_model"] == "reference-low" else "reference-low"
        assert switch(server.port, other)["result"] == "applied"
        assert porcelain(config_repo) == ""
    finally:
        server.stop()


@pytest.mark.parametrize("ref_moved", [False, True], ids=["before-the-move", "checkout-behind"])
async def test_a_branch_move_cut_short_by_a_kill_is_finished_at_start_up(
        start_server, config_repo, tmp_path, ref_moved):
    base = config_repo.initial
    settings = (config_repo.path / "settings.toml").read_text()
    switched = settings.replace('default_model = "reference"', 'default_model = "reference-low"')
    assert switched != settings
    repo = ConfigRepo(config_repo.path)
    new = repo.write_commit(base, "Switch the default model to reference-low", HOST_ACTOR,
                            files={"settings.toml": switched})
    repo.close()
    # What a host killed after saving the applied commit, before the branch followed, leaves.
    store = StateStore(tmp_path / "state")
    store.write(store.encode(HostState(applied=new, attempted=new, known_good=[base, new],
                                       branch_move={"from": base, "to": new})))
    if ref_moved:  # killed between moving the ref and bringing the checkout along
        config_repo.repo.git.update_ref("refs/heads/main", new, base)
        assert porcelain(config_repo) == "M  settings.toml"

    client = await start_server()
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] == new and status["default_model"] == "reference-low"
    assert config_repo.repo.head.commit.hexsha == new
    assert porcelain(config_repo) == ""
    assert (config_repo.path / "settings.toml").read_text() == switched
    assert saved_state(tmp_path / "state")["branch_move"] is None
    resp = await client.post("/tts", json={"text": "Hello there"})
    assert resp.headers["X-AllTalk-Model"] == "reference-low; generation=1"


async def test_a_finished_branch_move_is_forgotten_on_disk(start_server, config_repo,
                                                            tmp_path):
    """Once the branch has moved, the journal is cleared from the state file, so undoing the
    switch by hand (git reset) and restarting cannot replay the move."""
    client = await start_server()
    resp = await client.post("/control/models/switch", json={"model": "reference-low"})
    assert resp.status == 200
    await wait_until(client, lambda s: saved_state(tmp_path / "state")["branch_move"] is None)


def upload_request(port: int, name: str, data: bytes) -> urllib.request.Request:
    boundary = "alltalk-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}.wav\"\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return urllib.request.Request(
        f"http://127.0.0.1:{port}/control/voices", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


@pytest.mark.parametrize("after_s", [0.02, 0.15, 0.4, None], ids=["sent", "decoding",
                                                                   "committing", "replied"])
def test_a_kill_during_a_voice_upload_leaves_the_voice_whole_or_absent(config_repo, tmp_path,
                                                                       after_s):
    """Issue 25: an upload killed at any point leaves a clean repo, and the voice either
    listed with its file or not there at all, at the commit the state file says serves."""
    from .test_voice_library import encoded, tone

    base = config_repo.initial
    state = tmp_path / "state"
    state.mkdir()
    (state / "local.toml").write_text(f'[outputs]\ndir = "{tmp_path / "outputs"}"\n')
    sample = encoded(tone(200, seconds=20.0), "wav")  # a longer decode: a wider window
    server = Server(config_repo.path, state)
    try:
        if after_s is None:
            with urllib.request.urlopen(upload_request(server.port, "ann", sample),
                                        timeout=60) as resp:
                assert json.load(resp)["result"] == "applied"
        else:
            threading.Thread(target=send_and_forget,
                             args=(upload_request(server.port, "ann", sample),),
                             daemon=True).start()
            time.sleep(after_s)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)

        def whole_or_absent() -> bool:
            assert porcelain(config_repo) == ""
            assert not (Path(config_repo.repo.git_dir) / "index.lock").exists()
            listed = (config_repo.path / "voices.toml").is_file() and "ann" in (
                config_repo.path / "voices.toml").read_text()
            assert listed == (config_repo.path / "voices" / "ann.wav").is_file()
            assert listed == (config_repo.repo.head.commit.hexsha != base)
            return listed

        listed = whole_or_absent()
        if after_s is None:
            assert listed

        server = Server(config_repo.path, state)
        # Killed after the commit point (the state file names the new commit and journals the
        # branch move) but before the branch moved: start-up finishes the move, so the voice
        # is listed now. Never the other way round.
        listed_before, listed = listed, whole_or_absent()
        assert listed or not listed_before, "the voice went away at start-up"
        head = config_repo.repo.head.commit.hexsha
        assert get_json(f"{server.base}/control/status")["serving_commit"] == head
        voices = [v["name"] for v in get_json(f"{server.base}/control/voices")["voices"]]
        assert voices == (["ann"] if listed else [])
    finally:
        server.stop()
