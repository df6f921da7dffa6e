"""Applying, planning, rolling back and switching by commit, through the control routes."""

from __future__ import annotations

import asyncio

import git
import pytest

from alltalk_host.host import Host

from .helpers import dominant_pitch, error_of, post, read_wav, wait_until


async def speak(client, **body):
    resp = await client.post("/tts", json={"text": "Hello there", **body})
    assert resp.status == 200, await resp.text()
    return resp


async def pitch_of(client, **body) -> float:
    resp = await speak(client, voice=body.pop("voice", "female_01"), **body)
    return dominant_pitch(*read_wav(await resp.read()))


async def test_applying_a_model_change_loads_a_new_generation(start_server, config_repo):
    client = await start_server()
    before = await pitch_of(client)
    commit = config_repo.change("higher", "models.toml",
                                "default.models.reference.settings.pitch_hz", 280)
    resp = await post(client, "/control/config/apply", commit=commit[:9])
    body = await resp.json()
    assert resp.status == 200, body
    assert body["commit"] == commit and body["plan"]["reload"] == ["reference"]
    resp = await speak(client, voice="female_01")
    assert resp.headers["X-AllTalk-Commit"] == commit
    assert resp.headers["X-AllTalk-Model"] == "reference; generation=2"
    assert dominant_pitch(*read_wav(await resp.read())) > before * 1.5


async def test_runtime_only_changes_keep_the_loaded_generation(start_server, config_repo):
    client = await start_server()
    commit = config_repo.change("shorter texts", "settings.toml",
                                "default.max_text_length", 20)
    plan = await (await post(client, "/control/config/plan", commit=commit)).json()
    assert plan["runtime_only"] and plan["keep"] == ["reference"]
    assert plan["changes"] == [{"key": "max_text_length", "old": 2000, "new": 20,
                                "layer": "repo:settings.toml[default]"}]
    assert plan["runtime_changes"] == ["max_text_length"]
    assert (await post(client, "/control/config/apply", commit=commit)).status == 200
    resp = await speak(client)
    assert resp.headers["X-AllTalk-Commit"] == commit
    assert resp.headers["X-AllTalk-Model"] == "reference; generation=1"
    resp = await post(client, "/tts", text="x" * 21)
    assert (await error_of(resp))["code"] == "text_too_long"


async def test_plan_changes_nothing(start_server, config_repo):
    client = await start_server()
    commit = config_repo.change("switch", "settings.toml", "default.default_model",
                                "reference-low")
    plan = await (await post(client, "/control/config/plan", commit=commit)).json()
    assert plan["load"] == ["reference-low"] and plan["unload"] == ["reference"]
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] == config_repo.initial
    assert (await speak(client)).headers["X-AllTalk-Commit"] == config_repo.initial


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (("models.toml", "default.models.reference.settings.model_file", "missing.toml"),
         "model_load_failed"),
        (("models.toml", "default.models.reference.settings.amplitude", 0.0), "warmup_failed"),
        (("models.toml", "default.models.reference.settings.pitch_hz", 9999), "config_invalid"),
        (("models.toml", "default.models.reference.backend", "nope"), "model_unavailable"),
        (("settings.toml", "default.max_text_length", "long"), "validation_failed"),
    ],
)
async def test_a_failing_commit_leaves_the_old_model_serving_and_is_marked_failed(
        start_server, config_repo, change, code):
    client = await start_server()
    commit = config_repo.change("bad", *change)
    resp = await post(client, "/control/config/apply", commit=commit)
    error = await error_of(resp)
    assert resp.status == 422
    if code != "config_invalid":
        assert error["code"] == code, error
    assert error["details"]["commit"] == commit
    resp = await speak(client)
    assert resp.headers["X-AllTalk-Commit"] == config_repo.initial
    assert resp.headers["X-AllTalk-Model"] == "reference; generation=1"
    commits = (await (await client.get("/control/config/commits")).json())["commits"]
    marks = {c["commit"]: c for c in commits}
    assert marks[commit]["failed"] and marks[commit]["failure_reason"] == error["message"]
    assert marks[config_repo.initial]["serving"] and marks[config_repo.initial]["known_good"]
    status = await (await client.get("/control/status")).json()
    assert status["attempted_commit"] == commit
    assert status["applied_commit"] == config_repo.initial
    assert status["last_failure"]["commit"] == commit


async def test_invalid_toml_in_a_commit_fails_cleanly(start_server, config_repo):
    client = await start_server()
    config_repo.write("settings.toml", "[default\n")
    commit = config_repo.commit("oops")
    resp = await post(client, "/control/config/apply", commit=commit)
    assert resp.status == 422
    assert (await error_of(resp))["code"] == "invalid_toml"
    assert (await speak(client)).headers["X-AllTalk-Commit"] == config_repo.initial


@pytest.mark.usefixtures("models_in_tmp")
async def test_a_warm_up_that_returns_nan_is_rejected(start_server, config_repo, tmp_path):
    weights = tmp_path / "weights.toml"
    weights.write_text("amplitude = nan\n")
    client = await start_server()
    commit = config_repo.change("nan weights", "models.toml",
                                "default.models.reference.settings.model_file", weights.name)
    resp = await post(client, "/control/config/apply", commit=commit)
    error = await error_of(resp)
    assert error["code"] == "warmup_failed" and "NaN" in error["message"]


@pytest.fixture
def models_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A commit names model files relative to models_dir (the owner's, here an ALLTALK_
    variable); an absolute path in a commit is refused."""
    monkeypatch.setenv("ALLTALK_MODELS_DIR", str(tmp_path))


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [("0000000", 404, "unknown_commit"), ("no-branch", 404, "unknown_commit"),
     ("--help", 400, "bad_commit_name")],
)
async def test_unknown_or_bad_commit_names(start_server, name, status, code):
    client = await start_server()
    for path in ("/control/config/apply", "/control/config/plan", "/control/config/rollback"):
        resp = await post(client, path, commit=name)
        assert resp.status == status
        assert (await error_of(resp))["code"] == code


async def test_apply_needs_a_commit(start_server):
    client = await start_server()
    resp = await post(client, "/control/config/apply")
    assert resp.status == 400 and (await error_of(resp))["code"] == "missing_field"


async def test_switch_writes_a_commit_by_the_caller_and_applies_it(start_server, config_repo):
    client = await start_server()
    resp = await post(client, "/control/models/switch", model="reference-low", author="Ada")
    body = await resp.json()
    assert resp.status == 200, body
    head = config_repo.repo.head.commit
    assert body["commit"] == head.hexsha and head.author.name == "Ada"
    assert "reference-low" in head.message
    assert (await speak(client, voice="narrator")).headers["X-AllTalk-Model"] == (
        "reference-low; generation=1")
    # The old default is unloaded once drained, not kept in memory.
    await wait_until(client, lambda s: {m["name"]: m["state"] for m in s["models"]}
                     ["reference"] == "configured")


async def test_switch_to_an_unknown_model_commits_nothing(start_server, config_repo):
    client = await start_server()
    resp = await post(client, "/control/models/switch", model="nope")
    assert resp.status == 404 and (await error_of(resp))["code"] == "unknown_model"
    assert config_repo.head == config_repo.initial


async def test_switch_refuses_when_a_higher_layer_sets_the_default(start_server, config_repo,
                                                                    monkeypatch):
    monkeypatch.setenv("ALLTALK_DEFAULT_MODEL", "reference")
    client = await start_server()
    resp = await post(client, "/control/models/switch", model="reference-low")
    assert resp.status == 409 and (await error_of(resp))["code"] == "setting_overridden"
    assert config_repo.head == config_repo.initial


async def test_rollback_defaults_to_the_previous_known_good_commit(start_server, config_repo):
    client = await start_server()
    switched = (await (await post(client, "/control/models/switch",
                                  model="reference-low")).json())["commit"]
    resp = await post(client, "/control/config/rollback")
    body = await resp.json()
    assert resp.status == 200 and body["rolled_back_to"] == config_repo.initial
    assert (await speak(client)).headers["X-AllTalk-Model"].startswith("reference;")
    # By default the rollback is a commit on the branch with the old configuration, so the
    # branch says what serves and the next change starts from there.
    revert = config_repo.repo.head.commit
    assert body["commit"] == revert.hexsha and revert.parents[0].hexsha == switched
    assert revert.tree == config_repo.repo.commit(config_repo.initial).tree
    assert revert.message.startswith(f"Roll back to {config_repo.initial[:10]}")
    assert config_repo.repo.git.status("--porcelain") == ""
    # Named rollback goes where it is told.
    resp = await post(client, "/control/config/rollback", commit=switched)
    assert (await resp.json())["rolled_back_to"] == switched
    assert config_repo.repo.commit(config_repo.head).tree == config_repo.repo.commit(
        switched).tree


async def test_rollback_without_revert_pins_and_leaves_the_branch(start_server, config_repo):
    client = await start_server()
    switched = (await (await post(client, "/control/models/switch",
                                  model="reference-low")).json())["commit"]
    resp = await post(client, "/control/config/rollback", revert=False)
    body = await resp.json()
    assert body["commit"] == config_repo.initial and config_repo.head == switched
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] == config_repo.initial
    assert status["watch"]["paused_at"] == switched
    # A setting change now would carry the rolled-back commit: it is refused, saying why.
    resp = await post(client, "/control/models/switch", model="reference")
    error = await error_of(resp)
    assert resp.status == 409 and error["code"] == "branch_diverged", error
    assert switched[:10] in error["message"] and config_repo.initial[:10] in error["message"]
    assert config_repo.head == switched


async def test_rollback_with_nothing_to_go_back_to(start_server):
    client = await start_server()
    resp = await post(client, "/control/config/rollback")
    assert resp.status == 409 and (await error_of(resp))["code"] == "no_rollback_target"


async def test_reload_refuses_uncommitted_changes_and_lists_them(start_server, config_repo):
    client = await start_server()
    config_repo.set("settings.toml", "default.max_text_length", 99)
    config_repo.write("extra.toml", "[default]\nqueue_limit = 3\n")
    resp = await post(client, "/control/config/reload")
    error = await error_of(resp)
    assert resp.status == 409 and error["code"] == "working_tree_dirty"
    assert sorted(error["details"]["files"]) == ["extra.toml", "settings.toml"]
    assert config_repo.head == config_repo.initial


async def test_reload_can_commit_the_working_tree_as_the_caller(start_server, config_repo):
    client = await start_server()
    config_repo.set("settings.toml", "default.max_text_length", 99)
    resp = await post(client, "/control/config/reload", commit_working_tree=True,
                      message="Tighter limit", author="Grace")
    assert resp.status == 200, await resp.text()
    head = config_repo.repo.head.commit
    assert head.message.strip() == "Tighter limit" and head.author.name == "Grace"
    assert (await speak(client)).headers["X-AllTalk-Commit"] == head.hexsha
    assert not config_repo.repo.is_dirty(untracked_files=True)


async def test_reload_does_not_commit_an_invalid_working_tree(start_server, config_repo):
    client = await start_server()
    config_repo.set("settings.toml", "default.max_text_length", -1)
    resp = await post(client, "/control/config/reload", commit_working_tree=True)
    assert resp.status == 422
    assert config_repo.head == config_repo.initial
    assert config_repo.repo.is_dirty()  # the user's edit is still there, nothing lost


async def test_reload_applies_the_branch_head(start_server, config_repo):
    client = await start_server()
    commit = config_repo.change("limit", "settings.toml", "default.max_text_length", 77)
    resp = await post(client, "/control/config/reload")
    assert (await resp.json())["commit"] == commit


@pytest.mark.usefixtures("models_in_tmp")
async def test_model_reload_rereads_weights_at_the_same_commit(start_server, config_repo,
                                                               tmp_path):
    weights = tmp_path / "weights.toml"
    weights.write_text("pitch_hz = 100\n")
    config_repo.model("reference", model_file=weights.name)
    commit = config_repo.commit("weights from a file")
    client = await start_server()
    low = await pitch_of(client)
    weights.write_text("pitch_hz = 250\n")
    assert await pitch_of(client) == low  # nothing re-reads behind our back
    resp = await post(client, "/control/models/reference/reload")
    assert resp.status == 200, await resp.text()
    resp = await speak(client, voice="female_01")
    assert resp.headers["X-AllTalk-Commit"] == commit
    assert resp.headers["X-AllTalk-Model"] == "reference; generation=2"
    assert dominant_pitch(*read_wav(await resp.read())) > low * 2
    resp = await post(client, "/control/models/nope/reload")
    assert resp.status == 404


async def test_after_a_restart_the_last_good_commit_serves_not_the_branch_head(
        start_server, config_repo):
    client = await start_server()
    good = config_repo.change("good", "settings.toml", "default.max_text_length", 500)
    assert (await post(client, "/control/config/apply", commit=good)).status == 200
    bad = config_repo.change("bad", "models.toml",
                             "default.models.reference.settings.model_file", "gone.toml")
    assert (await post(client, "/control/config/apply", commit=bad)).status == 422
    unapplied = config_repo.change("newer", "settings.toml", "default.max_text_length", 600)
    await client.close()

    client = await start_server()
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] == good
    assert unapplied != good
    commits = {c["commit"]: c for c in
               (await (await client.get("/control/config/commits")).json())["commits"]}
    assert commits[bad]["failed"] and commits[good]["serving"]
    assert [h["action"] for h in status["history"]] == ["startup", "apply", "apply", "startup"]


@pytest.mark.usefixtures("models_in_tmp")
async def test_a_restart_falls_back_when_the_applied_commit_no_longer_loads(
        start_server, config_repo, tmp_path):
    weights = tmp_path / "weights.toml"
    weights.write_text("pitch_hz = 120\n")
    client = await start_server()
    commit = config_repo.change("weights", "models.toml",
                                "default.models.reference.settings.model_file", weights.name)
    assert (await post(client, "/control/config/apply", commit=commit)).status == 200
    await client.close()
    weights.unlink()
    client = await start_server()
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] == config_repo.initial


async def test_watch_applies_new_commits_and_pauses_after_a_rollback(start_server, config_repo):
    config_repo.set("settings.toml", "default.watch.enabled", True)
    config_repo.set("settings.toml", "default.watch.interval_s", 0.05)
    watched = config_repo.commit("watch the branch")
    client = await start_server()
    assert (await (await client.get("/control/status")).json())["serving_commit"] == watched

    second = config_repo.change("new limit", "settings.toml", "default.max_text_length", 300)
    await wait_until(client, lambda s: s["serving_commit"] == second)

    resp = await post(client, "/control/config/rollback", revert=False)
    assert (await resp.json())["commit"] == watched
    status = await wait_until(client, lambda s: s["watch"]["last_checked"] is not None)
    assert status["watch"]["paused_at"] == second
    await _let_watch_run(client, rounds=5)
    assert (await (await client.get("/control/status")).json())["serving_commit"] == watched

    third = config_repo.change("newer", "settings.toml", "default.max_text_length", 400)
    await wait_until(client, lambda s: s["serving_commit"] == third)


async def test_watch_never_retries_a_failed_commit(start_server, config_repo):
    config_repo.set("settings.toml", "default.watch.enabled", True)
    config_repo.set("settings.toml", "default.watch.interval_s", 0.05)
    watched = config_repo.commit("watch the branch")
    client = await start_server()
    bad = config_repo.change("bad", "models.toml",
                             "default.models.reference.settings.model_file", "gone.toml")
    await wait_until(client, lambda s: s["last_failure"] and s["last_failure"]["commit"] == bad)
    await _let_watch_run(client, rounds=5)
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] == watched
    assert [h["commit"] for h in status["history"] if h["result"] == "failed"] == [bad]


async def test_watch_fetches_a_remote_and_applies_what_was_pushed(start_server, config_repo,
                                                                  tmp_path):
    origin = git.Repo.init(tmp_path / "origin.git", bare=True, initial_branch="main")
    config_repo.repo.create_remote("origin", origin.working_dir)
    config_repo.set("settings.toml", "default.watch.enabled", True)
    config_repo.set("settings.toml", "default.watch.interval_s", 0.05)
    config_repo.set("settings.toml", "default.watch.remote", "origin")
    config_repo.commit("watch origin")
    config_repo.repo.git.push("origin", "main")

    client = await start_server()
    # Someone else pushes a change to origin.
    other = git.Repo.clone_from(origin.working_dir, tmp_path / "other", branch="main")
    (tmp_path / "other" / "settings.toml").write_text(
        (tmp_path / "other" / "settings.toml").read_text().replace(
            "max_text_length = 2000", "max_text_length = 1234"))
    other.git.commit("-am", "pushed elsewhere")
    other.git.push("origin", "main")
    pushed = other.head.commit.hexsha
    await wait_until(client, lambda s: s["serving_commit"] == pushed)
    assert config_repo.head == pushed  # fast-forwarded, not just applied
    other.close()
    origin.close()


async def _let_watch_run(client, rounds: int) -> None:
    """Wait until the watch has looked at the branch ``rounds`` more times."""
    first = (await (await client.get("/control/status")).json())["watch"]["last_checked"] or 0
    seen = {first}
    await wait_until(client, lambda s: seen.add(s["watch"]["last_checked"]) or len(seen) > rounds)


async def test_a_switch_sent_the_moment_the_host_is_ready_is_accepted(host_options):
    """Ready means start-up is finished, so a script that waits for ready can switch at once."""
    host = Host(host_options())
    await host.start()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not host.control.ready:  # looked at every event-loop turn, to land right after
            assert asyncio.get_running_loop().time() < deadline, "the host did not become ready"
            await asyncio.sleep(0)
        result = await host.control.switch_model("reference-low", "test")
        assert result["result"] == "applied"
    finally:
        await host.stop()
