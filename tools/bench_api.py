"""Client API benchmark: time to first audio byte, streamed against not streamed.

On a live server (loopback) serving the joe voice, for a ~2000-character text:
  streamed      POST /v1/audio/speech (wav): time until the first audio bytes arrive
  not streamed  POST /tts: time until the response, which is the whole utterance
reported as a ratio (medians of --repeats), for wav and mp3.

    .venv/bin/python -m tools.bench_api [--repeats 5]

Prints a table and writes JSON (default docs/benchmarks/api.json).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from tools.benchlib import LONG, RESULTS_DIR, write_results
from tools.server import Server, new_config_repo


async def first_byte(session: aiohttp.ClientSession, base: str, fmt: str) -> tuple[float, float]:
    """(seconds to the first audio bytes, seconds to the last) of a streamed request."""
    started = time.perf_counter()
    async with session.post(f"{base}/v1/audio/speech", json={
            "model": "tts-1", "voice": "alloy", "input": LONG, "response_format": fmt}) as r:
        first = None
        header = 44 if fmt == "wav" else 0
        received = 0
        async for chunk in r.content.iter_any():
            received += len(chunk)
            if first is None and received > header:
                first = time.perf_counter() - started
        return first or 0.0, time.perf_counter() - started


async def whole(session: aiohttp.ClientSession, base: str) -> float:
    started = time.perf_counter()
    async with session.post(f"{base}/tts", json={"text": LONG}) as r:
        await r.read()
        assert r.status == 200
    return time.perf_counter() - started


async def run(repeats: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="alltalk-bench-api-"))
    with Server(new_config_repo(work / "config"), work / "state") as server:  # the template: joe
        base = server.base
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            await whole(session, base)  # warm
            out = {}
            for fmt in ("wav", "mp3"):
                firsts, lasts, wholes = [], [], []
                for _ in range(repeats):
                    f, last = await first_byte(session, base, fmt)
                    firsts.append(f)
                    lasts.append(last)
                    wholes.append(await whole(session, base))
                out[fmt] = {"streamed_first_byte_s": statistics.median(firsts),
                            "streamed_last_byte_s": statistics.median(lasts),
                            "not_streamed_s": statistics.median(wholes)}
                out[fmt]["ratio"] = (out[fmt]["streamed_first_byte_s"]
                                     / out[fmt]["not_streamed_s"])
            return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "api.json")
    args = parser.parse_args()
    rows = asyncio.run(run(args.repeats))
    print(f"text: {len(LONG)} characters, joe voice, CPU\n")
    print("| format | streamed: first audio byte | streamed: last byte | not streamed (/tts) "
          "| first byte / not streamed |")
    print("|---|---|---|---|---|")
    for fmt, r in rows.items():
        print(f"| {fmt} | {r['streamed_first_byte_s']:.3f} s | {r['streamed_last_byte_s']:.2f} s"
              f" | {r['not_streamed_s']:.2f} s | {r['ratio']:.3f} |")
    write_results(args.out, {"rows": rows, "chars": len(LONG)})


if __name__ == "__main__":
    main()
