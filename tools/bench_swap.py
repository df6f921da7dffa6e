"""Swap benchmark: what a hot swap costs on a live server, against baselines of the same run.

  (a) time to apply a model-changing commit / bare load + warm-up of the same model outside the
      host (target <= 1.10)
  (b) failed requests out of N sent by C concurrent clients during K swaps (target 0)
  (c) latency of runtime-only applies, p50 / p95 (target p50 < 50 ms)
  (d) server RSS before and after S model-changing swaps (target growth < 5 %)
  (e) (b) and (a) again with a drain deadline shorter than every request: at each swap the
      requests already running on the old model end with the documented 503 drain_deadline
      (counted apart), the waiting ones move to the new model; failed = any other 5xx or 4xx,
      a broken connection or a request that does not end within --request-timeout (target 0),
      and apply under that load / bare load + warm-up (target <= 1.10)
  (f) throughput and server CPU per request with metrics on / off (ALLTALK_METRICS=0), two
      servers loaded side by side with swaps (target >= 0.98), and the metrics' and memory
      admission's own work timed in process (--cost-control: both servers on, the noise floor)

The server is a real `alltalk-host serve` process on loopback with the reference backend, given
a simulated load cost (load_seconds) and a memory footprint (memory_mb) so that swaps do work;
in (e) also a simulated inference cost (rtf) so that each request lasts --request-seconds.

    .venv/bin/python -m tools.bench_swap [--clients 8] [--swaps 10] [--memory-swaps 50]
        [--drain-deadline 0.5] [--request-seconds 2] [--phases abcdef]

Prints a table and writes JSON (default docs/benchmarks/swap.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from alltalk_host.backend import ModelContext, SpeechRequest
from alltalk_host.change.plan import make_plan
from alltalk_host.host import Host, HostOptions
from alltalk_host_reference import ReferenceBackend
from tools.benchlib import ONE, RESULTS_DIR, ClientLoad, median_ci95, write_results
from tools.server import Server, commit, new_config_repo, set_key

LOAD_SECONDS = 1.0
MEMORY_MB = 64
REQUEST_TEXT = "Hello from the benchmark."
SHORT_WARMUP = "Hi there."  # (e): warm-up is not what is measured, and rtf makes it slow
MODEL = "default.models.reference.settings"


def bare_load_seconds(settings: dict, repeats: int, warmup: str = ONE) -> float:
    """Median time to construct, load and warm up the model with no host around it.

    Like the host's apply, each load happens beside a copy that is still loaded, which is then
    unloaded: the kernel finds memory for the new copy under the same conditions."""
    parsed = ReferenceBackend.validate_settings(settings)
    times = []
    previous = ReferenceBackend(parsed, ModelContext("bench", Path("."), Path(".")))
    previous.load()
    for _ in range(repeats):
        started = time.perf_counter()
        backend = ReferenceBackend(parsed, ModelContext("bench", Path("."), Path(".")))
        backend.load()
        backend.synthesize(SpeechRequest(warmup, voice="female_01"))
        times.append(time.perf_counter() - started)
        previous.unload()
        previous = backend
    previous.unload()
    return statistics.median(times)


def audio_seconds(text: str) -> float:
    """How long the reference backend speaks ``text`` (its voice is the same at any rtf)."""
    backend = ReferenceBackend(ReferenceBackend.validate_settings({}),
                               ModelContext("bench", Path("."), Path(".")))
    backend.load()
    try:
        return backend.synthesize(SpeechRequest(text, voice="female_01")).duration
    finally:
        backend.unload()


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
    return (await apply_timed(session, base, sha))[0]


async def apply_timed(session: aiohttp.ClientSession, base: str,
                      sha: str) -> tuple[float, float]:
    """(seconds the apply took, seen by the client; seconds of it the server spent loading
    and warming up the model, as its reply says)."""
    started = time.perf_counter()
    async with session.post(f"{base}/control/config/apply", json={"commit": sha}) as r:
        body = await r.json()
        if r.status != 200:
            raise SystemExit(f"apply failed: {body}")
    return time.perf_counter() - started, sum((body.get("loaded") or {}).values())


class Load(ClientLoad):
    """Clients sending /tts back to back until stopped; every outcome classified."""

    def __init__(self, session: aiohttp.ClientSession, base: str, clients: int,
                 timeout_s: float) -> None:
        self.outcomes: Counter[str] = Counter()
        self.longest_s = 0.0
        self._session, self._base, self._timeout = session, base, timeout_s
        super().__init__(clients)

    async def one(self) -> None:
        started = time.perf_counter()
        self.outcomes[await self._one()] += 1
        self.longest_s = max(self.longest_s, time.perf_counter() - started)

    async def _one(self) -> str:
        """"ok", "drain_deadline" (the documented 503) or what went wrong."""
        try:
            async with self._session.post(
                    f"{self._base}/tts", json={"text": REQUEST_TEXT},
                    timeout=aiohttp.ClientTimeout(total=self._timeout)) as r:
                body = await r.read()
                if r.status == 200:
                    return "ok"
                code = _error_code(body)
                if r.status == 503 and code == "drain_deadline":
                    return "drain_deadline"
                return f"{r.status} {code}"
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors too
            return f"no answer within {self._timeout:.0f} s"
        except aiohttp.ClientError as exc:
            return type(exc).__name__

    def summary(self) -> dict[str, Any]:
        failures = {k: n for k, n in self.outcomes.items() if k not in ("ok", "drain_deadline")}
        return {"requests": sum(self.outcomes.values()), "ok": self.outcomes["ok"],
                "drain_deadline_503": self.outcomes["drain_deadline"],
                "failed": sum(failures.values()), "failures": failures,
                "longest_request_s": self.longest_s}


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "(no JSON error)"


def make_commits(cfg: Path, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The benchmark's config history; the model settings of (a)/(b) and the commits by name."""
    models = cfg / "models.toml"
    settings = cfg / "settings.toml"
    # The benchmark's own model: the reference backend, so the figures measure the host.
    models.write_text('[default.models.reference]\nbackend = "reference"\n')
    set_key(settings, "default.default_model", "reference")
    base_settings = {"pitch_hz": 140, "load_seconds": LOAD_SECONDS, "memory_mb": MEMORY_MB,
                     "max_concurrency": 2}
    for k, v in base_settings.items():
        set_key(models, f"{MODEL}.{k}", v)
    commits = {"a": commit(cfg, "bench: model A")}
    set_key(models, f"{MODEL}.pitch_hz", 180)
    commits["b"] = commit(cfg, "bench: model B")
    for limit in (1500, 1600):
        set_key(settings, "default.max_text_length", limit)
        commits[f"runtime-{limit}"] = commit(cfg, f"bench: runtime-only {limit}")
    # Fast-loading variants for the memory run (the memory, not the wait, is what is measured).
    set_key(models, f"{MODEL}.load_seconds", 0.0)
    commits["mem-a"] = commit(cfg, "bench: fast model A")
    set_key(models, f"{MODEL}.pitch_hz", 140)
    commits["mem-b"] = commit(cfg, "bench: fast model B")
    # (e): every request lasts request_seconds, longer than the drain deadline.
    set_key(models, f"{MODEL}.load_seconds", LOAD_SECONDS)
    set_key(models, f"{MODEL}.rtf", args.rtf)
    set_key(settings, "default.drain_deadline_s", args.drain_deadline)
    set_key(settings, "default.warmup_text", SHORT_WARMUP)
    commits["drain-a"] = commit(cfg, "bench: slow requests, short drain, model A")
    set_key(models, f"{MODEL}.pitch_hz", 180)
    commits["drain-b"] = commit(cfg, "bench: slow requests, short drain, model B")
    return base_settings, commits


async def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="alltalk-bench-"))
    cfg = new_config_repo(work / "config")
    base_settings, c = make_commits(cfg, args)
    results: dict = {}
    with Server(cfg, work / "state") as server:
        base = server.base
        proc = psutil.Process(server.pid)
        async with aiohttp.ClientSession() as session:
            await apply(session, base, c["a"])

            if "a" in args.phases:  # apply vs bare load + warm-up, alternating so each reloads
                bare = bare_load_seconds({**base_settings, "pitch_hz": 180}, args.repeats)
                applies, loads = [], []
                for i in range(args.repeats):
                    await settled(session, base)
                    took, loaded = await apply_timed(session, base,
                                                     c["b"] if i % 2 == 0 else c["a"])
                    applies.append(took)
                    loads.append(loaded)
                # The load itself varies by tens of ms from one run to the next (the kernel
                # finding pages for the model's 64 MiB), in the server as in the baseline; the
                # host's own part is the apply minus the load the server timed.
                overhead = [t - x for t, x in zip(applies, loads, strict=True)]
                results["a"] = {"apply_s": statistics.median(applies),
                                "bare_load_warmup_s": bare,
                                "ratio": statistics.median(applies) / bare,
                                "server_load_warmup_s": statistics.median(loads),
                                "host_overhead_s": statistics.median(overhead),
                                "ratio_to_server_load": statistics.median(
                                    [t / x for t, x in zip(applies, loads, strict=True)]),
                                "repeats": args.repeats, "load_seconds": LOAD_SECONDS}

            if "b" in args.phases:  # clients hammer /tts while the server swaps K times
                load = Load(session, base, args.clients, args.request_timeout)
                for i in range(args.swaps):
                    await apply(session, base, c["b"] if i % 2 == 0 else c["a"])
                await load.stop()
                results["b"] = {**load.summary(), "clients": args.clients, "swaps": args.swaps}

            if "c" in args.phases:  # runtime-only applies
                # The runtime commits carry model B: get there first, so none of them reloads.
                await apply(session, base, c["runtime-1600"])
                await settled(session, base)
                lat = sorted([await apply(session, base, c[f"runtime-{1500 + 100 * (i % 2)}"])
                              for i in range(args.runtime)])
                results["c"] = {"p50_ms": 1000 * statistics.median(lat),
                                "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
                                "applies": len(lat)}

            if "d" in args.phases:  # RSS before/after S model-changing swaps, after a warm-up
                await apply(session, base, c["mem-a"])
                await apply(session, base, c["mem-b"])
                await asyncio.sleep(0.5)
                before = proc.memory_info().rss
                for i in range(args.memory_swaps):
                    await apply(session, base, c["mem-a"] if i % 2 else c["mem-b"])
                await asyncio.sleep(1.0)  # let the last drained generation unload
                after = proc.memory_info().rss
                results["d"] = {"rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
                                "growth_pct": 100 * (after - before) / before,
                                "swaps": args.memory_swaps, "model_memory_mb": MEMORY_MB}

            if "e" in args.phases:
                results["e"] = await drain_phase(session, base, c, base_settings, args)
    if "f" in args.phases:
        results["f"] = await metrics_cost_phase(cfg, work, c, args)
    return results


async def metrics_cost_phase(cfg: Path, work: Path, c: dict[str, str],
                             args: argparse.Namespace) -> dict[str, Any]:
    """Throughput with metrics on and off (ALLTALK_METRICS=0): two servers on one config,
    side by side, each under the same load at the same time, with two swaps on both at the
    same moments in each round (memory admission runs in each apply).

    Side by side, not in turns: on this 2-core machine throughput moves by 10-20 % from one
    few-second window to the next, and both servers see the same window. Half of the rounds
    run with the servers started in one order and half in the other: an A/A run (both with
    metrics on, ``--cost-control``) showed the server started first 3-4 % slower, whatever
    it measured."""
    names = ("on", "on-too") if args.cost_control else ("on", "off")
    envs = {"on": {}, "on-too": {}, "off": {"ALLTALK_METRICS": "0"}}
    rates: dict[str, list[float]] = {n: [] for n in names}
    # The server's own CPU time per answered request: the work the metrics add.
    cpu_per_request: dict[str, list[float]] = {n: [] for n in names}
    for order in (names, names[::-1]):
        half = args.cost_rounds // 2 if order == names else args.cost_rounds - args.cost_rounds // 2
        with Server(cfg, work / f"state-{order[0]}", env=envs[order[0]]) as first, \
                Server(cfg, work / f"state-{order[1]}", env=envs[order[1]]) as second:
            await _side_by_side(dict(zip(order, (first, second), strict=True)), c, args, half,
                                rates, cpu_per_request)
    a, b = names
    paired = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
    paired_cpu = [x / y for x, y in zip(cpu_per_request[a], cpu_per_request[b], strict=True)]
    return {"rounds": args.cost_rounds, "seconds": args.cost_seconds, "clients": args.clients,
            "control": args.cost_control, "sides": list(names),
            "rps_a": statistics.median(rates[a]), "rps_b": statistics.median(rates[b]),
            "paired": statistics.median(paired), "paired_ci95": median_ci95(paired),
            "cost_pct": 100 * (1 - statistics.median(paired)),
            "cpu_ms_a": 1000 * statistics.median(cpu_per_request[a]),
            "cpu_ms_b": 1000 * statistics.median(cpu_per_request[b]),
            "cpu_ratio": statistics.median(paired_cpu), "cpu_ratio_ci95": median_ci95(paired_cpu),
            **await in_process_costs(cfg, work, c),
            "rates": rates, "cpu_per_request": cpu_per_request}


async def _side_by_side(servers: dict[str, Server], c: dict[str, str], args: argparse.Namespace,
                        rounds: int, rates: dict[str, list[float]],
                        cpu_per_request: dict[str, list[float]]) -> None:
    """``rounds`` rounds (after one that warms both up) of the same load and swaps on both
    servers at once; each server's requests per second and CPU per request appended."""
    processes = {n: psutil.Process(s.pid) for n, s in servers.items()}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for server in servers.values():
            await apply(session, server.base, c["a"])
        for round_ in range(rounds + 1):
            cpu = {n: p.cpu_times() for n, p in processes.items()}
            started = time.perf_counter()
            loads = {n: Load(session, s.base, args.clients, args.request_timeout)
                     for n, s in servers.items()}
            for commit in (c["b"], c["a"]):
                await asyncio.sleep(args.cost_seconds / 3)
                await asyncio.gather(*(apply(session, s.base, commit)
                                       for s in servers.values()))
            await asyncio.sleep(args.cost_seconds / 3)
            await asyncio.gather(*(load.stop() for load in loads.values()))
            elapsed = time.perf_counter() - started
            for name, load in loads.items():
                summary = load.summary()
                if summary["failed"]:
                    raise SystemExit(f"(f) requests failed: {summary['failures']}")
                if round_ == 0:
                    continue
                spent = processes[name].cpu_times()
                rates[name].append(summary["ok"] / elapsed)
                cpu_per_request[name].append(
                    (spent.user + spent.system - cpu[name].user - cpu[name].system)
                    / summary["ok"])
            await asyncio.gather(*(settled(session, s.base) for s in servers.values()))


async def in_process_costs(cfg: Path, work: Path, c: dict[str, str],
                           repeats: int = 2000) -> dict[str, float]:
    """The two costs timed directly, in a host of this process on the same config:

    - ``admission_ms``: one memory admission check (free RAM, the cgroup's room, each model's
      need); an apply runs it twice (its plan, its transaction);
    - ``metrics_us``: what the metrics record for one speech request (its answer counted by
      route, model, status and arm; time to first audio, whole time, real-time factor and
      audio seconds observed): the work the metrics add to every request, which the servers'
      CPU times above can resolve only to a percent or two."""
    host = Host(HostOptions(config_repo=cfg, state_dir=work / "state-in-process",
                            directed=True))
    await host.start()
    try:
        await host.control.apply(c["a"], "bench")
        config = await asyncio.to_thread(host.control.loader.load, c["b"])
        serving = host.registry.serving
        plan = make_plan(serving.config, serving.generations, config)
        memory = host.control.transaction.memory
        started = time.perf_counter()
        for _ in range(repeats // 10):
            memory.check(config, plan, serving)
        admission_ms = 1000 * (time.perf_counter() - started) / (repeats // 10)
        metrics = host.metrics
        assert metrics is not None
        started = time.perf_counter()
        for _ in range(repeats):
            metrics.request_done("/tts", "reference", 200)
            metrics.speech_done("reference", 0.02, 0.02, 0.015, 1.5)
        metrics_us = 1e6 * (time.perf_counter() - started) / repeats
        return {"admission_ms": admission_ms, "metrics_us": metrics_us}
    finally:
        await host.stop()


async def drain_phase(session: aiohttp.ClientSession, base: str, c: dict[str, str],
                      base_settings: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Swaps under load while every request outlasts the drain deadline."""
    bare = bare_load_seconds({**base_settings, "pitch_hz": 180, "rtf": args.rtf}, args.repeats,
                             warmup=SHORT_WARMUP)
    await apply(session, base, c["drain-a"])
    await settled(session, base)
    load = Load(session, base, args.clients, args.request_timeout)
    applies = []
    # Requests start when a swap moves the queue over, so a fixed pause would switch at the same
    # point of every request (measured: always 0.2 s before they end, so no deadline passed).
    # A pause drawn at random (seeded) puts the switch anywhere in a request.
    pauses = random.Random(0)
    for i in range(args.swaps):
        # Let the serving model start requests (and queue more) before it is replaced.
        await asyncio.sleep(args.request_seconds * pauses.uniform(0.5, 1.5))
        applies.append(await apply(session, base, c["drain-b"] if i % 2 == 0 else c["drain-a"]))
    await load.stop()
    return {**load.summary(), "clients": args.clients, "swaps": args.swaps,
            "drain_deadline_s": args.drain_deadline, "request_s": args.request_seconds,
            "rtf": args.rtf, "apply_under_load_s": statistics.median(applies),
            "bare_load_warmup_s": bare, "ratio": statistics.median(applies) / bare,
            "repeats": args.repeats}


def table(r: dict) -> str:
    rows = []
    if "a" in r:
        rows.append(("(a) apply / bare load+warm-up", f"{r['a']['ratio']:.3f}",
                     f"{r['a']['apply_s']:.3f} s / {r['a']['bare_load_warmup_s']:.3f} s",
                     "<= 1.10"))
        rows.append(("(a) apply / the same load timed in the server",
                     f"{r['a']['ratio_to_server_load']:.3f}",
                     f"host overhead {r['a']['host_overhead_s'] * 1000:.0f} ms per apply "
                     f"(load {r['a']['server_load_warmup_s']:.3f} s)", "<= 1.10"))
    if "b" in r:
        rows.append(("(b) failed requests during swaps", f"{r['b']['failed']} / "
                     f"{r['b']['requests']}", f"{r['b']['clients']} clients, {r['b']['swaps']} "
                     f"swaps{_failures(r['b'])}", "0"))
    if "c" in r:
        rows.append(("(c) runtime-only apply p50 / p95",
                     f"{r['c']['p50_ms']:.1f} / {r['c']['p95_ms']:.1f} ms",
                     f"{r['c']['applies']} applies", "p50 < 50 ms"))
    if "d" in r:
        rows.append(("(d) RSS growth over swaps", f"{r['d']['growth_pct']:+.2f} %",
                     f"{r['d']['rss_before_mb']:.0f} -> {r['d']['rss_after_mb']:.0f} MiB, "
                     f"{r['d']['swaps']} swaps", "< 5 %"))
    if "f" in r:
        f = r["f"]
        a, b = f["sides"]
        rows.append((f"(f) throughput, metrics {a} / {b} (paired per round)",
                     f"{f['paired']:.3f} [{f['paired_ci95'][0]:.3f}, {f['paired_ci95'][1]:.3f}]",
                     f"{f['rps_a']:.0f} / {f['rps_b']:.0f} requests/s (medians), "
                     f"{f['clients']} clients each, side by side, {f['rounds']} rounds of "
                     f"{f['seconds']:.0f} s with 2 swaps each; cost {f['cost_pct']:+.1f} %",
                     ">= 0.98"))
        rows.append((f"(f) server CPU per request, metrics {a} / {b}",
                     f"{f['cpu_ratio']:.3f} [{f['cpu_ratio_ci95'][0]:.3f}, "
                     f"{f['cpu_ratio_ci95'][1]:.3f}]",
                     f"{f['cpu_ms_a']:.2f} / {f['cpu_ms_b']:.2f} ms (medians)", "<= 1.02"))
        rows.append(("(f) the metrics' own work per request, timed in process",
                     f"{f['metrics_us']:.1f} us",
                     f"{f['metrics_us'] / 10 / f['cpu_ms_b']:.2f} % of the server's CPU per "
                     "request", "< 2 %"))
        rows.append(("(f) one memory admission check", f"{f['admission_ms']:.3f} ms",
                     "run twice per apply", ""))
    if "e" in r:
        e = r["e"]
        rows.append((f"(e) failed requests during swaps, drain deadline {e['drain_deadline_s']} s"
                     f" < requests of {e['request_s']} s", f"{e['failed']} / {e['requests']}",
                     f"{e['clients']} clients, {e['swaps']} swaps; 503 drain_deadline: "
                     f"{e['drain_deadline_503']}, 200: {e['ok']}; slowest request "
                     f"{e['longest_request_s']:.1f} s{_failures(e)}", "0"))
        rows.append(("(e) apply under that load / bare load+warm-up", f"{e['ratio']:.3f}",
                     f"{e['apply_under_load_s']:.3f} s / {e['bare_load_warmup_s']:.3f} s",
                     "<= 1.10"))
    lines = ["| measure | result | detail | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def _failures(summary: dict) -> str:
    if not summary["failures"]:
        return ""
    return "; failures: " + ", ".join(f"{k}: {n}" for k, n in summary["failures"].items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runtime", type=int, default=40)
    parser.add_argument("--memory-swaps", type=int, default=50)
    parser.add_argument("--drain-deadline", type=float, default=0.5,
                        help="(e): drain_deadline_s, shorter than --request-seconds")
    parser.add_argument("--request-seconds", type=float, default=2.0,
                        help="(e): how long each request works")
    parser.add_argument("--request-timeout", type=float, default=60.0,
                        help="a request without an answer by then counts as failed")
    parser.add_argument("--phases", default="abcdef", help="which of (a)-(f) to run")
    parser.add_argument("--cost-rounds", type=int, default=10,
                        help="(f): measured rounds, both servers loaded at once")
    parser.add_argument("--cost-control", action="store_true",
                        help="(f): both servers with metrics on (an A/A run: the noise floor)")
    parser.add_argument("--cost-seconds", type=float, default=6.0,
                        help="(f): seconds of load per round")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "swap.json")
    args = parser.parse_args()
    if args.drain_deadline >= args.request_seconds:
        parser.error("--drain-deadline must be shorter than --request-seconds")
    args.rtf = args.request_seconds / audio_seconds(REQUEST_TEXT)
    results = asyncio.run(run(args))
    print(table(results))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
