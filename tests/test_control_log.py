"""Issue 9, section 6: every change the host is asked for leaves a line in its log. A failure at
WARNING with the action, the commit, who asked and the reason; a success at INFO with timings."""

from __future__ import annotations

import logging
import re

import pytest

from .helpers import error_of, post

LOGGER = "alltalk_host.change.control"
ME = "api@127.0.0.1"


def lines(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


async def test_an_apply_logs_its_failure_and_its_success(start_server, config_repo, caplog):
    caplog.set_level(logging.INFO, logger="alltalk_host")
    client = await start_server()
    caplog.clear()
    bad = config_repo.change("bad", "models.toml",
                             "default.models.reference.settings.model_file", "gone.toml")
    resp = await post(client, "/control/config/apply", commit=bad)
    error = await error_of(resp)
    [warning] = lines(caplog, logging.WARNING)
    assert warning.startswith(f"apply of {bad[:10]} by {ME} failed")
    assert error["message"] in warning and "gone.toml" in warning
    assert not lines(caplog, logging.INFO)

    caplog.clear()
    config_repo.set("models.toml", "default.models.reference.settings.model_file", None)
    good = config_repo.change("good", "models.toml",
                              "default.models.reference.settings.pitch_hz", 200)
    assert (await post(client, "/control/config/apply", commit=good, author="alice")).status == 200
    [info] = lines(caplog, logging.INFO)
    assert info.startswith(f"apply of {good[:10]} by alice: applied in ")
    assert re.search(r"applied in \d+\.\d\d s .*reload \['reference'\].*reference \d+\.\d\d s",
                     info), info
    assert not lines(caplog, logging.WARNING)


# Each failing change: how to make it fail, the request, and what the log line must name.
async def _rollback_to_a_broken_commit(client, repo):
    bad = repo.change("bad", "models.toml", "default.models.reference.settings.model_file",
                      "gone.toml")
    return "/control/config/rollback", {"commit": bad, "revert": False}, bad


async def _switch_to_a_model_that_does_not_load(client, repo):
    broken = repo.change("broken spare", "models.toml",
                         "default.models.reference-low.settings.model_file", "gone.toml")
    assert (await post(client, "/control/config/apply", commit=broken)).status == 200
    return "/control/models/switch", {"model": "reference-low"}, None


async def _switch_to_an_unavailable_model(client, repo):
    ghost = repo.change("a model for a backend not installed", "models.toml",
                        "default.models.ghost.backend", "ghost")
    assert (await post(client, "/control/config/apply", commit=ghost)).status == 200
    return "/control/models/switch", {"model": "ghost"}, ghost


async def _reload_a_broken_head(client, repo):
    bad = repo.change("bad", "models.toml", "default.models.reference.settings.model_file",
                      "gone.toml")
    return "/control/config/reload", {}, bad


async def _reload_an_invalid_working_tree(client, repo):
    repo.write("settings.toml", "[default\n")
    return "/control/config/reload", {"commit_working_tree": True}, repo.initial


FAILURES = {
    "rollback": ("rollback", _rollback_to_a_broken_commit),
    "switch (load fails)": ("switch", _switch_to_a_model_that_does_not_load),
    "switch (unavailable)": ("switch", _switch_to_an_unavailable_model),
    "reload": ("reload", _reload_a_broken_head),
    "reload (invalid working tree)": ("reload", _reload_an_invalid_working_tree),
}


@pytest.mark.parametrize("case", list(FAILURES))
@pytest.mark.parametrize("author", [None, "alice"])
async def test_every_failed_change_is_logged_with_who_asked_and_why(
        start_server, config_repo, caplog, case, author):
    caplog.set_level(logging.INFO, logger="alltalk_host")
    action, make = FAILURES[case]
    client = await start_server()
    path, body, commit = await make(client, config_repo)
    if author:
        body["author"] = author
    caplog.clear()
    resp = await post(client, path, **body)
    error = await error_of(resp)
    assert resp.status >= 400
    [warning] = lines(caplog, logging.WARNING)
    who = author or ME
    if commit is None:  # a switch writes its own commit
        commit = error["details"]["commit"]
    assert re.match(rf"{re.escape(action)} of {commit[:10]} by {re.escape(who)} failed", warning), (
        warning)
    assert error["message"] in warning
