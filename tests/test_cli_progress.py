"""The CLI prints a change's phases as the server goes through them (stderr), then the result
(stdout): read from /control/events while its request runs."""

from __future__ import annotations

import asyncio
import contextlib
import io

from alltalk_host.commands import cli
from alltalk_host.commands import cli_words as words


async def run(*args: str) -> tuple[int | str, str, str]:
    """(exit code or error message, stdout, stderr) of the CLI, run in a thread."""
    out, err = io.StringIO(), io.StringIO()

    def call() -> int | str:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                return cli.main(list(args))
            except SystemExit as exc:  # how _call reports a server's error
                return str(exc.code)
    code = await asyncio.to_thread(call)
    return code, out.getvalue(), err.getvalue()


async def test_config_apply_prints_each_phase_then_the_result(start_server, config_repo,
                                                              monkeypatch):
    client = await start_server(control_token="tok")
    config_repo.model("reference", load_seconds=0.3, pitch_hz=150)
    commit = config_repo.commit("a model that takes a moment to load")
    monkeypatch.setenv("ALLTALK_CONTROL_TOKEN", "tok")
    url = f"http://127.0.0.1:{client.port}"
    code, out, err = await run("config", "apply", commit[:10], "--url", url)
    assert code == 0
    assert out.startswith(f"applied {commit[:7]}: reference reloaded")
    lines = err.splitlines()
    assert [line.split()[2] for line in lines] == [
        "apply", "planning", "loading", "warming", "checking", "switching", "done"], err
    assert lines[0].endswith(f"apply of {commit[:7]} started")
    assert "loading reference (last time" in lines[2]
    elapsed = [float(line.split()[0]) for line in lines]
    assert elapsed == sorted(elapsed)


async def test_a_failed_change_prints_why_and_what_still_serves(start_server, config_repo):
    client = await start_server()
    bad = config_repo.change("broken", "models.toml",
                             "default.models.reference.settings.model_file", "missing.toml")
    url = f"http://127.0.0.1:{client.port}"
    code, out, err = await run("config", "apply", bad[:10], "--url", url)
    assert str(code).startswith("error (model_load_failed)") and out == ""
    last = err.splitlines()[-1]
    assert "failed: " in last and "missing.toml" in last
    assert last.endswith(f"(still serving {config_repo.initial[:7]})")


async def test_the_failure_line_and_an_unchanged_switch(start_server, config_repo):
    client = await start_server()
    url = f"http://127.0.0.1:{client.port}"
    code, out, err = await run("models", "switch", "reference", "--url", url)
    assert code == 0 and out.startswith("unchanged") and err == ""  # no operation, no phases
    line = words.phase({"phase": "failed", "elapsed_s": 0.5, "reason": "load failed: x",
                        "still_serving": "3f2a9c1deadbeef"})
    assert line == "  0.50 s  failed: load failed: x (still serving 3f2a9c1)"
    assert words.phase({"phase": "loading", "elapsed_s": 1, "model": "m", "instance": 2,
                        "instances": 3, "expected_s": 4.25}) == (
        "  1.00 s  loading m (instance 2 of 3) (last time 4.2 s)")
