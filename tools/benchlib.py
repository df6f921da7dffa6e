"""What every benchmark script shares: where results go, what they record about the machine,
and the texts they speak.

Run the tools as modules from the repository root (`.venv/bin/python -m tools.bench_swap`), so
that `tools` imports as a package with no `sys.path` edits.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import statistics
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
ONE = "The quick brown fox jumps over the lazy dog."
PARAGRAPH = ("A text-to-speech server turns written words into sound. It has to be quick, "
             "so people do not wait, and careful, so that no request is lost while it changes "
             "models.")
LONG = " ".join([PARAGRAPH] * 12)  # ~2000 characters
# A reply whose first sentence is long, as a language model's often is: ~2000 characters.
LONG_FIRST = ("When you ask a server like this one for a long answer, it should start to speak "
              "after the first few words rather than wait for the whole first sentence. "
              + " ".join([PARAGRAPH] * 11))


def median_ci95(values: list[float], resamples: int = 5000) -> tuple[float, float]:
    """A percentile-bootstrap 95 % interval for the median of ``values``."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values)))
                     for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` as JSON with the machine they were measured on, and say where."""
    results = {**results, "machine": {"cpus": os.cpu_count(),
                                      "python": platform.python_version(),
                                      "platform": platform.platform()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {path}")


class ClientLoad:
    """``clients`` clients, each sending one request after another (``one()``) until
    ``stop()``; subclasses say what a request is and what they keep of its answer."""

    def __init__(self, clients: int) -> None:
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self) -> None:
        while not self._stop.is_set():
            await self.one()

    async def one(self) -> None:
        raise NotImplementedError
