"""GET /metrics: scraped with Prometheus's own parser after real requests and real swaps,
the numbers are what was sent and done."""

from __future__ import annotations

import openai
from prometheus_client.parser import text_string_to_metric_families

from .helpers import wait_until


async def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_what_was_sent_and_what_changed(start_server, config_repo):
    client = await start_server()
    for _ in range(5):
        assert (await client.post("/tts", json={"text": "Hello there."})).status == 200
    assert (await client.post("/tts", json={"text": ""})).status == 400
    api = openai.AsyncOpenAI(base_url=f"http://{client.host}:{client.port}/v1",
                             api_key="x", max_retries=0)
    for _ in range(2):
        await api.audio.speech.create(model="tts-1", voice="alloy", input="Hi there.",
                                      response_format="wav")
    await api.close()
    for model in ("reference-low", "reference"):
        resp = await client.post("/control/models/switch", json={"model": model})
        assert resp.status == 200
    await wait_until(client, lambda s: all(m["state"] in ("serving", "configured")
                                           for m in s["models"]))

    m = await scrape(client)
    # No canary runs: every request series says "stable" (one label set, canary or not).
    assert value(m, "alltalk_requests_total", route="/tts", model="reference",
                 status_class="2xx", arm="stable") == 5
    assert value(m, "alltalk_requests_total", route="/tts", model="",
                 status_class="4xx", arm="stable") == 1
    assert value(m, "alltalk_requests_total", route="/v1/audio/speech", model="reference",
                 status_class="2xx", arm="stable") == 2
    assert value(m, "alltalk_time_to_first_audio_seconds_count", model="reference",
                 arm="stable") == 7
    assert value(m, "alltalk_speech_duration_seconds_count", model="reference",
                 arm="stable") == 7
    assert value(m, "alltalk_real_time_factor_count", model="reference", arm="stable") == 7
    assert value(m, "alltalk_audio_seconds_total", model="reference", arm="stable") > 7 * 0.5
    # Changes: the start-up apply and two switches, each timed by phase; two drains.
    assert value(m, "alltalk_operations_total", action="startup", outcome="applied") == 1
    assert value(m, "alltalk_operations_total", action="switch", outcome="applied") == 2
    for phase in ("planning", "loading", "warming up", "checking", "switching"):
        assert value(m, "alltalk_operation_phase_duration_seconds_count", action="switch",
                     phase=phase) == 2, phase
    assert value(m, "alltalk_drain_duration_seconds_count", model="reference") == 1
    assert value(m, "alltalk_drain_duration_seconds_count", model="reference-low") == 1
    # What is true now, with the commit on the info metrics only.
    head = config_repo.repo.head.commit.hexsha
    assert value(m, "alltalk_config_info", commit=head, serving_commit=head,
                 default_model="reference") == 1
    gens = [labels for (name, labels) in m if name == "alltalk_generation_info"]
    assert [dict(g)["model"] for g in gens] == ["reference"]
    assert dict(gens[0])["generation"] == "2" and dict(gens[0])["state"] == "serving"
    assert value(m, "alltalk_requests_running", model="reference") == 0
    assert value(m, "alltalk_model_memory_bytes", model="reference", state="serving") > 0
    assert value(m, "alltalk_ready") == 1
    assert value(m, "alltalk_watch_enabled") == 0
    # Commits never label a counter or a histogram.
    assert not any("commit" in dict(labels) for (name, labels) in m
                   if not name.endswith("_info"))


async def test_a_failed_change_is_counted_as_failed(start_server, config_repo):
    client = await start_server()
    bad = config_repo.change("broken", "models.toml",
                             "default.models.reference.settings.model_file", "missing.toml")
    assert (await client.post("/control/config/apply", json={"commit": bad})).status == 422
    m = await scrape(client)
    assert value(m, "alltalk_operations_total", action="apply", outcome="failed") == 1
    assert value(m, "alltalk_operation_duration_seconds_count", action="apply",
                 outcome="failed") == 1


async def test_metrics_have_the_control_guard_and_can_be_turned_off(start_server):
    client = await start_server(control_token="secret")
    assert (await client.get("/metrics")).status == 401
    await scrape(client, Authorization="Bearer secret")
    off = await start_server(metrics=False)
    resp = await off.get("/metrics")
    assert resp.status == 404
    assert (await off.post("/tts", json={"text": "Still speaks."})).status == 200
