"""Ray benchmark (issue 12): rollouts across a 2-replica fleet under load, and the fleet's
throughput against a single aiohttp host, in one run.

  (a) failed requests while C clients speak and K commits roll out (target 0); a rollout
      reloads the model on every replica (load_seconds, so it overlaps requests)
  (b) time until every replica serves each new commit: the rollout as the fleet sees it
      (deploy to every replica reporting the commit) and as the clients see it (rollout start
      to the last replica's first answer carrying the commit); median and max
  (c) requests per second of the fleet (2 replicas behind Serve's proxy) / one
      `alltalk-host serve`, same config and texts, in interleaved rounds (each side first in
      turn); a paired ratio per round, its median with a bootstrap 95 % interval. Two costs
      of a request: rtf 0 (the reference backend's few ms of CPU: what the layers cost) and a
      simulated accelerator's wait (rtf > 0, a sleep: what two replicas' capacity buys)

The cluster is a LocalCluster (its own; `ray stop` is never used); the model is the
reference backend on both sides.

    .venv/bin/python -m tools.bench_ray [--clients 8] [--rollouts 5] [--rounds 5]
        [--seconds 4] [--rtf 0.1]

Prints a markdown table and the command; writes JSON (default docs/benchmarks/ray.json).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from alltalk_host.ray.local import LocalCluster
from alltalk_host.ray.rollout import Fleet, FleetSpec
from tools.benchlib import ONE, RESULTS_DIR, ClientLoad, median_ci95, write_results
from tools.server import Server, commit, new_config_repo, set_key

MODEL = "default.models.reference.settings"
LOAD_SECONDS = 0.3


class Load(ClientLoad):
    """Clients sending /tts back to back until stopped: every answer's time, status (0: no
    answer), commit and replica kept."""

    def __init__(self, session: aiohttp.ClientSession, base: str, clients: int) -> None:
        self.answers: list[tuple[float, int, str | None, str | None]] = []
        self.errors: Counter[str] = Counter()
        self._session, self._base = session, base
        super().__init__(clients)

    async def one(self) -> None:
        try:
            async with self._session.post(f"{self._base}/tts", json={"text": ONE}) as r:
                await r.read()
                self.answers.append((time.monotonic(), r.status,
                                     r.headers.get("X-AllTalk-Commit"),
                                     r.headers.get("X-AllTalk-Replica")))
                if r.status != 200:
                    self.errors[f"HTTP {r.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.answers.append((time.monotonic(), 0, None, None))
            self.errors[type(exc).__name__] += 1

    @property
    def ok(self) -> int:
        return sum(1 for _, status, *_ in self.answers if status == 200)


def make_commits(cfg: Path, rtf: float) -> dict[str, str]:
    models, settings = cfg / "models.toml", cfg / "settings.toml"
    models.write_text('[default.models.reference]\nbackend = "reference"\n')
    set_key(settings, "default.default_model", "reference")
    for key, value in {"pitch_hz": 140, "load_seconds": LOAD_SECONDS,
                       "max_concurrency": 2}.items():
        set_key(models, f"{MODEL}.{key}", value)
    commits = {"a": commit(cfg, "bench: model A")}
    set_key(models, f"{MODEL}.pitch_hz", 180)
    commits["b"] = commit(cfg, "bench: model B")
    set_key(models, f"{MODEL}.rtf", rtf)
    commits["wait"] = commit(cfg, f"bench: model B, rtf {rtf} (a simulated accelerator)")
    return commits


def settle_times(answers: list[tuple[float, int, str | None, str | None]], started: float,
                 target: str, replicas: int) -> float | None:
    """Seconds from ``started`` to the last replica's first answer carrying ``target``."""
    first: dict[str, float] = {}
    for t, status, commit_, replica in answers:
        if t >= started and status == 200 and commit_ == target and replica:
            first.setdefault(replica, t)
    return max(first.values()) - started if len(first) >= replicas else None


async def rollouts(fleet: Fleet, session: aiohttp.ClientSession, serve: str,
                   c: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    load = Load(session, serve, args.clients)
    await asyncio.sleep(1.0)
    fleet_s, client_s, results = [], [], []
    for i in range(args.rollouts):
        target = c["b"] if i % 2 == 0 else c["a"]
        started = time.monotonic()
        result = await fleet.apply(target, who="bench")
        fleet_s.append(time.monotonic() - started)
        results.append(result["result"])
        await asyncio.sleep(1.0)  # answers from both replicas on the new commit
        client_s.append(settle_times(load.answers, started, target, args.replicas))
    await load.stop()
    seen = [s for s in client_s if s is not None]
    return {"requests": len(load.answers), "ok": load.ok,
            "failed": sum(load.errors.values()), "failures": dict(load.errors),
            "results": results, "rollouts": args.rollouts, "clients": args.clients,
            "fleet_s": fleet_s, "client_s": client_s,
            "fleet_median_s": statistics.median(fleet_s), "fleet_max_s": max(fleet_s),
            "client_median_s": statistics.median(seen) if seen else None,
            "client_max_s": max(seen) if seen else None,
            "replicas_seen": len({r for *_, r in load.answers if r})}


async def throughput(session: aiohttp.ClientSession, bases: dict[str, str],
                     args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds of the same load on each side; a paired ratio per round."""
    rates: dict[str, list[float]] = {"fleet": [], "single": []}
    failed = 0
    for round_ in range(args.rounds):
        for side in (("fleet", "single") if round_ % 2 == 0 else ("single", "fleet")):
            load = Load(session, bases[side], args.clients)
            started = time.monotonic()
            await asyncio.sleep(args.seconds)
            await load.stop()
            rates[side].append(load.ok / (time.monotonic() - started))
            failed += sum(load.errors.values())
    paired = [f / s for f, s in zip(rates["fleet"], rates["single"], strict=True)]
    return {"rps_fleet": statistics.median(rates["fleet"]),
            "rps_single": statistics.median(rates["single"]),
            "ratio": statistics.median(paired), "ci95": median_ci95(paired),
            "rates": rates, "failed": failed, "rounds": args.rounds, "seconds": args.seconds,
            "clients": args.clients}


async def apply_single(session: aiohttp.ClientSession, base: str, sha: str) -> None:
    async with session.post(f"{base}/control/config/apply", json={"commit": sha}) as r:
        if r.status != 200:
            raise SystemExit(f"the single host refused {sha[:10]}: {await r.text()}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="alltalk-bench-ray-"))
    cfg = new_config_repo(work / "config")
    c = make_commits(cfg, args.rtf)
    # The machine may be shared: its load average before and after is kept with the figures.
    results: dict[str, Any] = {"rtf": args.rtf, "load_seconds": LOAD_SECONDS,
                               "replicas": args.replicas, "loadavg_before": os.getloadavg()}
    print(f"starting a local Ray cluster and one host in {work}...", file=sys.stderr)
    with LocalCluster(work / "cluster", num_cpus=4) as info, \
            Server(cfg, work / "single", env={"ALLTALK_PLUGINS": "reference"}) as single:
        spec = FleetSpec(remote=str(cfg.resolve()), root=(work / "fleet-root").resolve(),
                         replicas=args.replicas, plugins=["reference"],
                         http_port=int(info.serve.rsplit(":", 1)[1]))
        timeout = aiohttp.ClientTimeout(total=args.request_timeout)
        async with Fleet(info.dashboard, info.serve, info.token, spec=spec,
                         state_dir=work / "fleet") as fleet, \
                aiohttp.ClientSession(timeout=timeout) as session:
            if (await fleet.apply(c["a"], who="bench"))["result"] != "applied":
                raise SystemExit("the fleet did not deploy commit A")
            await apply_single(session, single.base, c["a"])
            print("(a, b) rollouts under load...", file=sys.stderr)
            results["rollouts"] = await rollouts(fleet, session, info.serve, c, args)
            bases = {"fleet": info.serve, "single": single.base}
            for name, sha in (("cpu", c["a"]), ("wait", c["wait"])):
                await fleet.apply(sha, who="bench")
                await apply_single(session, single.base, sha)
                print(f"(c) throughput, {name}...", file=sys.stderr)
                results[f"throughput_{name}"] = await throughput(session, bases, args)
    results["loadavg_after"] = os.getloadavg()
    return results


def table(r: dict[str, Any], command: str) -> str:
    a = r["rollouts"]
    rows = [("(a) failed requests during rollouts", f"{a['failed']} / {a['requests']}",
             f"{a['clients']} clients, {a['rollouts']} rollouts of alternating commits "
             f"(each reloads the model, {r['load_seconds']} s load), {r['replicas']} replicas"
             + (f"; failures: {a['failures']}" if a["failures"] else ""), "0")]
    client = (f"{a['client_median_s']:.2f} s / {a['client_max_s']:.2f} s"
              if a["client_median_s"] is not None else "not seen")
    rows.append(("(b) until every replica serves the new commit, median / max",
                 f"{a['fleet_median_s']:.2f} s / {a['fleet_max_s']:.2f} s",
                 f"as the fleet sees it (deploy to every replica reporting it); as the "
                 f"clients see it: {client}", "-"))
    for name, what in (("cpu", "rtf 0: the reference backend's few ms of CPU"),
                       ("wait", f"rtf {r['rtf']}: a simulated accelerator's wait")):
        t = r[f"throughput_{name}"]
        lo, hi = t["ci95"]
        rows.append((f"(c) requests/s, fleet of {r['replicas']} / one host, {what}",
                     f"{t['ratio']:.3f} [{lo:.3f}, {hi:.3f}]",
                     f"{t['rps_fleet']:.0f} / {t['rps_single']:.0f} requests/s (medians), "
                     f"{t['clients']} clients, {t['rounds']} interleaved rounds of "
                     f"{t['seconds']:g} s; failed {t['failed']}", "-"))
    load = ", ".join(f"{x:.1f}" for x in r["loadavg_before"][:1] + r["loadavg_after"][:1])
    lines = [f"Command: `{command}` (load average before, after: {load})", "",
             "| measure | result | detail | target |", "|---|---|---|---|"]
    lines += [f"| {m} | {res} | {d} | {target} |" for m, res, d, target in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5, help="(c): rounds per side")
    parser.add_argument("--seconds", type=float, default=4.0, help="(c): seconds per round")
    parser.add_argument("--rtf", type=float, default=0.1,
                        help="(c): the waiting model's seconds of (sleeping) work per second "
                             "of audio")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ray.json")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    command = " ".join([".venv/bin/python -m tools.bench_ray", *sys.argv[1:]])
    print(table(results, command))
    write_results(args.out, {**results, "command": command})


if __name__ == "__main__":
    main()
