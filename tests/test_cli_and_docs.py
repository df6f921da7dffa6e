"""The CLI against a live server, its --help, and docs that cannot drift from the code."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import git
import pytest

from alltalk_host.commands import cli
from alltalk_host.commands import cli_words as words
from alltalk_host.web.app import CONTROL_TABLES, ROUTE_TABLES

from .helpers import ROOT

README = (ROOT / "README.md").read_text()


def _commands(parser, prefix=()):
    """Every command path of the CLI, e.g. ("config", "apply")."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                path = (*prefix, name)
                yield path
                yield from _commands(sub, path)


COMMANDS = sorted(_commands(cli._parser()))


def test_every_route_is_documented_in_the_readme():
    routes = {(r.method, r.path) for table in (*ROUTE_TABLES, *CONTROL_TABLES) for r in table}
    assert len(routes) >= 14
    for method, path in sorted(routes):
        assert f"`{method} {path}`" in README, f"README does not document {method} {path}"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_cli_command_has_help_and_is_in_the_readme(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: alltalk-host" in capsys.readouterr().out
    if command not in {("config",), ("models",), ("plugin",)}:
        assert re.search(rf"`alltalk-host {' '.join(command)}\b", README), command


def test_config_init_makes_a_repo_and_refuses_to_overwrite(tmp_path, capsys):
    assert cli.main(["config", "init", str(tmp_path / "cfg")]) == 0
    repo = git.Repo(tmp_path / "cfg")
    assert len(list(repo.iter_commits())) == 1
    repo.close()
    assert cli.main(["config", "init", str(tmp_path / "cfg")]) == 2
    assert "not empty" in capsys.readouterr().err


async def run_cli(*args: str) -> str:
    """Run the CLI in a thread (it blocks) while the server runs on this loop."""
    import contextlib
    import io
    out = io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(list(args))
    code = await asyncio.to_thread(call)
    assert code == 0
    return out.getvalue()


async def test_cli_drives_a_live_server(start_server, config_repo, monkeypatch):
    client = await start_server(control_token="tok")
    url = f"http://127.0.0.1:{client.port}"
    monkeypatch.setenv("ALLTALK_CONTROL_TOKEN", "tok")
    out = await run_cli("config", "status", "--url", url)
    assert config_repo.initial in out and "reference" in out

    out = await run_cli("models", "switch", "reference-low", "--url", url)
    switched = config_repo.repo.head.commit.hexsha
    # (the core may add each model's load time: "loaded in 0.1 s")
    assert re.fullmatch(rf"applied {switched[:7]}: reference-low loaded( in [\d.]+ s)?, "
                        r"reference unloaded( \([\d.]+ s\))?\n", out), out
    assert git.Repo(config_repo.path).head.commit.author.name.endswith("(cli)")

    out = await run_cli("config", "log", "--url", url)
    assert switched[:10] in out and "serving" in out
    out = await run_cli("config", "plan", config_repo.initial[:8], "--url", url)
    assert "load     reference" in out and "unload   reference-low" in out
    out = await run_cli("config", "rollback", "--url", url)
    revert = git.Repo(config_repo.path).head.commit.hexsha
    assert out.startswith(f"rolled back to {config_repo.initial[:7]} (as commit {revert[:7]}): "
                          "reference loaded"), out
    out = await run_cli("config", "apply", switched[:10], "--url", url, "--json")
    assert json.loads(out)["commit"] == switched
    out = await run_cli("config", "reload", "--url", url, "--json")
    assert json.loads(out)["commit"] == revert  # the rollback's commit is the branch head


async def test_cli_reports_server_errors_and_bad_tokens(start_server, monkeypatch):
    client = await start_server(control_token="tok")
    url = f"http://127.0.0.1:{client.port}"
    monkeypatch.setenv("ALLTALK_CONTROL_TOKEN", "wrong")
    with pytest.raises(SystemExit, match="unauthorized"):
        await asyncio.to_thread(cli.main, ["config", "status", "--url", url])
    monkeypatch.setenv("ALLTALK_CONTROL_TOKEN", "tok")
    with pytest.raises(SystemExit, match="unknown_commit"):
        await asyncio.to_thread(cli.main, ["config", "apply", "feedbeef", "--url", url])


def test_cli_says_when_no_server_answers():
    with pytest.raises(SystemExit, match="is 'alltalk-host serve' running"):
        cli.main(["config", "status", "--url", "http://127.0.0.1:9"])


def test_serve_refuses_a_config_repo_that_is_not_git(tmp_path: Path, capsys):
    (tmp_path / "plain").mkdir()
    code = cli.main(["serve", "--config-repo", str(tmp_path / "plain"),
                     "--state-dir", str(tmp_path / "state")])
    assert code == 2
    assert "not a git repository" in capsys.readouterr().err


def test_cli_words_tolerate_missing_keys():
    assert words.change({"commit": "3f2a9c1deadbeef", "result": "applied", "action": "switch",
                         "plan": {"load": ["test-voice"], "unload": []},
                         "loaded": {"test-voice": 0.42}}) == (
        "applied 3f2a9c1: test-voice loaded in 0.4 s")
    assert words.change({"commit": "3f2a9c1deadbeef", "result": "unchanged",
                         "message": "test-voice is already the default model"}) == (
        "unchanged, still serving 3f2a9c1: test-voice is already the default model")
    assert words.change({"commit": "abc", "duration_s": 0.25}) == (
        "applied abc: settings only, no model loaded (0.2 s)")
    assert words.change({}) == "applied -: settings only, no model loaded"


def run_real_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed command as a user runs it, in its own process."""
    # ROOT first, and the rest of PYTHONPATH kept: a worktree's plugins live there.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "alltalk_host", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_serve_on_a_port_in_use_says_so_in_one_line(config_repo, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_real_cli("serve", "--config-repo", str(config_repo.path),
                              "--state-dir", str(tmp_path / "state"), "--port", str(port))
    line = _one_line_error(result)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line


@pytest.mark.parametrize("args", [
    ["serve", "--config-repo", "/nonexistent/config"],
    ["serve", "--port", "seventy"],
    ["serve", "--no-such-flag"],
    ["config", "apply"],
    ["models", "switch", "x", "--url", "http://127.0.0.1:9"],
])
def test_operator_mistakes_are_one_line_and_a_non_zero_exit(args, tmp_path):
    line = _one_line_error(run_real_cli(*args, *(
        ["--state-dir", str(tmp_path / "state")] if args[0] == "serve" else [])))
    assert line.startswith(("error", "alltalk-host")), line
