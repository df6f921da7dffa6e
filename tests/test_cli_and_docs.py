"""The CLI against a live server, its --help, and docs that cannot drift from the code."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import git
import pytest

from alltalk_host import cli
from alltalk_host.web.app import CONTROL_TABLES, ROUTE_TABLES

from .conftest import ROOT

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
    if command not in {("config",), ("models",)}:
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
    switched = json.loads(out)["commit"]
    assert git.Repo(config_repo.path).head.commit.author.name.endswith("(cli)")

    out = await run_cli("config", "log", "--url", url)
    assert switched[:10] in out and "serving" in out
    out = await run_cli("config", "plan", config_repo.initial[:8], "--url", url)
    assert "load     reference" in out and "unload   reference-low" in out
    out = await run_cli("config", "rollback", "--url", url)
    assert json.loads(out)["commit"] == config_repo.initial
    out = await run_cli("config", "apply", "main", "--url", url)
    assert json.loads(out)["commit"] == switched
    out = await run_cli("config", "reload", "--url", url, "--json")
    assert json.loads(out)["commit"] == switched


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
