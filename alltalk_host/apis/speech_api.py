"""What the speech routes of every HTTP front-end share, with no web framework: the provenance
headers, a JSON body read into a ``SpeechInput`` (``POST /tts``), OpenAI's speech request
checked and resolved against the serving snapshot, and OpenAI's error shape.

The aiohttp app (``web/``) and the Ray Serve front (``ray/``) are adapters over these: they
read the body, call these, call ``SpeechService`` and send what comes back. A rule about what a
request may say lives here once, so the two fronts cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..blends import is_blend
from ..config.settings import SPEED_RANGE
from ..errors import BadRequest, Code, HostError
from ..numbers import number_in
from ..serving.registry import Serving
from ..serving.speech import Provenance, SpeechInput, SpeechResult, SpeechService, SpeechStream
from .bodies import parse_json
from .encode import Format, get_format

COMMIT_HEADER = "X-AllTalk-Commit"
MODEL_HEADER = "X-AllTalk-Model"
# "canary" when a running canary's commit served the request, else "stable".
ARM_HEADER = "X-AllTalk-Arm"
# Set when an AllTalk route spoke another language than the one asked for.
LANGUAGE_HEADER = "X-AllTalk-Language"
# Set when an AllTalk route spoke with the model's default voice instead of a voice file the
# model does not have (a client's shipped default, such as en_US-ljspeech-high.onnx).
VOICE_HEADER = "X-AllTalk-Voice"


def provenance_headers(p: Provenance) -> dict[str, str]:
    """Sent on every audio response: which config, loaded model and arm produced it."""
    headers = {COMMIT_HEADER: p.commit, MODEL_HEADER: p.model_label, ARM_HEADER: p.arm}
    if p.voice:  # which sample of the voice library spoke
        headers[VOICE_HEADER] = p.voice
    return headers


# What a client is told about a failure nobody expected; the log has the traceback.
INTERNAL_MESSAGE = "internal error; the server log has the details"
# A client given the server's root as its OpenAI base URL calls /audio/speech, /models, ...
V1_HINT = ("the OpenAI-compatible routes are under /v1: use http://HOST:PORT/v1 as the "
           "client's base URL")


def field(data: dict[str, Any], name: str, types: type | tuple[type, ...],
          required: bool = False) -> Any:
    """One typed field of a JSON body, or None when absent and optional."""
    value = data.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required", code=Code.MISSING_FIELD,
                             details={"field": name})
        return None
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in allowed):
        raise BadRequest(f"{name} has the wrong type", code=Code.BAD_FIELD, details={"field": name})
    return value


def tts_input(body: dict[str, Any]) -> SpeechInput:
    """``POST /tts``: ``{text, model?, voice?, language?, speed?, options?}``, or ``phonemes``
    (the model's own symbols) instead of ``text``, for a model that takes them."""
    phonemes = field(body, "phonemes", str)
    if phonemes is not None and "text" in body:
        raise BadRequest("send text or phonemes, not both", code=Code.BAD_FIELD,
                         details={"field": "phonemes"})
    return SpeechInput(
        text=phonemes if phonemes is not None else field(body, "text", str, required=True),
        phonemes=phonemes is not None,
        model=field(body, "model", str),
        voice=field(body, "voice", str),
        language=field(body, "language", str),
        speed=field(body, "speed", (int, float)),
        options=field(body, "options", dict) or {},  # backend parameters, checked by it
    )


# --- OpenAI's speech API ----------------------------------------------------------------------

# OpenAI's voices: where the config's voice map has no entry, they speak with the model's
# default voice, so any OpenAI client works against any model.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                 "shimmer", "verse")
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
MAX_INPUT = 4096  # OpenAI's own limit; the config's max_text_length applies too

# Which request field an error from the speech service is about, for OpenAI's ``param``.
_PARAM_OF = {Code.EMPTY_TEXT: "input", Code.TEXT_TOO_LONG: "input", Code.NOTHING_TO_SAY: "input",
             Code.UNKNOWN_VOICE: "voice", Code.UNSUPPORTED_LANGUAGE: "input",
             Code.BAD_SPEED: "speed"}


@dataclass(frozen=True)
class OpenAISpeech:
    """A checked ``POST /v1/audio/speech``: what to say, with which model, in which format."""

    wanted: SpeechInput
    fmt: Format

    @property
    def model(self) -> str:
        assert self.wanted.model is not None  # always resolved to a configured model
        return self.wanted.model


def invalid(message: str, param: str, code: Code = Code.INVALID_VALUE, status: int = 400
            ) -> HostError:
    return HostError(message, code=code, status=status, details={"param": param})


async def openai_body(raw: Awaitable[bytes]) -> dict[str, Any]:
    """The body (read by the front's own reader), any failure to read it about ``body``."""
    try:
        return parse_json(await raw)
    except HostError as exc:
        raise invalid(exc.message, "body", exc.code, exc.status) from None


def openai_request(body: dict[str, Any], serving_now: Callable[[], Serving]) -> OpenAISpeech:
    """Everything OpenAI's route checks before it asks for speech, in its order: the body's
    fields first, then (``serving_now``, which may say 503 not ready) the model and voice."""
    model_name = _text(body, "model")
    text = _text(body, "input")
    voice_name = _text(body, "voice")
    fmt_name = _text(body, "response_format", required=False) or "mp3"
    speed = body.get("speed")  # none given: the model's default_speed
    assert model_name is not None and text is not None and voice_name is not None
    if len(text) > MAX_INPUT:
        raise invalid(f"input is {len(text)} characters; the maximum is {MAX_INPUT}", "input",
                      Code.TEXT_TOO_LONG)
    try:
        fmt = get_format(fmt_name)
    except HostError as exc:
        raise invalid(exc.message, "response_format", exc.code) from None
    if body.get("stream_format", "audio") != "audio":
        raise invalid("only stream_format 'audio' is supported", "stream_format")
    lo, hi = SPEED_RANGE
    if speed is not None:
        speed = number_in(speed, lo, hi)
        if speed is None:
            raise invalid(f"speed must be a number from {lo} to {hi}", "speed")
    serving = serving_now()
    model = resolve_model(serving, model_name)
    voice = resolve_voice(serving, model, voice_name)
    wanted = SpeechInput(text, model=model, voice=voice, speed=speed)
    return OpenAISpeech(wanted, fmt)


async def openai_spoken(speech: SpeechService, asked: OpenAISpeech
                        ) -> SpeechResult | SpeechStream:
    """The stream to send, or a short silence when the input has nothing to speak (Home
    Assistant's openai_tts checks a key by speaking "."); a refusal names its field. The
    caller sends the stream (its first chunk before the status line) and closes it."""
    try:
        return await speech.stream(asked.wanted)
    except HostError as exc:
        if exc.code == Code.NOTHING_TO_SPEAK:
            return await speech.silence(asked.model)
        raise with_param(exc) from None


def with_param(exc: HostError) -> HostError:
    """A speech service error, told which request field it is about: a new error, with the
    details it had (a limit, the voices there are) kept beside ``param``."""
    return exc.with_details(param=_PARAM_OF.get(exc.code))


def openai_error(exc: HostError) -> dict[str, Any]:
    """OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    param = exc.details.get("param") if isinstance(exc.details, dict) else None
    return {"error": {"message": exc.message, "type": kind, "param": param, "code": exc.code}}


def resolve_model(serving: Serving, name: str) -> str:
    config = serving.config
    if name in config.models:
        return name
    mapped = config.openai.models.get(name)
    if mapped is not None or name in OPENAI_MODELS:
        return mapped or config.default_model
    raise invalid(f"the model {name!r} does not exist", "model", Code.MODEL_NOT_FOUND, 404)


def resolve_voice(serving: Serving, model: str, voice: str) -> str | None:
    gen = serving.generations.get(model)
    voices = serving.voices_of(model)
    if voice in voices or (gen is not None and gen.capabilities.voice_blending
                           and is_blend(voice)):
        return voice  # a blend's parts are checked with the request
    mapped = serving.config.openai.voices.get(model, {}).get(voice)
    if mapped:
        if voices and mapped not in voices:
            raise invalid(f"the voice map sends {voice!r} to {mapped!r}, which model {model} "
                          "does not have", "voice", Code.UNKNOWN_VOICE)
        return mapped
    if voice in OPENAI_VOICES:
        return None  # the model's default voice
    if gen is None:
        return voice  # a model loaded on demand: its voices are checked once it is loaded
    raise invalid(f"unknown voice {voice!r}; this model has {voices[:50]} and takes "
                  f"OpenAI's voice names", "voice", Code.UNKNOWN_VOICE)


def _text(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise invalid(f"'{name}' is required and must be a non-empty string", name,
                      Code.MISSING_FIELD if value is None else Code.INVALID_TYPE)
    return value
