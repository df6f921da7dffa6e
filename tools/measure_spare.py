"""What a spare worker costs: the time until it is ready and its resident memory, with no
preload and with a backend's ``worker_preload`` imported (the XTTS backend's by default).

    .venv/bin/python -m tools.measure_spare [--preload torch TTS.tts.models.xtts]

The spare is started as the host starts one, but told to import at once (``preload_after_s``
0) rather than after 10 s idle, so the import is what is timed.
"""

from __future__ import annotations

import argparse
import time

import psutil

from alltalk_host.workers.processes import start_process, wait_ready


def measure(preload: tuple[str, ...]) -> tuple[float, int]:
    started = time.perf_counter()
    process = start_process(preload, 0.0)
    try:
        if not wait_ready(process, 300):
            raise RuntimeError(f"a spare with {preload} did not get ready")
        return time.perf_counter() - started, psutil.Process(process.pid).memory_info().rss
    finally:
        process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preload", nargs="+", default=["torch", "TTS.tts.models.xtts"])
    args = parser.parse_args()
    print("| spare | ready after (s) | RSS (MiB) |")
    print("|---|---|---|")
    for preload in ((), tuple(args.preload)):
        seconds, rss = measure(preload)
        print(f"| {', '.join(preload) or 'nothing preloaded'} | {seconds:.2f} | "
              f"{rss / 2**20:.0f} |")


if __name__ == "__main__":
    main()
