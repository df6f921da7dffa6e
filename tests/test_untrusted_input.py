"""Issue 21's reproductions of client input that once ended in a 500 or a traceback: bodies
labelled with a content coding they do not have, integers of hundreds of digits, a state
folder that cannot be written, a webhook payload nested 100k deep, requests aiohttp's own
parser refuses. Each is a 4xx (or the 507 of a full disk) with a code, and one log line."""

from __future__ import annotations

import json

import pytest

from .conftest import error_of

HUGE = 10 ** 400  # beyond a float; within Python's 4300-digit limit for int <-> str


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info]


# --- integers of hundreds of digits -----------------------------------------------------------

async def test_huge_integers_are_a_400_naming_the_field(start_server, config_repo, caplog):
    client = await start_server()
    other = config_repo.change("another commit", "settings.toml", "default.max_text_length", 900)
    body = json.dumps({"text": "Hello.", "speed": HUGE})
    resp = await client.post("/tts", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await error_of(resp))["code"] == "bad_speed"
    body = json.dumps({"model": "tts-1", "input": "Hello.", "voice": "alloy", "speed": -HUGE})
    resp = await client.post("/v1/audio/speech", data=body,
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "speed"
    for name in ("percent", "min_requests", "max_latency_ratio", "duration_s"):
        body = json.dumps({"commit": other, "canary": {name: HUGE}})
        resp = await client.post("/control/config/apply", data=body,
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 400, (name, await resp.text())
        assert (await error_of(resp))["details"] == {"field": f"canary.{name}"}
    resp = await client.post("/api/tts-generate", data={"text_input": "Hi", "speed": "9" * 400})
    assert resp.status == 400 and (await resp.json())["error"].startswith("speed: ")
    assert tracebacks(caplog) == []


def test_the_plugins_range_checks_take_huge_integers():
    from alltalk_host import number_in
    from alltalk_host_onnx.backend import _check_range
    from alltalk_host_xtts.backend import _check_parameter

    assert number_in(HUGE, 0, 2) is None and number_in(-HUGE, 0, 2) is None
    assert number_in(2, 0, 2) == 2.0 and number_in(True, 0, 2) is None
    assert number_in(0, 0, 2, open_low=True) is None and number_in(1.5, 0, 2, whole=True) is None
    for check, name in ((_check_range, "noise_scale"), (_check_parameter, "temperature")):
        with pytest.raises(ValueError, match=f"^{name}: 1000"):
            check(name, HUGE)
