"""Commits the host writes for a setting change (a model switch): built beside the user's
checkout, so a hook, a lock or the user's own edits can neither block a good change nor be
damaged by it; a failed change never reaches the branch; who asked is recorded; a change to
the value already set is no change."""

from __future__ import annotations

import stat
from pathlib import Path

import git
import pytest

from .helpers import error_of

SETTINGS = "settings.toml"


async def switch(client, model, **body):
    return await client.post("/control/models/switch", json={"model": model, **body})


async def heard_from(client) -> tuple[str, str]:
    """(X-AllTalk-Commit, X-AllTalk-Model) of a request that names no model."""
    resp = await client.post("/tts", json={"text": "Hello there"})
    assert resp.status == 200, await resp.text()
    return resp.headers["X-AllTalk-Commit"], resp.headers["X-AllTalk-Model"]


def porcelain(config_repo) -> str:
    return config_repo.repo.git.status("--porcelain", "--untracked-files=all")


def on_disk(config_repo, name: str = SETTINGS) -> bytes:
    return (config_repo.path / name).read_bytes()


def commit_count(config_repo) -> int:
    return int(config_repo.repo.git.rev_list("--count", "--all"))


# --- 4. hooks, locks and the user's edits --------------------------------------------------

async def test_a_failing_pre_commit_hook_neither_blocks_a_switch_nor_dirties_the_repo(
        start_server, config_repo):
    hooks = Path(config_repo.repo.git_dir) / "hooks"
    for name in ("pre-commit", "commit-msg"):
        hook = hooks / name
        hook.write_text("#!/bin/sh\necho 'blocked by policy' >&2\nexit 1\n")
        hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    client = await start_server()

    resp = await switch(client, "reference-low")
    body = await resp.json()
    assert resp.status == 200 and body["result"] == "applied", body
    assert config_repo.head == body["commit"]
    assert config_repo.repo.head.commit.parents[0].hexsha == config_repo.initial
    assert porcelain(config_repo) == ""
    assert b'default_model = "reference-low"' in on_disk(config_repo)
    # The hook is live: it still stops a commit made with git by hand.
    with pytest.raises(git.GitCommandError, match="blocked by policy"):
        config_repo.repo.git.commit("--allow-empty", "-m", "by hand")


async def test_a_stale_index_lock_refuses_the_switch_until_it_is_removed(start_server,
                                                                         config_repo):
    client = await start_server()
    before = await heard_from(client)
    lock = Path(config_repo.repo.git_dir) / "index.lock"
    lock.write_text("")

    resp = await switch(client, "reference-low")
    error = await error_of(resp)
    assert resp.status == 409 and error["code"] == "repo_locked", error
    assert "index.lock" in error["message"] and "delete" in error["message"]
    assert config_repo.head == config_repo.initial
    assert porcelain(config_repo) == "" and lock.exists()
    assert await heard_from(client) == before  # same commit, same generation

    lock.unlink()
    resp = await switch(client, "reference-low")
    assert resp.status == 200, await resp.text()
    assert config_repo.head == (await resp.json())["commit"] != config_repo.initial
    assert porcelain(config_repo) == ""


async def test_uncommitted_edits_to_the_file_refuse_the_switch_and_survive(start_server,
                                                                           config_repo):
    client = await start_server()
    before = await heard_from(client)
    edited = on_disk(config_repo).replace(b"queue_limit = 64", b"queue_limit = 65  # trying")
    (config_repo.path / SETTINGS).write_bytes(edited)

    resp = await switch(client, "reference-low")
    error = await error_of(resp)
    assert resp.status == 409 and error["code"] == "working_tree_dirty", error
    assert error["details"]["files"] == [SETTINGS]
    assert on_disk(config_repo) == edited
    assert config_repo.head == config_repo.initial
    assert await heard_from(client) == before


async def test_uncommitted_edits_to_another_file_survive_a_switch(start_server, config_repo):
    client = await start_server()
    edited = on_disk(config_repo, "models.toml") + b"# a note I have not committed yet\n"
    (config_repo.path / "models.toml").write_bytes(edited)

    resp = await switch(client, "reference-low")
    assert resp.status == 200, await resp.text()
    assert on_disk(config_repo, "models.toml") == edited
    assert b'default_model = "reference-low"' in on_disk(config_repo)
    assert porcelain(config_repo) == " M models.toml"


# --- 5. a failed switch --------------------------------------------------------------------

async def test_a_failed_switch_leaves_the_branch_and_is_recorded_as_failed(start_server,
                                                                           config_repo):
    config_repo.model("reference-low", model_file="missing-weights.toml")
    base = config_repo.commit("reference-low reads its weights from a file")
    client = await start_server()
    settings_before = on_disk(config_repo)

    resp = await switch(client, "reference-low")
    error = await error_of(resp)
    assert resp.status == 422 and error["code"] == "model_load_failed", error
    failed = error["details"]["commit"]
    assert failed != base
    assert config_repo.repo.commit(failed).parents[0].hexsha == base  # written, not on the branch
    assert config_repo.head == base
    assert porcelain(config_repo) == "" and on_disk(config_repo) == settings_before
    assert await heard_from(client) == (base, "reference; generation=1")
    status = await (await client.get("/control/status")).json()
    entry = status["history"][-1]
    assert (entry["commit"], entry["action"], entry["result"]) == (failed, "switch", "failed")
    assert status["last_failure"]["commit"] == failed

    # The next commit made by hand carries only its own change, not the failed switch.
    mine = config_repo.change("a longer limit", SETTINGS, "default.max_text_length", 500)
    assert config_repo.repo.commit(mine).parents[0].hexsha == base
    assert config_repo.repo.git.diff("--name-only", base, mine) == SETTINGS
    diff = config_repo.repo.git.diff("-U0", base, mine)
    assert "default_model" not in diff and "+max_text_length = 500" in diff
    resp = await client.post("/control/config/reload", json={})
    assert resp.status == 200, await resp.text()
    assert await heard_from(client) == (mine, "reference; generation=1")


# --- 9. who made the commit ----------------------------------------------------------------

def changed_lines(config_repo, commit: str) -> list[tuple[bytes, bytes]]:
    """(old, new) for each line of settings.toml that differs from the commit's parent."""
    repo = config_repo.repo
    new = repo.commit(commit)
    old_text = (new.parents[0].tree / SETTINGS).data_stream.read()
    new_text = (new.tree / SETTINGS).data_stream.read()
    assert new_text.endswith(b"\n") and old_text.count(b"\n") == new_text.count(b"\n")
    return [(a, b) for a, b in zip(old_text.split(b"\n"), new_text.split(b"\n"), strict=True)
            if a != b]


async def test_a_switch_is_authored_by_the_repos_identity_or_the_named_caller(start_server,
                                                                             config_repo):
    with config_repo.repo.config_writer() as writer:
        writer.set_value("user", "name", "Grace Hopper")
        writer.set_value("user", "email", "grace@example.org")
    client = await start_server()

    resp = await switch(client, "reference-low")
    assert resp.status == 200, await resp.text()
    commit = config_repo.repo.head.commit
    assert (commit.author.name, commit.author.email) == ("Grace Hopper", "grace@example.org")
    assert (commit.committer.name, commit.committer.email) == (
        "alltalk-host", "alltalk-host@localhost")
    assert commit.message.startswith("Switch the default model to reference-low")
    assert commit.message.rstrip("\n").endswith("\n\nRequested-by: api@127.0.0.1")
    assert config_repo.repo.git.diff("--numstat", commit.parents[0], commit) == (
        f"1\t1\t{SETTINGS}")
    assert changed_lines(config_repo, commit.hexsha) == [
        (b'default_model = "reference"', b'default_model = "reference-low"')]

    resp = await switch(client, "reference", author="Ada")
    assert resp.status == 200, await resp.text()
    commit = config_repo.repo.head.commit
    assert commit.author.name == "Ada" and commit.committer.name == "alltalk-host"
    assert commit.message.rstrip("\n").endswith("\n\nRequested-by: Ada")
    assert changed_lines(config_repo, commit.hexsha) == [
        (b'default_model = "reference-low"', b'default_model = "reference"')]


async def test_without_a_repo_identity_the_host_is_the_author(start_server, config_repo,
                                                              monkeypatch, tmp_path):
    # Whoever set up this machine's global git identity did not make the change.
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Someone Global\n"
                                     "\temail = someone@example.org\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    client = await start_server()

    resp = await switch(client, "reference-low")
    assert resp.status == 200, await resp.text()
    commit = config_repo.repo.head.commit
    assert (commit.author.name, commit.author.email) == (
        "alltalk-host", "alltalk-host@localhost")
    assert commit.message.rstrip("\n").endswith("\n\nRequested-by: api@127.0.0.1")


# --- 10. the value already set -------------------------------------------------------------

async def test_switching_to_the_current_model_changes_nothing(start_server, config_repo):
    client = await start_server()
    commits = commit_count(config_repo)
    history = len((await (await client.get("/control/status")).json())["history"])

    resp = await switch(client, "reference")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["result"] == "unchanged" and body["commit"] == config_repo.initial
    assert "already" in body["message"]

    resp = await client.post("/api/reload?tts_method=reference")
    assert resp.status == 200 and await resp.json() == {"status": "model-success"}

    assert config_repo.head == config_repo.initial and commit_count(config_repo) == commits
    assert await heard_from(client) == (config_repo.initial, "reference; generation=1")
    status = await (await client.get("/control/status")).json()
    assert len(status["history"]) == history  # nothing was applied
    assert porcelain(config_repo) == ""


async def test_a_hook_that_refuses_the_reload_commit_is_a_clear_error_and_unstages(
        start_server, config_repo):
    """Reload with commit_working_tree commits the user's own changes, with their hooks: when
    a hook refuses, the reply says why and the changes are left as they were, unstaged."""
    client = await start_server()
    hook = Path(config_repo.repo.git_dir) / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'blocked by policy' >&2\nexit 1\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    config_repo.set(SETTINGS, "default.max_text_length", 321)
    resp = await client.post("/control/config/reload", json={"commit_working_tree": True})
    error = await error_of(resp)
    assert resp.status == 409 and error["code"] == "commit_refused", error
    assert "blocked by policy" in error["message"]
    assert porcelain(config_repo) == f" M {SETTINGS}"  # modified, not staged
    assert config_repo.head == config_repo.initial
