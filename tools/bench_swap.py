"""Swap benchmark: what a hot swap costs on a live server, against baselines of the same run.

  (a) time to apply a model-changing commit / bare load + warm-up of the same model outside the
      host (target <= 1.10)
  (b) failed requests out of N sent by C concurrent clients during K swaps (target 0)
  (c) latency of runtime-only applies, p50 / p95 (target p50 < 50 ms)
  (d) server RSS before and after S model-changing swaps (target growth < 5 %)

The server is a real `alltalk-host serve` process on loopback with the reference backend, given
a simulated load cost (load_seconds) and a memory footprint (memory_mb) so that swaps do work.

    .venv/bin/python tools/bench_swap.py [--clients 8] [--swaps 10] [--memory-swaps 50]

Prints a table and writes JSON (default docs/benchmarks/swap.json).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import git
import psutil
import tomlkit

from alltalk_host.backend import ModelContext, SpeechRequest
from alltalk_host.config.repo import init_repo
from alltalk_host_reference import ReferenceBackend

# Run as a script from anywhere: the project root makes `tools` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.benchlib import RESULTS_DIR, write_results

ROOT = Path(__file__).resolve().parent.parent
WARMUP = "The quick brown fox jumps over the lazy dog."
LOAD_SECONDS = 1.0
MEMORY_MB = 64


def set_key(path: Path, dotted: str, value: object) -> None:
    doc = tomlkit.parse(path.read_text())
    *parents, last = dotted.split(".")
    table = doc
    for p in parents:
        table = table.setdefault(p, tomlkit.table())
    table[last] = value
    path.write_text(tomlkit.dumps(doc))


def commit(repo: git.Repo, message: str) -> str:
    repo.git.add("-A")
    repo.index.commit(message)
    return repo.head.commit.hexsha


def bare_load_seconds(settings: dict, repeats: int) -> float:
    """Median time to construct, load and warm up the model with no host around it."""
    parsed = ReferenceBackend.validate_settings(settings)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        backend = ReferenceBackend(parsed, ModelContext("bench", Path("."), Path(".")))
        backend.load()
        backend.synthesize(SpeechRequest(WARMUP, voice="female_01"))
        times.append(time.perf_counter() - started)
        backend.unload()
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(session: aiohttp.ClientSession, base: str) -> None:
    for _ in range(300):
        try:
            async with session.get(f"{base}/health/ready") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("server did not become ready")


async def settled(session: aiohttp.ClientSession, base: str) -> None:
    """Wait until replaced generations are unloaded, so one apply's clean-up is not billed to
    the next one."""
    while True:
        async with session.get(f"{base}/control/status") as r:
            status = await r.json()
        if all(m["state"] in ("serving", "configured") for m in status["models"]):
            return
        await asyncio.sleep(0.05)


async def apply(session: aiohttp.ClientSession, base: str, sha: str) -> float:
    started = time.perf_counter()
    async with session.post(f"{base}/control/config/apply", json={"commit": sha}) as r:
        body = await r.json()
        if r.status != 200:
            raise SystemExit(f"apply failed: {body}")
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="alltalk-bench-"))
    cfg = work / "config"
    init_repo(cfg, ROOT / "config_repo")
    repo = git.Repo(cfg)
    models = cfg / "models.toml"
    # The benchmark's own model: the reference backend, so the figures measure the host.
    models.write_text('[default.models.reference]\nbackend = "reference"\n')
    set_key(cfg / "settings.toml", "default.default_model", "reference")
    base_settings = {"pitch_hz": 140, "load_seconds": LOAD_SECONDS, "memory_mb": MEMORY_MB,
                     "max_concurrency": 2}
    for k, v in base_settings.items():
        set_key(models, f"default.models.reference.settings.{k}", v)
    a = commit(repo, "bench: model A")
    set_key(models, "default.models.reference.settings.pitch_hz", 180)
    b = commit(repo, "bench: model B")
    runtime = []
    for limit in (1500, 1600):
        set_key(cfg / "settings.toml", "default.max_text_length", limit)
        runtime.append(commit(repo, f"bench: runtime-only {limit}"))
    # Fast-loading variants for the memory run (the memory, not the wait, is what is measured).
    set_key(models, "default.models.reference.settings.load_seconds", 0.0)
    mem_a = commit(repo, "bench: fast model A")
    set_key(models, "default.models.reference.settings.pitch_hz", 140)
    mem_b = commit(repo, "bench: fast model B")
    repo.close()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLTALK_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "alltalk_host.cli", "serve", "--config-repo", str(cfg),
         "--state-dir", str(work / "state"), "--port", str(port), "--log-level", "warning"],
        env=env, cwd=ROOT)
    proc = psutil.Process(server.pid)
    results: dict = {}
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base)
            await apply(session, base, a)

            # (a) apply vs bare load + warm-up, alternating A/B so every apply reloads.
            bare = bare_load_seconds({**base_settings, "pitch_hz": 180}, args.repeats)
            applies = []
            for i in range(args.repeats):
                await settled(session, base)
                applies.append(await apply(session, base, b if i % 2 == 0 else a))
            results["a"] = {"apply_s": statistics.median(applies), "bare_load_warmup_s": bare,
                            "ratio": statistics.median(applies) / bare,
                            "repeats": args.repeats, "load_seconds": LOAD_SECONDS}

            # (b) clients hammer /tts while the server swaps K times.
            counts = {"ok": 0, "failed": 0}
            stop = asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    try:
                        async with session.post(f"{base}/tts",
                                                json={"text": "Hello from the benchmark."}) as r:
                            await r.read()
                            counts["ok" if r.status == 200 else "failed"] += 1
                    except aiohttp.ClientError:
                        counts["failed"] += 1

            tasks = [asyncio.create_task(client()) for _ in range(args.clients)]
            for i in range(args.swaps):
                await apply(session, base, b if i % 2 == 0 else a)
            stop.set()
            await asyncio.gather(*tasks)
            results["b"] = {"requests": counts["ok"] + counts["failed"],
                            "failed": counts["failed"], "clients": args.clients,
                            "swaps": args.swaps}

            # (c) runtime-only applies.
            await settled(session, base)
            lat = [await apply(session, base, runtime[i % 2]) for i in range(args.runtime)]
            lat.sort()
            results["c"] = {"p50_ms": 1000 * statistics.median(lat),
                            "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
                            "applies": len(lat)}

            # (d) RSS before/after S model-changing swaps (after one warm-up cycle).
            await apply(session, base, mem_a)
            await apply(session, base, mem_b)
            await asyncio.sleep(0.5)
            before = proc.memory_info().rss
            for i in range(args.memory_swaps):
                await apply(session, base, mem_a if i % 2 else mem_b)
            await asyncio.sleep(1.0)  # let the last drained generation unload
            after = proc.memory_info().rss
            results["d"] = {"rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
                            "growth_pct": 100 * (after - before) / before,
                            "swaps": args.memory_swaps, "model_memory_mb": MEMORY_MB}
    finally:
        server.terminate()
        server.wait(30)
    return results


def table(r: dict) -> str:
    rows = [
        ("(a) apply / bare load+warm-up", f"{r['a']['ratio']:.3f}",
         f"{r['a']['apply_s']:.3f} s / {r['a']['bare_load_warmup_s']:.3f} s", "<= 1.10"),
        ("(b) failed requests during swaps", f"{r['b']['failed']} / {r['b']['requests']}",
         f"{r['b']['clients']} clients, {r['b']['swaps']} swaps", "0"),
        ("(c) runtime-only apply p50 / p95", f"{r['c']['p50_ms']:.1f} / {r['c']['p95_ms']:.1f} ms",
         f"{r['c']['applies']} applies", "p50 < 50 ms"),
        ("(d) RSS growth over swaps", f"{r['d']['growth_pct']:+.2f} %",
         f"{r['d']['rss_before_mb']:.0f} -> {r['d']['rss_after_mb']:.0f} MiB, "
         f"{r['d']['swaps']} swaps", "< 5 %"),
    ]
    lines = ["| measure | result | detail | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runtime", type=int, default=40)
    parser.add_argument("--memory-swaps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "swap.json")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(table(results))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
