"""Issue 9, section 5: every model of a commit is checked at apply, and whether it could load
here is known before anyone switches to it.

The backend under test is the reference backend with the cheap check a real backend makes
(``Backend.check_available``): the weights file its settings name must exist.
"""

from __future__ import annotations

import pytest

from alltalk_host import Backend, ModelContext, hookimpl
from alltalk_host_reference import ReferenceBackend, ReferenceSettings

from .helpers import error_of, post, status_of


class CheckedBackend(ReferenceBackend):
    name = "checked"

    @classmethod
    def check_available(cls, settings: ReferenceSettings, context: ModelContext) -> None:
        if settings.model_file and not context.resolve(settings.model_file).is_file():
            raise FileNotFoundError(
                f"weights file {context.resolve(settings.model_file)} not found")


class Plugin:
    """An in-process plugin that registers ``backends``, or fails to with ``error``."""

    def __init__(self, *backends: type[Backend], error: Exception | None = None) -> None:
        self.backends = backends
        self.error = error

    @hookimpl
    def alltalk_host_register_backends(self, register):  # type: ignore[no-untyped-def]
        if self.error is not None:
            raise self.error
        for backend in self.backends:
            register(backend)


CHECKED = [("checked", Plugin(CheckedBackend))]


@pytest.fixture(autouse=True)
def models_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A commit names model files relative to models_dir (the owner's, here an ALLTALK_
    variable); an absolute path in a commit is refused."""
    monkeypatch.setenv("ALLTALK_MODELS_DIR", str(tmp_path))


def models_of(status: dict) -> dict[str, dict]:
    return {m["name"]: m for m in status["models"]}


def reason_for(path) -> str:
    return f"backend checked: weights file {path} not found"


async def test_an_unavailable_spare_model_is_reported_and_cannot_be_switched_to(
        start_server, config_repo, tmp_path):
    weights = tmp_path / "spare.toml"
    client = await start_server(extra_plugins=CHECKED)
    config_repo.model("spare", backend="checked", model_file=weights.name)
    commit = config_repo.commit("a spare model whose weights are not here yet")
    reason = reason_for(weights)

    # The plan says so before anything is applied...
    plan = await (await post(client, "/control/config/plan", commit=commit)).json()
    assert plan["availability"] == {
        "reference": {"availability": "available"},
        "reference-low": {"availability": "available"},
        "spare": {"availability": "unavailable", "reason": reason},
    }
    # ... the apply succeeds, because the commit does not need the spare model to serve...
    resp = await post(client, "/control/config/apply", commit=commit)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["plan"]["availability"]["spare"]["reason"] == reason
    # ... and status and health say it could not load here, and why.
    status = await status_of(client)
    assert status["serving_commit"] == commit
    spare = models_of(status)["spare"]
    assert spare["state"] == "configured"
    assert (spare["availability"], spare["reason"]) == ("unavailable", reason)
    assert models_of(status)["reference"]["availability"] == "available"
    resp = await client.get("/health/models/spare")
    assert resp.status == 503
    health = await resp.json()
    # Public routes show a path inside the host's folders relative to it.
    assert (health["state"], health["reason"]) == ("unavailable",
                                                   reason_for("models_dir/spare.toml"))
    tts_models = {m["name"]: m for m in (await (await client.get("/tts/models")).json())[
        "models"]}
    assert tts_models["spare"]["reason"] == reason_for("models_dir/spare.toml")
    assert (await client.get("/health/models/reference")).status == 200

    # A switch to it fails at once, saying why, and changes nothing: no commit, same branch.
    log_before = config_repo.repo.git.rev_list("--all")
    resp = await post(client, "/control/models/switch", model="spare")
    error = await error_of(resp)
    assert resp.status == 422 and error["code"] == "model_unavailable", error
    assert reason in error["message"]
    assert config_repo.head == commit and config_repo.repo.git.rev_list("--all") == log_before
    assert config_repo.repo.git.status("--porcelain") == ""
    status = await status_of(client)
    assert status["serving_commit"] == commit and status["attempted_commit"] == commit
    assert status["default_model"] == "reference"

    # The weights arrive: the same switch goes through.
    weights.write_text("pitch_hz = 200\n")
    resp = await post(client, "/control/models/switch", model="spare")
    body = await resp.json()
    assert resp.status == 200, body
    assert config_repo.head == body["commit"] != commit
    resp = await post(client, "/tts", text="Hello there")
    assert resp.status == 200 and resp.headers["X-AllTalk-Model"].startswith("spare;")
    assert (await client.get("/health/models/spare")).status == 200


@pytest.mark.parametrize("needed_as", ["default_model", "keep_loaded"])
async def test_a_model_the_commit_serves_must_be_available_or_nothing_changes(
        start_server, config_repo, tmp_path, needed_as):
    missing = tmp_path / "spare.toml"
    client = await start_server(extra_plugins=CHECKED)
    if needed_as == "default_model":
        config_repo.model("spare", backend="checked", model_file=missing.name)
        config_repo.set("settings.toml", "default.default_model", "spare")
    else:
        config_repo.model("spare", backend="checked", model_file=missing.name, keep_loaded=True)
    commit = config_repo.commit(f"spare as {needed_as}, its weights missing")

    resp = await post(client, "/control/config/apply", commit=commit)
    error = await error_of(resp)
    assert resp.status == 422 and error["code"] == "model_unavailable", error
    assert reason_for(missing) in error["message"]
    assert error["details"]["commit"] == commit

    status = await status_of(client)
    assert status["serving_commit"] == config_repo.initial
    assert status["last_failure"]["commit"] == commit
    assert set(models_of(status)) == {"reference", "reference-low"}
    assert models_of(status)["reference"]["generation"] == 1
    resp = await post(client, "/tts", text="Hello there")
    assert resp.headers["X-AllTalk-Commit"] == config_repo.initial
    assert resp.headers["X-AllTalk-Model"] == "reference; generation=1"


async def test_strict_models_makes_any_unavailable_model_fail_the_apply(
        start_server, config_repo, tmp_path):
    weights = tmp_path / "spare.toml"
    client = await start_server(extra_plugins=CHECKED)
    config_repo.model("spare", backend="checked", model_file=weights.name)
    config_repo.set("settings.toml", "default.strict_models", True)
    commit = config_repo.commit("every model must be usable")

    resp = await post(client, "/control/config/apply", commit=commit)
    error = await error_of(resp)
    assert resp.status == 422 and error["code"] == "model_unavailable", error
    assert reason_for(weights) in error["message"]
    assert (await status_of(client))["serving_commit"] == config_repo.initial

    # Availability is checked afresh at each apply: with the file there, the same commit applies.
    weights.write_text("pitch_hz = 200\n")
    resp = await post(client, "/control/config/apply", commit=commit)
    assert resp.status == 200, await resp.text()


async def test_models_whose_backend_is_missing_are_unavailable_while_the_rest_serves(
        start_server, config_repo):
    config_repo.model("piper", backend="onnx", voice_package="en_US-lessac-medium")
    config_repo.model("festival", backend="festival")
    config_repo.model("shaky", backend="shaky")
    commit = config_repo.commit("models for backends this host does not run")
    client = await start_server(
        plugins=["reference"],  # the allow-list leaves the installed onnx and xtts out
        extra_plugins=[("shaky", Plugin(error=RuntimeError("no GPU driver")))])

    status = await status_of(client)
    assert status["serving_commit"] == commit
    reasons = {n: m.get("reason") for n, m in models_of(status).items()
               if m["availability"] == "unavailable"}
    assert set(reasons) == {"piper", "festival", "shaky"}
    assert "left out by the ALLTALK_PLUGINS allow-list" in reasons["piper"]
    assert "'festival' is not installed (installed backends: reference" in reasons["festival"]
    assert "plugin shaky" in reasons["shaky"] and "no GPU driver" in reasons["shaky"]
    assert "failed to load" in reasons["shaky"]
    for name, reason in reasons.items():
        resp = await client.get(f"/health/models/{name}")
        assert resp.status == 503
        assert (await resp.json())["reason"] == reason
    plugins = {p["name"]: p["status"] for p in status["plugins"]}
    assert plugins["onnx"] == "skipped" and plugins["shaky"] == "failed"

    resp = await post(client, "/tts", text="Hello there")
    assert resp.status == 200 and resp.headers["X-AllTalk-Model"].startswith("reference;")
    # Such a model is unavailable, not invalid: a commit naming it applies.
    again = config_repo.change("still there", "settings.toml", "default.max_text_length", 900)
    assert (await post(client, "/control/config/apply", commit=again)).status == 200


def test_public_reasons_show_paths_relative_to_the_hosts_folders():
    from pathlib import Path

    from alltalk_host.web.shown_paths import relative_paths

    folders = {"models_dir": Path("/srv/tts/models"), "state_dir": Path("/var/lib/alltalk")}
    assert relative_paths("weights file /srv/tts/models/joe/joe.onnx not found", folders) == (
        "weights file models_dir/joe/joe.onnx not found")
    assert relative_paths("cannot read /home/ada/x/voice.json: bad", folders) == (
        "cannot read voice.json: bad")
    assert relative_paths("/var/lib/alltalk/cache is full; see http://h/a/b", folders) == (
        "state_dir/cache is full; see http://h/a/b")
