"""What every benchmark script shares: where results go and what they record about the machine."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` as JSON with the machine they were measured on, and say where."""
    results = {**results, "machine": {"cpus": os.cpu_count(),
                                      "python": platform.python_version(),
                                      "platform": platform.platform()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {path}")
