"""XTTS benchmark: load, voice latents (cold and cached), real-time factor, time to first chunk.

Runs on a tiny random-weight checkpoint built on the spot (CPU), and on any real checkpoint
folder given with --checkpoint (e.g. a downloaded XTTS-v2 on a GPU machine, --device cuda).
Streaming's time to first chunk is reported against the whole-utterance time as a ratio.

    .venv/bin/python -m tools.bench_xtts [--checkpoint DIR] [--device auto] [--repeats 3]

Prints a table and writes JSON (default docs/benchmarks/xtts.json).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tools.benchlib import RESULTS_DIR, write_results

TEXT = "The quick brown fox jumps over the lazy dog, and then it rests in the sun."


def bench(checkpoint: Path, device: str, repeats: int, work: Path) -> dict:
    from alltalk_host import ModelContext, SpeechRequest
    from alltalk_host_xtts.backend import XttsBackend
    from tools.reference_audio import write_reference_wav

    voices = work / "voices"
    write_reference_wav(voices / "reference.wav", seconds=6.0)
    settings = XttsBackend.validate_settings(
        {"checkpoint": str(checkpoint), "voices_dir": str(voices), "device": device})
    backend = XttsBackend(settings, ModelContext("bench", work, work / "cache"))
    started = time.perf_counter()
    backend.load()
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    backend._library.latents("reference.wav")
    latents_cold_s = time.perf_counter() - started
    cached = []
    for _ in range(repeats):
        started = time.perf_counter()
        backend._library.latents("reference.wav")
        cached.append(time.perf_counter() - started)

    request = SpeechRequest(TEXT, voice="reference.wav")
    backend.synthesize(request)  # warm
    whole, rtf, first = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        audio = backend.synthesize(request)
        elapsed = time.perf_counter() - started
        whole.append(elapsed)
        rtf.append(elapsed / audio.duration)
        started = time.perf_counter()
        stream = backend.stream(request)
        next(stream)
        first.append(time.perf_counter() - started)
        stream.close()
    status = backend.status()
    backend.unload()
    return {
        "checkpoint": str(checkpoint), "device": status["device"], "load_s": load_s,
        "latents_cold_s": latents_cold_s, "latents_cached_s": statistics.median(cached),
        "rtf": statistics.median(rtf), "whole_s": statistics.median(whole),
        "first_chunk_s": statistics.median(first),
        "first_chunk_vs_whole": statistics.median(first) / statistics.median(whole),
        "audio_s": audio.duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="a real checkpoint folder (repeatable); the tiny one always runs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "xtts.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="alltalk-bench-xtts-"))
    started = time.perf_counter()
    import torch  # noqa: F401 - measured: the import cost a cold process pays once
    from TTS.tts.models.xtts import Xtts  # noqa: F401
    import_s = time.perf_counter() - started
    from tools.build_tiny_xtts import build

    tiny = build(work / "tiny-xtts", seed=0)
    rows = {"tiny (CPU)": bench(tiny, "cpu", args.repeats, work / "run-tiny")}
    for i, checkpoint in enumerate(args.checkpoint):
        rows[checkpoint.name] = bench(checkpoint, args.device, args.repeats, work / f"run-{i}")

    print(f"import torch + Coqui XTTS: {import_s:.1f} s (once per process)\n")
    print("| checkpoint | device | load | latents cold | latents cached | RTF | "
          "first chunk | whole utterance | first chunk / whole |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['device']} | {r['load_s']:.2f} s | "
              f"{r['latents_cold_s'] * 1000:.0f} ms | {r['latents_cached_s'] * 1000:.2f} ms | "
              f"{r['rtf']:.2f} | "
              f"{r['first_chunk_s']:.2f} s | {r['whole_s']:.2f} s | "
              f"{r['first_chunk_vs_whole']:.2f} |")
    write_results(args.out, {"import_s": import_s, "rows": rows})


if __name__ == "__main__":
    main()
