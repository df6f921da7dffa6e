"""Issue 9, section 4: a host starts and becomes ready whatever an earlier run left behind: a
damaged state file, a served commit that history rewriting removed, half-made config copies."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from tools.server import Server

from .helpers import status_of


def git(repo, *args: str) -> str:
    return repo.git.execute(["git", *args])


def commit_exists(repo, commit: str) -> bool:
    return subprocess.run(["git", "-C", repo.working_dir, "cat-file", "-e", f"{commit}^{{commit}}"],
                          capture_output=True).returncode == 0


def rewrite_history(repo, new_head: str) -> None:
    """What a force-push leaves on a host's clone: the branch elsewhere, the rest collected."""
    git(repo, "reset", "--hard", new_head)
    git(repo, "reflog", "expire", "--expire-unreachable=now", "--all")
    git(repo, "gc", "--prune=now", "--quiet")


# --- a state file that cannot be used -------------------------------------------------------

def _state(**values) -> bytes:
    return json.dumps(values).encode()


BAD_STATES = {
    # A crash mid-write on a file system that does not keep renames atomic.
    "truncated": (lambda c: _state(applied=c, known_good=[c])[:25], "not JSON"),
    "empty": (lambda c: b"", "not JSON"),
    "a list": (lambda c: b"[]", "expected a JSON object, found list"),
    "binary": (lambda c: bytes(range(256)) * 4, "not JSON"),
    "a directory": (None, "Is a directory"),
    "known_good null": (lambda c: _state(applied=c, known_good=None), "known_good"),
    "applied a number": (lambda c: _state(applied=123, known_good=[c]), "applied"),
    "failed a list": (lambda c: _state(applied=c, failed=[c]), "failed"),
}


@pytest.mark.parametrize("variant", list(BAD_STATES))
async def test_an_unusable_state_file_is_moved_aside_and_the_host_serves_the_branch_head(
        start_server, config_repo, tmp_path, caplog, variant):
    make, reason = BAD_STATES[variant]
    head = config_repo.change("newer than the state knows", "settings.toml",
                              "default.max_text_length", 700)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    bad = state_dir / "state.json"
    if make is None:
        bad.mkdir()
        (bad / "what.txt").write_text("someone's folder")
        content = None
    else:
        content = make(config_repo.initial)
        bad.write_bytes(content)

    client = await start_server()  # fails unless the host becomes ready
    status = await status_of(client)
    assert status["serving_commit"] == head and status["applied_commit"] == head

    aside = list(state_dir.glob("state.json.bad-*"))
    assert len(aside) == 1, list(state_dir.iterdir())
    if content is None:
        assert (aside[0] / "what.txt").read_text() == "someone's folder"
    else:
        assert aside[0].read_bytes() == content  # kept as it was, for whoever looks into it
    assert json.loads(bad.read_text())["applied"] == head  # a good state from now on

    errors = [r for r in caplog.records
              if r.name == "alltalk_host.change.state" and r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    message = errors[0].getMessage()
    assert reason in message and aside[0].name in message
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a bad state file"


def test_a_served_host_with_a_truncated_state_file_starts_and_says_why(config_repo, tmp_path):
    """The same through `alltalk-host serve`, as an operator meets it."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").write_bytes(b'{"applied": "' + config_repo.initial[:20].encode())
    log = tmp_path / "server.log"
    with log.open("wb") as out:  # Server(...) returns once /health/ready answers 200
        Server(config_repo.path, state_dir, log_level="info", ready_timeout_s=60, output=out,
               env={"ALLTALK_OUTPUTS__DIR": str(tmp_path / "outputs")}).stop()
    text = log.read_text()
    assert "ERROR" in text and "is unusable (not JSON" in text and "state.json.bad-" in text
    assert "Traceback" not in text


# --- a served commit that a force-push removed ----------------------------------------------

async def test_start_up_falls_back_to_a_known_good_commit_when_the_served_one_is_gone(
        start_server, config_repo, caplog):
    client = await start_server()
    kept = config_repo.change("kept", "settings.toml", "default.max_text_length", 600)
    assert (await client.post("/control/config/apply", json={"commit": kept})).status == 200
    lost = config_repo.change("lost", "settings.toml", "default.max_text_length", 700)
    assert (await client.post("/control/config/apply", json={"commit": lost})).status == 200
    await client.close()

    # Someone force-pushes the branch back to `kept` and adds a commit nobody has applied.
    rewrite_history(config_repo.repo, kept)
    assert not commit_exists(config_repo.repo, lost)
    unapplied = config_repo.change("after the rewrite", "settings.toml",
                                   "default.max_text_length", 650)

    client = await start_server()
    status = await status_of(client)
    assert status["serving_commit"] == kept  # what served before, not the unapplied head
    assert status["serving_commit"] != unapplied
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and lost[:10] in r.getMessage()]
    assert warnings and "no longer" in warnings[0], warnings
    assert not [r for r in caplog.records if r.exc_info]


async def test_start_up_serves_the_branch_head_when_no_known_good_commit_is_left(
        start_server, config_repo, caplog):
    client = await start_server()
    other = config_repo.change("other", "settings.toml", "default.max_text_length", 600)
    assert (await client.post("/control/config/apply", json={"commit": other})).status == 200
    await client.close()

    # The whole history is replaced by one new commit with the same files.
    repo = config_repo.repo
    root = git(repo, "commit-tree", "HEAD^{tree}", "-m", "history starts again")
    rewrite_history(repo, root)
    assert not commit_exists(repo, other) and not commit_exists(repo, config_repo.initial)

    client = await start_server()
    status = await status_of(client)
    assert status["serving_commit"] == root and status["applied_commit"] == root
    gone = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert other[:10] in gone and config_repo.initial[:10] in gone


# --- config copies left by a killed apply ---------------------------------------------------

async def test_config_copies_left_by_a_killed_apply_are_removed_at_start_up(
        start_server, config_repo, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="alltalk_host")
    work = tmp_path / "state" / "tmp"
    left = [work / "alltalk-config-k1ll3d", work / "alltalk-config-0ther"]
    for folder in left:
        (folder / "sub").mkdir(parents=True)
        (folder / "settings.toml").write_text("[default]\n")
        (folder / "sub" / "models.toml").write_text("[default]\n")
    theirs = work / "not-ours.txt"  # the host removes only what it makes
    theirs.write_text("keep me")

    await start_server()
    assert not [p for p in left if p.exists()]
    assert theirs.read_text() == "keep me"
    assert [p.name for p in Path(work).iterdir()] == ["not-ours.txt"]
    assert any("removed 2 temporary config copies" in r.getMessage() for r in caplog.records)
