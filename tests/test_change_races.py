"""Changes that overlap: each reads what serves once the change lock is its own."""

from __future__ import annotations

import asyncio

from alltalk_host.web.keys import HOST


async def test_a_model_reload_does_not_undo_a_switch_that_ended_while_it_waited(
        start_server, config_repo):
    """A reload asked for while another change holds the lock reloads at the commit serving
    when it gets the lock, not at the one serving when it was asked."""
    client = await start_server()
    control = client.app[HOST].control
    faster = config_repo.change("faster", "models.toml",
                                "default.models.reference.default_speed", 1.2)
    # A change as Controller._apply makes it, held at its commit point.
    with control._exclusive("apply", faster, "test"):
        _, _, prepared = await control._prepare(faster, "test", "apply")
        await control.ledger.applied_ok(faster, who="test", action="apply", duration_s=0.0)
        reload = asyncio.create_task(control.reload_model("reference", "test"))
        await asyncio.sleep(0)  # the reload is asked for, and waits for the lock
        prepared.commit()
    result = await reload  # the lock is free: the reload's change runs now
    assert result["commit"] == faster and result["plan"]["reload"] == ["reference"]
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] == status["applied_commit"] == faster
    resp = await client.post("/tts", json={"text": "Hi."})
    assert resp.headers["X-AllTalk-Commit"] == faster
    assert resp.headers["X-AllTalk-Model"] == "reference; generation=2"
