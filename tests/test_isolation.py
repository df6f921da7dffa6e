"""Issue 15, section 5: a broken plugin disables only its own models; plugin code is not
hot-reloaded, and /control/status says which version of each plugin runs."""

from __future__ import annotations

import logging

from alltalk_host_reference import ReferenceBackend

from .helpers import post, status_of
from .test_availability import Plugin, models_of


class CrashingBackend(ReferenceBackend):
    """A plugin bug: validate_settings raises something no setting explains."""

    name = "crashing"

    @classmethod
    def validate_settings(cls, settings):  # type: ignore[no-untyped-def]
        raise AttributeError("'NoneType' object has no attribute 'voices'")


async def test_a_plugin_that_crashes_validating_disables_only_its_models(
        start_server, config_repo, caplog):
    config_repo.model("shaky", backend="crashing")
    commit = config_repo.commit("a model of a plugin with a bug")
    with caplog.at_level(logging.WARNING, logger="alltalk_host.config.models"):
        client = await start_server(extra_plugins=[("crashing", Plugin(CrashingBackend))])
    status = await status_of(client)
    assert status["serving_commit"] == commit
    shaky = models_of(status)["shaky"]
    assert shaky["availability"] == "unavailable"
    assert shaky["reason"] == ("backend crashing: validate_settings failed: AttributeError: "
                               "'NoneType' object has no attribute 'voices'")
    assert any(r.exc_info for r in caplog.records if "validate_settings" in r.getMessage())
    resp = await post(client, "/tts", text="The others still serve.")
    assert resp.status == 200
    resp = await post(client, "/control/models/switch", model="shaky")
    assert resp.status == 422 and "validate_settings failed" in await resp.text()


async def test_status_names_each_plugins_version_and_a_restart_serves_the_same_commit(
        start_server, config_repo):
    client = await start_server()
    switched = await (await post(client, "/control/models/switch", model="reference-low")).json()
    plugins = {p["name"]: p for p in (await status_of(client))["plugins"]}
    assert plugins["reference"]["version"] and plugins["reference"]["status"] == "loaded"
    assert plugins["reference"]["distribution"] == "alltalk-host-reference"
    await client.close()
    # New plugin code is picked up by a restart only; the restart serves what was served.
    again = await start_server()
    status = await status_of(again)
    assert status["serving_commit"] == switched["commit"]
    assert status["default_model"] == "reference-low"
