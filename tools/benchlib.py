"""What every benchmark script shares: where results go, what they record about the machine,
and the texts they speak.

Run the tools as modules from the repository root (`.venv/bin/python -m tools.bench_swap`), so
that `tools` imports as a package with no `sys.path` edits.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
ONE = "The quick brown fox jumps over the lazy dog."
PARAGRAPH = ("A text-to-speech server turns written words into sound. It has to be quick, "
             "so people do not wait, and careful, so that no request is lost while it changes "
             "models.")
LONG = " ".join([PARAGRAPH] * 12)  # ~2000 characters


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` as JSON with the machine they were measured on, and say where."""
    results = {**results, "machine": {"cpus": os.cpu_count(),
                                      "python": platform.python_version(),
                                      "platform": platform.platform()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {path}")
