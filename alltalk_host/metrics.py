"""Prometheus metrics: how the host is doing, by model, and what its changes cost.

One ``CollectorRegistry`` per host (no module-level singletons). Counters and histograms are
fed as things happen: speech by ``SpeechService`` (``speech_done``), HTTP answers by the web
front-end (``request_done``), changes and drains by the live events (``on_event``). Gauges and
info metrics (requests running and waiting, memory, the applied commit, serving generations,
watch) are read from the host when Prometheus scrapes, so they can never drift.

Label sets stay small: model, route, status class, arm, backend, action, phase, outcome. A
commit appears only on the info metrics, never on a counter (each commit would start new
series). ``arm`` is "canary" for what a running canary served and "stable" for everything else,
so the request series keep one label set whether or not a canary runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .change.control import Controller
from .change.on_demand import resident
from .config.canary import STABLE
from .events import MODEL, OPERATION, Event
from .serving.generation import GenerationState, Serving
from .serving.registry import ModelRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Time to first audio and whole requests: from a fast sentence to a long paragraph on a CPU.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5)
PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TERMINAL = ("done", "failed")


class Observed(Protocol):
    """What the metrics read at scrape time (a ``Host``): the models that serve and the
    coordinator's state."""

    registry: ModelRegistry
    control: Controller


class Metrics:
    def __init__(self, host: Observed) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("alltalk_requests", "HTTP requests answered, by route, model "
                                "(empty when none served it), status class and arm",
                                ["route", "model", "status_class", "arm"], registry=r)
        self.first_audio = Histogram("alltalk_time_to_first_audio_seconds",
                                     "From a speech request's arrival to its first audio",
                                     ["model", "arm"], buckets=LATENCY_BUCKETS, registry=r)
        self.request_time = Histogram("alltalk_speech_duration_seconds",
                                      "From a speech request's arrival to its last audio",
                                      ["model", "arm"], buckets=LATENCY_BUCKETS, registry=r)
        self.rtf = Histogram("alltalk_real_time_factor",
                             "Seconds of work per second of audio, once a request started",
                             ["model", "arm"], buckets=RTF_BUCKETS, registry=r)
        self.audio = Counter("alltalk_audio", "Seconds of audio produced", ["model", "arm"],
                             registry=r, unit="seconds")
        self.operations = Counter("alltalk_operations", "Changes (apply, rollback, reload, "
                                  "switch, ...) by outcome", ["action", "outcome"], registry=r)
        self.operation_time = Histogram("alltalk_operation_duration_seconds",
                                        "Whole changes, by outcome", ["action", "outcome"],
                                        buckets=PHASE_BUCKETS, registry=r)
        self.phase_time = Histogram("alltalk_operation_phase_duration_seconds",
                                    "Each phase of a change (loading, warming up, switching, "
                                    "...)", ["action", "phase"], buckets=PHASE_BUCKETS,
                                    registry=r)
        self.drain_time = Histogram("alltalk_drain_duration_seconds",
                                    "From a generation's replacement to its unload",
                                    ["model"], buckets=PHASE_BUCKETS, registry=r)
        self.load_wait = Histogram("alltalk_on_demand_wait_seconds",
                                   "How long a request waited for its model to load on demand",
                                   ["model"], buckets=PHASE_BUCKETS, registry=r)
        r.register(_HostCollector(host))
        self._phases: dict[str, tuple[str, str, float]] = {}  # op -> (action, phase, since)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # per-request series

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def request_done(self, route: str, model: str, status: int, arm: str = STABLE) -> None:
        self._child(self.requests, route, model, f"{status // 100}xx", arm).inc()

    def speech_done(self, model: str, first_audio_s: float | None, total_s: float,
                    busy_s: float, audio_s: float, arm: str = STABLE) -> None:
        if first_audio_s is not None:
            self._child(self.first_audio, model, arm).observe(first_audio_s)
        self._child(self.request_time, model, arm).observe(total_s)
        if audio_s > 0:
            self._child(self.audio, model, arm).inc(audio_s)
            self._child(self.rtf, model, arm).observe(busy_s / audio_s)

    def waited_for_load(self, model: str, seconds: float) -> None:
        self._child(self.load_wait, model).observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        # labels() validates and locks on every call: most of what a request's metrics cost.
        # The label sets are few (routes, models, status classes, arms), so each child is kept.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_event(self, event: Event) -> None:
        """A live event: time the phases of changes, count their outcomes, time drains."""
        data = event.data
        if (event.kind == MODEL and data.get("state") == GenerationState.UNLOADED
                and data.get("drained_s")):
            self.drain_time.labels(data["name"]).observe(data["drained_s"])
        if event.kind != OPERATION:
            return
        op, action, phase = data["op"], data["action"], data["phase"]
        now = time.monotonic()
        previous = self._phases.pop(op, None)
        if previous is not None:
            self.phase_time.labels(previous[0], previous[1]).observe(now - previous[2])
        if phase in TERMINAL:
            outcome = "applied" if phase == "done" else "failed"
            self.operations.labels(action, outcome).inc()
            self.operation_time.labels(action, outcome).observe(data["elapsed_s"])
        else:
            self._phases[op] = (action, phase, now)


class _HostCollector(Collector):
    """What is true now, read at scrape time."""

    def __init__(self, host: Observed) -> None:
        self.host = host

    def describe(self) -> list[Metric]:
        return []  # read at scrape time only: the names are declared in collect()

    def collect(self) -> Iterator[Metric]:
        host = self.host
        control = host.control
        running = GaugeMetricFamily("alltalk_requests_running",
                                    "Speech requests running now, per model", labels=["model"])
        waiting = GaugeMetricFamily("alltalk_requests_waiting",
                                    "Speech requests waiting for room, per model",
                                    labels=["model"])
        memory = GaugeMetricFamily("alltalk_model_memory_bytes",
                                   "Memory a loaded model holds: measured for its worker "
                                   "processes, as its backend estimates it when inline",
                                   labels=["model", "state"])
        restarts = GaugeMetricFamily("alltalk_worker_restarts",
                                     "Restarts of a generation's worker processes after they "
                                     "died or were killed (a crash, a request past its "
                                     "deadline)", labels=["model", "generation"])
        rss = GaugeMetricFamily("alltalk_worker_rss_bytes",
                                "Resident memory of each worker process, per instance",
                                labels=["model", "generation", "instance"])
        generations = InfoMetricFamily("alltalk_generation",
                                       "Each loaded generation of a model",
                                       labels=["model", "generation", "commit", "backend",
                                               "device", "state"])
        serving = host.registry.serving
        gens = list(serving.generations.values()) if serving else []
        gens += host.registry.canary_only() + host.registry.draining
        counts: dict[str, list[int]] = {}
        for gen in gens:
            name = gen.model.name
            total = counts.setdefault(name, [0, 0])
            total[0] += gen.running
            total[1] += gen.waiting
            memory.add_metric([name, gen.state], float(gen.memory_estimate()))
            workers = gen.workers()
            if workers:
                restarts.add_metric([name, str(gen.number)],
                                    float(sum(w.get("restarts", 0) for w in workers)))
            for worker in workers:
                rss.add_metric([name, str(gen.number), str(worker["instance"])],
                               float(worker.get("rss") or 0))
            status: dict[str, Any] = gen.describe().get("backend_status") or {}
            generations.add_metric(
                [name, str(gen.number), gen.commit, gen.model.backend,
                 str(status.get("device") or status.get("providers") or ""), gen.state], {})
        for name, (run, wait) in counts.items():
            running.add_metric([name], run)
            waiting.add_metric([name], wait)
        yield from (running, waiting, memory, generations, restarts, rss)
        yield from _on_demand(control, serving)

        config = InfoMetricFamily("alltalk_config", "The applied config commit",
                                  labels=["commit", "serving_commit", "default_model"])
        config.add_metric([control.ledger.applied or "", serving.commit if serving else "",
                           serving.config.default_model if serving else ""], {})
        yield config
        ready = GaugeMetricFamily("alltalk_ready", "1 when the default model serves")
        ready.add_metric([], 1.0 if control.ready else 0.0)
        yield ready

        watch = control.watcher.describe()
        enabled = GaugeMetricFamily("alltalk_watch_enabled", "1 when the branch is watched")
        enabled.add_metric([], 1.0 if watch["enabled"] else 0.0)
        paused = GaugeMetricFamily("alltalk_watch_paused",
                                   "1 while automatic apply waits after a rollback")
        paused.add_metric([], 1.0 if watch["paused_at"] else 0.0)
        failing = GaugeMetricFamily("alltalk_watch_failing",
                                    "1 when the last look at the branch failed (see /control/"
                                    "status for why)")
        failing.add_metric([], 1.0 if watch["last_error"] else 0.0)
        checked = GaugeMetricFamily("alltalk_watch_last_check_timestamp_seconds",
                                    "When the watcher last looked at the branch (Unix time)")
        checked.add_metric([], float(watch["last_checked"] or 0.0))
        yield from (enabled, paused, failing, checked)


def _on_demand(control: Controller, serving: Serving | None) -> Iterator[Metric]:
    """Why each model is loaded, and what loading on demand did (change/on_demand.py)."""
    loaded = GaugeMetricFamily("alltalk_resident_models", "Models loaded now, by why: the "
                               "default, keep_loaded, or on demand", labels=["reason"])
    counts = {"default": 0, "keep_loaded": 0, "on_demand": 0}
    if serving is not None:
        for name in serving.generations:
            counts[resident(serving.config, name)] += 1
    for reason, count in counts.items():
        loaded.add_metric([reason], float(count))
    yield loaded
    loads = CounterMetricFamily("alltalk_on_demand_loads", "Models loaded because a request "
                                "named them, by outcome", labels=["outcome"])
    loads.add_metric(["loaded"], float(control.on_demand.loads))
    loads.add_metric(["failed"], float(control.on_demand.failures))
    yield loads
    unloads = CounterMetricFamily("alltalk_on_demand_unloads", "Models loaded on demand that "
                                  "were unloaded, by reason (idle, explicit, budget)",
                                  labels=["reason"])
    for reason, count in control.on_demand.unloads.items():
        unloads.add_metric([reason], float(count))
    yield unloads
