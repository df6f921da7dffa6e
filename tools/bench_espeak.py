"""espeak backend benchmark: real-time factor against the `espeak-ng --stdout` command.

Both run espeak-ng on this CPU; the command (Debian's, `make espeak-ng-cli`) is the baseline a
user would otherwise reach for. Per text: our backend's synthesize() in this process, the same
through the host (`POST /tts` on loopback, a live server), and the command (`espeak-ng --stdout
TEXT`, its process start included, as a user runs it), interleaved, each side first in turn.
RTF = wall time / seconds of audio produced (lower is faster); "paired ratio" is the median of
each repeat's ours/command ratio. Without the command, ours is measured alone and it says so.

    .venv/bin/python -m tools.bench_espeak [--repeats 20] [--no-http]

Prints a table and writes JSON (default docs/benchmarks/espeak.json).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

from tools.benchlib import LONG, ONE, PARAGRAPH, RESULTS_DIR, write_results

TEXTS = {"one sentence": ONE, "~200 chars": PARAGRAPH, "~2000 chars": LONG}


def ours() -> object:
    from alltalk_host import ModelContext
    from alltalk_host_espeak import EspeakBackend

    backend = EspeakBackend(EspeakBackend.validate_settings({}),
                            ModelContext("bench", Path("."), Path(tempfile.gettempdir())))
    backend.load()
    return backend


def time_ours(backend: object, text: str) -> tuple[float, float]:
    from alltalk_host import SpeechRequest

    started = time.perf_counter()
    audio = backend.synthesize(SpeechRequest(text))  # type: ignore[attr-defined]
    return time.perf_counter() - started, audio.duration


def time_first_chunk(backend: object, text: str) -> float:
    from alltalk_host import SpeechRequest

    started = time.perf_counter()
    next(iter(backend.stream(SpeechRequest(text))))  # type: ignore[attr-defined]
    return time.perf_counter() - started


def time_command(text: str) -> tuple[float, float]:
    started = time.perf_counter()
    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True,
                         timeout=120).stdout
    elapsed = time.perf_counter() - started
    # The command writes a streaming header (sizes set to the maximum): count the data itself.
    with wave.open(io.BytesIO(wav)) as w:
        rate, width = w.getframerate(), w.getsampwidth()
    return elapsed, (len(wav) - wav.index(b"data") - 8) / (rate * width)


def time_http(base: str, text: str) -> tuple[float, float]:
    request = urllib.request.Request(f"{base}/tts", data=json.dumps({"text": text}).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as resp:
        body = resp.read()
    elapsed = time.perf_counter() - started
    with wave.open(io.BytesIO(body)) as w:
        return elapsed, w.getnframes() / w.getframerate()


def command_version() -> str | None:
    if shutil.which("espeak-ng") is None:
        return None
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    return out.split(":")[1].split("Data")[0].strip() if ":" in out else out.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-http", action="store_true", help="leave the host out")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "espeak.json")
    args = parser.parse_args()

    version = command_version()
    if version is None:
        print("the espeak-ng command is not installed (make espeak-ng-cli installs Debian's): "
              "measuring the backend alone")
    backend = ours()
    server = _server(Path(tempfile.mkdtemp(prefix="bench-espeak-"))) if not args.no_http \
        else None
    rows = []
    try:
        for label, text in TEXTS.items():
            sides = {"ours": lambda t=text: time_ours(backend, t)}
            if server is not None:
                sides["http"] = lambda t=text: time_http(server.base, t)
            if version is not None:
                sides["command"] = lambda t=text: time_command(t)
            for fn in sides.values():
                fn()  # warm
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
            order = list(sides)
            for i in range(args.repeats):
                for name in order[i % len(order):] + order[:i % len(order)]:
                    runs[name].append(sides[name]())
            row = {"text": label, "chars": len(text)}
            for name, results in runs.items():
                row[f"{name}_rtf"] = statistics.median(w / d for w, d in results)
                row[f"{name}_wall_ms"] = 1000 * statistics.median(w for w, _ in results)
                row[f"{name}_audio_s"] = statistics.median(d for _, d in results)
            if "command" in runs:
                row["paired_ratio"] = statistics.median(
                    (o[0] / o[1]) / (c[0] / c[1])
                    for o, c in zip(runs["ours"], runs["command"], strict=True))
            row["ours_first_chunk_ms"] = 1000 * statistics.median(
                time_first_chunk(backend, text) for _ in range(args.repeats))
            rows.append(row)
            print(json.dumps(row))
    finally:
        backend.unload()  # type: ignore[attr-defined]
        if server is not None:
            server.stop()
    _table(rows, version)
    write_results(args.out, {"repeats": args.repeats, "command_version": version,
                             "library": "espeak-ng 1.52.0 (espeakng-loader 0.2.4)",
                             "rows": rows})


def _server(work: Path):  # type: ignore[no-untyped-def]
    from tools.server import Server, commit, new_config_repo, set_key

    repo = new_config_repo(work / "config")
    set_key(repo / "settings.toml", "default.default_model", "espeak")
    commit(repo, "bench: serve espeak")
    return Server(repo, work / "state")


def _table(rows: list[dict], version: str | None) -> None:
    print(f"\nespeak-ng command: {version or 'not installed'}")
    print("| text | ours RTF | host /tts RTF | command RTF | paired ratio | ours wall | "
          "command wall | ours first chunk |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(key: str, fmt: str = ".4f", r: dict = r) -> str:
            return format(r[key], fmt) if key in r else "-"
        print(f"| {r['text']} ({r['chars']} chars) | {f('ours_rtf')} | {f('http_rtf')} | "
              f"{f('command_rtf')} | {f('paired_ratio', '.3f')} | "
              f"{f('ours_wall_ms', '.1f')} ms | {f('command_wall_ms', '.1f')} ms | "
              f"{f('ours_first_chunk_ms', '.1f')} ms |")


if __name__ == "__main__":
    main()
