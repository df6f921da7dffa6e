"""The outputs folder: retention touches only the host's files; an unusable folder says so."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from .helpers import wait_until

TWO_DAYS = 2 * 86400


async def test_retention_deletes_only_files_the_host_wrote(start_server, tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    mine = outputs / "my_podcast_episode.mp3"
    mine.write_bytes(b"ID3 not ours")
    lookalike = outputs / "st_output_20240101_120000_1.wav"  # a name like the host's own
    lookalike.write_bytes(b"RIFF not ours either")
    for path in (mine, lookalike):
        os.utime(path, (time.time() - TWO_DAYS,) * 2)
    client = await start_server()
    first = await (await client.post("/api/tts-generate", data={"text_input": "One."})).json()
    old = outputs / first["output_file_url"].rsplit("/", 1)[1]
    os.utime(old, (time.time() - TWO_DAYS,) * 2)  # the host's own file, now past max_age_s
    second = await (await client.post("/api/tts-generate", data={"text_input": "Two."})).json()
    assert second["status"] == "generate-success"
    assert not old.exists()  # pruned: the host wrote it
    assert mine.read_bytes() == b"ID3 not ours" and lookalike.exists()
    assert (await client.get(second["output_file_url"])).status == 200


async def test_an_unusable_outputs_folder_is_reported(start_server, tmp_path, monkeypatch,
                                                      caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    monkeypatch.setenv("ALLTALK_OUTPUTS__DIR", str(blocker / "outputs"))
    caplog.set_level(logging.INFO, logger="alltalk_host.web.outputs_check")
    client = await start_server()
    resp = await client.post("/api/tts-generate", data={"text_input": "Hello."})
    body = await resp.json()
    assert resp.status == 507 and body["status"] == "generate-failure", body
    assert "cannot take files" in body["error"]
    resp = await client.post("/api/previewvoice/", data={"voice": "male_01"})
    assert (await resp.json())["status"] == "generate-failure"
    status = await wait_until(client, lambda s: s["outputs"] is not None)
    assert status["outputs"]["writable"] is False
    assert "cannot take files" in status["outputs"]["problem"]
    for _ in range(100):  # the watcher logs once it has seen the serving commit
        if "cannot take files" in caplog.text:
            break
        await client.get("/health/live")
        await asyncio.sleep(0.05)
    assert "cannot take files" in caplog.text
    # Speech that stores nothing is unaffected.
    assert (await client.post("/tts", json={"text": "Hello."})).status == 200


def test_two_writers_sharing_a_folder_never_overwrite_each_other(tmp_path):
    """Ray's replicas share one outputs folder, each with its own counter: the same name in
    the same second from both must give two files, each with its own audio."""
    from alltalk_host.outputs import OutputStore

    replicas = [OutputStore(tmp_path / "shared"), OutputStore(tmp_path / "shared")]
    paths = [store.write("st_output", f"RIFF audio {i}".encode())
             for i, store in enumerate(replicas * 3)]
    assert len(set(paths)) == 6, paths
    for i, path in enumerate(paths):
        assert path.read_bytes() == f"RIFF audio {i}".encode()
    assert sorted(p.name for p in (tmp_path / "shared").glob("*.wav")) == sorted(
        p.name for p in paths)  # no empty placeholder left behind


async def test_a_fixed_file_name_never_replaces_a_file_the_host_did_not_write(start_server,
                                                                            tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    theirs = outputs / "notes.wav"
    theirs.write_bytes(b"RIFF the user's own")
    client = await start_server()

    async def generate(name: str) -> str:
        resp = await client.post("/api/tts-generate", data={
            "text_input": "Hello.", "output_file_name": name, "output_file_timestamp": "false"})
        body = await resp.json()
        assert resp.status == 200, body
        assert (await client.get(body["output_file_url"])).status == 200
        return body["output_file_url"]

    # Someone else's file keeps its bytes; the reply names the file that was written.
    assert await generate("notes") == "/audio/notes_1.wav"
    assert theirs.read_bytes() == b"RIFF the user's own"
    # The host's own file of that name is replaced, as output_file_timestamp=false asks.
    assert await generate("notes") == "/audio/notes_1.wav"
    assert await generate("fresh") == "/audio/fresh.wav"
    assert await generate("fresh") == "/audio/fresh.wav"
    assert sorted(p.name for p in outputs.iterdir() if not p.name.startswith(".")) == [
        "fresh.wav", "notes.wav", "notes_1.wav"]
    assert "notes.wav" not in (outputs / ".alltalk-host-written").read_text().split()


async def test_the_outputs_507_does_not_show_the_servers_paths(start_server, tmp_path,
                                                             monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    monkeypatch.setenv("ALLTALK_OUTPUTS__DIR", str(blocker / "outputs"))
    client = await start_server()
    resp = await client.post("/api/tts-generate", data={"text_input": "Hello."})
    assert resp.status == 507
    assert str(tmp_path) not in await resp.text()
