"""Files named ``*.local.*`` (a machine's secrets, say) stay out of the config's history: a new
config repo ignores them, and the host's own git commands never see or commit them, even in a
repo whose ``.gitignore`` does not mention them."""

from __future__ import annotations

import git
import pytest

from alltalk_host.commands import cli

SECRET = "secrets.local.toml"


def tracked(repo: git.Repo, commit: str = "HEAD") -> list[str]:
    return repo.git.ls_tree("-r", "--name-only", commit).splitlines()


def test_config_init_makes_a_repo_that_ignores_local_files(tmp_path, capsys):
    path = tmp_path / "cfg"
    assert cli.main(["config", "init", str(path)]) == 0
    assert "created config repo" in capsys.readouterr().out
    repo = git.Repo(path)
    assert ".gitignore" in tracked(repo)
    assert "*.local.*" in (path / ".gitignore").read_text().splitlines()
    (path / SECRET).write_text('api_key = "hunter2"\n')
    assert repo.git.status("--porcelain") == ""
    repo.close()


@pytest.mark.parametrize("gitignore", [True, False], ids=["template", "no-gitignore"])
async def test_reload_never_sees_or_commits_local_files(start_server, config_repo, gitignore):
    if not gitignore:
        config_repo.repo.git.rm("-q", "--ignore-unmatch", ".gitignore")
        config_repo.repo.index.commit("no .gitignore here")
        assert ".gitignore" not in tracked(config_repo.repo)
    client = await start_server()
    (config_repo.path / SECRET).write_text('[default]\napi_key = "hunter2"\n')
    if not gitignore:  # git itself would list it
        assert config_repo.repo.git.status("--porcelain") == f"?? {SECRET}"

    # Not a change to the config: a plain reload goes ahead.
    resp = await client.post("/control/config/reload", json={})
    assert resp.status == 200, await resp.text()

    config_repo.set("settings.toml", "default.max_text_length", 99)
    resp = await client.post("/control/config/reload", json={})
    assert resp.status == 409
    assert (await resp.json())["error"]["details"]["files"] == ["settings.toml"]

    resp = await client.post("/control/config/reload", json={"commit_working_tree": True})
    assert resp.status == 200, await resp.text()
    commit = config_repo.repo.head.commit
    assert (await resp.json())["commit"] == commit.hexsha
    assert SECRET not in tracked(config_repo.repo)
    assert config_repo.repo.git.diff("--name-only", commit.parents[0], commit) == "settings.toml"
    assert (config_repo.path / SECRET).read_text() == '[default]\napi_key = "hunter2"\n'
    left = "" if gitignore else f"?? {SECRET}"
    assert config_repo.repo.git.status("--porcelain") == left
