"""Memory admission: a model that would not fit beside what serves is refused before anything
loads, or replaced in place where its settings allow; the plan shows what is needed and free."""

from __future__ import annotations

import asyncio
import logging

import pytest

from .helpers import error_of, wait_until

MiB = 1024 * 1024


def budget(config_repo, mb: float, **memory) -> None:
    """A budget of a few MiB, checked against the backends' exact figures: the models run
    inline, as a worker's measured memory counts its interpreter too (tens of MiB, see the
    last test)."""
    config_repo.set("settings.toml", "default.workers.isolation", "inline")
    config_repo.set("settings.toml", "default.memory.ram_budget_mb", mb)
    for key, value in memory.items():
        config_repo.set("settings.toml", f"default.memory.{key}", value)


async def plan(client, commit):
    resp = await client.post("/control/config/plan", json={"commit": commit})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def generation(client) -> tuple[str, int]:
    status = await (await client.get("/control/status")).json()
    gen = next(m for m in status["models"] if m["name"] == "reference")
    return status["serving_commit"], gen["generation"]


async def test_a_model_that_does_not_fit_beside_is_refused_before_anything_loads(
        start_server, config_repo):
    config_repo.model("reference", memory_mb=8)
    budget(config_repo, 20)
    start = config_repo.commit("8 MiB serving under a 20 MiB budget")
    client = await start_server()
    bigger = config_repo.change("16 MiB", "models.toml",
                                "default.models.reference.settings.memory_mb", 16)

    shown = await plan(client, bigger)
    (entry,) = shown["memory"]
    assert entry["model"] == "reference" and entry["how"] == "refused" and not entry["fits"]
    assert entry["need"] == {"ram_bytes": 16 * MiB, "device": "cpu", "device_bytes": 0,
                             "source": "estimate"}
    # 20 budgeted, less what the serving copy took (measured at its load: 8 MiB and a bit)
    assert 8 * MiB < entry["free_ram_bytes"] <= 12 * MiB

    resp = await client.post("/control/config/apply", json={"commit": bigger})
    error = await error_of(resp)
    assert resp.status == 409 and error["code"] == "insufficient_memory", error
    assert "needs 16 MiB of RAM (estimate)" in error["message"]
    assert error["details"]["models"][0]["need"]["ram_bytes"] == 16 * MiB
    assert await generation(client) == (start, 1)  # nothing loaded, nothing unloaded


async def test_a_model_that_allows_it_is_replaced_in_place_instead(start_server, config_repo,
                                                                    caplog):
    config_repo.model("reference", memory_mb=8, load_seconds=0.3)
    budget(config_repo, 20, on_insufficient_memory="swap_in_place")
    config_repo.commit("in place when it does not fit")
    client = await start_server()
    bigger = config_repo.change("16 MiB", "models.toml",
                                "default.models.reference.settings.memory_mb", 16)
    assert (await plan(client, bigger))["memory"][0]["how"] == "in place"
    caplog.set_level(logging.WARNING, logger="alltalk_host.change.apply")
    apply = asyncio.create_task(client.post("/control/config/apply", json={"commit": bigger}))
    # Replaced in place: the old copy is gone before the new one loads, and requests wait.
    await wait_until(client, lambda s: any(m["state"] == "loading" for m in s["models"]))
    waiting = asyncio.create_task(client.post("/tts", json={"text": "Waiting."}))
    assert (await apply).status == 200
    resp = await waiting
    assert resp.status == 200 and resp.headers["X-AllTalk-Commit"] == bigger
    assert await generation(client) == (bigger, 2)
    assert "does not fit beside its serving copy" in caplog.text
    assert "replacing it in place" in caplog.text


async def test_low_memory_swap_models_are_replaced_in_place_too(start_server, config_repo):
    config_repo.model("reference", memory_mb=8, low_memory_swap=True)
    budget(config_repo, 20)
    config_repo.commit("low_memory_swap")
    client = await start_server()
    bigger = config_repo.change("16 MiB", "models.toml",
                                "default.models.reference.settings.memory_mb", 16)
    assert (await client.post("/control/config/apply", json={"commit": bigger})).status == 200
    assert await generation(client) == (bigger, 2)


async def test_a_new_model_that_does_not_fit_is_refused(start_server, config_repo):
    config_repo.model("reference", memory_mb=8)
    config_repo.model("reference-low", memory_mb=16, keep_loaded=True)
    budget(config_repo, 20, on_insufficient_memory="swap_in_place")
    config_repo.set("models.toml", "default.models.reference-low.keep_loaded", False)
    start = config_repo.commit("room for one")
    client = await start_server()
    both = config_repo.change("keep the second loaded", "models.toml",
                              "default.models.reference-low.keep_loaded", True)
    resp = await client.post("/control/config/apply", json={"commit": both})
    assert resp.status == 409 and (await error_of(resp))["code"] == "insufficient_memory"
    assert await generation(client) == (start, 1)


async def test_what_a_load_took_is_measured_and_used_next_time(start_server, config_repo):
    client = await start_server()
    # reference is loaded now (measured); switching away unloads it, and the plan to come
    # back uses the measurement instead of the backend's estimate.
    resp = await client.post("/control/models/switch", json={"model": "reference-low"})
    assert resp.status == 200
    back = await plan(client, (await resp.json())["commit"] + "~1")
    (entry,) = [m for m in back["memory"] if m["model"] == "reference"]
    assert entry["need"]["source"] == "measured" and entry["need"]["ram_bytes"] >= 0
    assert entry["how"] == "beside" and entry["fits"]


@pytest.mark.process_workers
async def test_a_worker_counts_what_it_holds_now_against_the_budget(start_server, config_repo):
    config_repo.set("settings.toml", "default.memory.ram_budget_mb", 1000)
    config_repo.commit("a budget, the models in workers")
    client = await start_server()
    status = await (await client.get("/control/status")).json()
    [serving] = [m for m in status["models"] if m["name"] == "reference"]
    held = sum(w["rss"] for w in serving["workers"])
    assert held > 8 * MiB  # the worker's interpreter and the model's 8 MiB, measured
    both = config_repo.change("keep the second loaded", "models.toml",
                              "default.models.reference-low.keep_loaded", True)
    (entry,) = (await plan(client, both))["memory"]
    # What the worker holds now, give or take what it allocated since status was read.
    assert abs((1000 * MiB - held) - entry["free_ram_bytes"]) < 16 * MiB, (held, entry)
