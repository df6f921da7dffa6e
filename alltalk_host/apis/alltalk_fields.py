"""Reading AllTalk's form and query fields, and AllTalk's error shapes, for every front-end.

A bad field is 400 ``{"error": "field: description"}`` naming the field the client sent; any
other failure of a speech route is ``{"status": "generate-failure", "error": ...}``. The mapping
from core errors to these shapes lives here once (``alltalk_error``), so the aiohttp app and
the Ray front cannot answer the same bad request in two ways. No web framework: a form is any
Mapping with ``.get`` (aiohttp's MultiDict, Starlette's FormData, a dict).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..blends import voice_problem
from ..errors import BadRequest, Code, HostError
from ..languages import match_language
from ..serving.registry import Serving
from .speech_api import LANGUAGE_HEADER, VOICE_HEADER

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
# Core error codes that are about one field whatever the route. Voices are checked per field
# before the core sees them (voice_of), so that the error names the field that was sent.
_FIELD_OF = {
    Code.EMPTY_TEXT: "text_input", Code.TEXT_TOO_LONG: "text_input",
    Code.NOTHING_TO_SAY: "text_input", Code.UNSUPPORTED_LANGUAGE: "language",
    Code.BAD_SPEED: "speed", Code.BAD_FILE_NAME: "output_file_name",
    Code.MALFORMED_FORM: "body", Code.BODY_TOO_LARGE: "body", Code.BAD_CONTENT_ENCODING: "body",
}
# What AllTalk's clients send: SillyTavern and text-generation-webui urlencoded, Home Assistant's
# integrations multipart.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
OPTION_FIELDS = ("temperature", "repetition_penalty", "pitch")
PITCH_STEPS = (-10.0, 10.0)  # AllTalk's pitch field; 0 is "unchanged"
_SAFE = re.compile(r"[^A-Za-z0-9_-]")
# A voice named as a file of some engine: AllTalk's XTTS voices (female_01.wav), Piper's
# (en_US-ljspeech-high.onnx), XTTS latents (.pth), RVC models.
_VOICE_FILE = re.compile(r"^(.+)\.(wav|onnx|pth|json|mp3|flac)$", re.IGNORECASE)


class FieldError(BadRequest):
    """A bad form field, answered as AllTalk does."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, code=Code.BAD_FIELD, details={"field": field})
        self.field = field


def not_a_form(content_type: str) -> BadRequest:
    return BadRequest(f"expected a form body ({' or '.join(FORM_TYPES)}), not {content_type}",
                      code=Code.MALFORMED_FORM)


@dataclass(frozen=True)
class Reply:
    """A JSON answer, for whichever front-end to send."""

    body: dict[str, Any]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


def field_error(name: str, message: str) -> Reply:
    return Reply({"error": f"{name}: {message}"}, status=400)


def alltalk_error(exc: HostError) -> Reply:
    """A core error of a speech route in AllTalk's shapes."""
    if isinstance(exc, FieldError):
        return field_error(exc.field, exc.message)
    if exc.code == Code.BAD_OPTION:  # the backend's message starts with the option name
        name, _, rest = exc.message.partition(": ")
        return field_error(name if name in OPTION_FIELDS else "temperature",
                           rest or exc.message)
    name_of_field = _FIELD_OF.get(exc.code)
    if name_of_field is not None:
        return field_error(name_of_field, exc.message)
    return Reply({"status": "generate-failure", "error": exc.message}, status=exc.status)


def boolean(form: Any, name: str, default: bool) -> bool:
    value = str(form.get(name, default)).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise FieldError(name, f"expected true or false, not {value[:40]!r}")


def choice(form: Any, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = str(form.get(name, default)).strip().lower()
    if value not in choices:
        raise FieldError(name, f"must be one of {', '.join(choices)}")
    return value


def number(form: Any, name: str) -> float | None:
    raw = form.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise FieldError(name, f"{str(raw)[:40]!r} is not a number") from None
    if not math.isfinite(value):  # "nan", "inf" and a string of 400 digits
        raise FieldError(name, f"{str(raw)[:40]!r} is not a finite number")
    return value


def contract_option(name: str, value: float) -> float:
    """An AllTalk option field on the contract's scale (``alltalk_host.RESERVED_OPTIONS``).

    AllTalk's pitch runs from -10 to 10 and 0 means unchanged (SillyTavern always sends 0);
    its steps are taken as semitones, so 0 becomes the contract's factor 1.0 and never reaches
    a backend as "the lowest pitch". temperature and repetition_penalty are XTTS's own values
    in AllTalk, which is the contract's scale too.
    """
    if name == "pitch":
        lo, hi = PITCH_STEPS
        if not lo <= value <= hi:
            raise FieldError(name, f"{value:g} is outside AllTalk's pitch range {lo:g} to "
                                   f"{hi:g} (0: unchanged)")
        return float(2.0 ** (value / 12.0))
    return value


def voice_of(form: Any, name: str, serving: Serving) -> tuple[str | None, dict[str, str]]:
    """The voice a field names (None: the model's default), and the response headers that say
    what was spoken instead.

    A voice *file* the model does not have is a client's shipped default for another engine
    (text-generation-webui sends Piper's ``en_US-ljspeech-high.onnx``, AllTalk's XTTS voices
    are ``female_01.wav``): as with a language (``language_of``), the model's own voice
    speaks, the same voice without its suffix when the model has it, and ``X-AllTalk-Voice``
    tells. Any other unknown name is a typo or a voice gone: 400 naming the field.
    """
    value = str(form.get(name) or "").strip()
    if value in ("", "Disabled", "default"):
        return None, {}
    gen = serving.default
    voices = serving.voices_of(serving.config.default_model)
    if voice_problem(value, voices, bool(gen and gen.capabilities.voice_blending)) is None:
        return value, {}
    as_file = _VOICE_FILE.match(value)
    if as_file is None:
        raise FieldError(name, f"model {serving.config.default_model} has no voice "
                               f"{value[:100]!r}; it has {voices[:20]}")
    if as_file.group(1) in voices:
        return as_file.group(1), {}
    assert gen is not None
    used = gen.model.default_voice or voices[0]
    asked = _SAFE.sub("?", value[:60])
    return None, {VOICE_HEADER: f"{used}; model {gen.model.name} has no voice {asked}"}


def language_of(form: Any, name: str, serving: Serving) -> tuple[str | None, dict[str, str]]:
    """The language to speak, and the response headers that say so.

    AllTalk's engines ignore a language they do not speak, and its clients send one anyway
    (SillyTavern's dropdown, a Home Assistant mapping): the model's own language is spoken
    instead, and ``X-AllTalk-Language`` tells. ``auto`` means the model's own language.
    """
    wanted = str(form.get(name, "en")).strip() or "en"
    gen = serving.default
    if wanted == "auto" or gen is None:
        return None, {}
    matched = match_language(wanted, gen.capabilities.languages)
    if matched is not None:
        return matched, {}
    # The applied config's default, as the request will be spoken with (serving/speech.py), not the
    # generation's load-time definition: a runtime-only commit may have changed it since.
    used = (serving.config.models[gen.model.name].default_language
            or serving.config.default_language)
    asked = _SAFE.sub("?", wanted[:20])
    return None, {LANGUAGE_HEADER: f"{used}; model {gen.model.name} does not speak {asked}"}
