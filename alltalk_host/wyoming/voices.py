"""What ``describe`` says, and what a Wyoming voice name means.

Every serving model is a voice: ``MODEL`` speaks with the model's default voice and
``MODEL/VOICE`` with one of its voices; a model with several voices also lists them as the
speakers of ``MODEL`` (Home Assistant offers them as such). A configured model that loads on
demand is listed as ``MODEL`` alone (its voices are known once it is loaded); a request for
it loads it. Both are read from the serving snapshot at each call, so an apply (a model
switch, a new commit) shows at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from wyoming.info import Attribution, Info, TtsProgram, TtsVoice, TtsVoiceSpeaker
from wyoming.tts import SynthesizeVoice

from .. import __version__
from ..errors import Code, NotFound
from ..host import Host
from ..languages import match_language
from ..plugins import BackendCatalog
from ..serving.registry import Generation, Serving

PROGRAM = "alltalk-host"


def describe(host: Host) -> Info:
    """One TTS program whose voices are the models serving now (none before the first apply)."""
    serving = host.registry.serving
    voices: list[TtsVoice] = []
    if serving is not None:
        for name, gen in sorted(serving.generations.items()):
            voices.extend(_model_voices(serving, name, gen, host.catalog))
        for name in sorted(set(serving.config.models) - set(serving.generations)):
            if serving.config.loads_on_demand(name):
                voices.append(_on_demand_voice(serving, name, host.catalog))
    return Info(tts=[TtsProgram(
        name=PROGRAM,
        description="alltalk-host: models from a git-versioned config, swapped while serving",
        attribution=Attribution(name=PROGRAM, url=""),
        installed=True,
        version=__version__,
        voices=voices,
        supports_synthesize_streaming=True,
    )])


def _model_voices(serving: Serving, name: str, gen: Generation,
                  catalog: BackendCatalog) -> list[TtsVoice]:
    own = serving.voices_of(name)
    common = {
        "attribution": _attribution(catalog, gen.model.backend),
        "installed": True,
        # Which config serves it: a new commit or a reload changes it.
        "version": f"config {serving.commit[:10]}, generation {gen.number}",
        "languages": list(gen.capabilities.languages),
    }
    default = " (default)" if name == serving.config.default_model else ""
    speakers = [TtsVoiceSpeaker(name=v) for v in own] if len(own) > 1 else None
    voices = [TtsVoice(name=name, description=f"{name}{default}", speakers=speakers, **common)]
    voices += [TtsVoice(name=f"{name}/{v}", description=f"{name}: {v}", **common) for v in own]
    return voices


def _on_demand_voice(serving: Serving, name: str, catalog: BackendCatalog) -> TtsVoice:
    backend = serving.config.models[name].backend
    cls = catalog.get(backend)
    return TtsVoice(name=name, description=f"{name} (loads when asked for)",
                    attribution=_attribution(catalog, backend), installed=True,
                    version=f"config {serving.commit[:10]}, not loaded",
                    languages=list(cls.capabilities.languages) if cls else [])


def _attribution(catalog: BackendCatalog, backend: str) -> Attribution:
    """The plugin distribution that runs the model: who to thank, and at which version."""
    for plugin in catalog.plugins:
        if backend in plugin.backends:
            return Attribution(name=f"{plugin.distribution} {plugin.version}", url="")
    return Attribution(name=backend, url="")  # a backend added without a distribution (tests)


@dataclass(frozen=True)
class Choice:
    """What a request's voice means for ``SpeechInput``; None is the default."""

    model: str | None = None
    voice: str | None = None
    language: str | None = None


def choose(host: Host, wanted: SynthesizeVoice | None) -> Choice:
    """``MODEL`` (its speaker, if given, as the voice), ``MODEL/VOICE``, or only a language
    (the default model). Voices and languages are checked later, with the request."""
    if wanted is None:
        return Choice()
    if not wanted.name:
        return Choice(language=_language(host, None, wanted.language))
    model, _, voice = wanted.name.partition("/")
    serving = host.registry.serving
    if (serving is not None and model not in serving.generations
            and not serving.config.loads_on_demand(model)):
        names = [v.name for p in describe(host).tts for v in p.voices]
        message = f"no voice {wanted.name!r} here"
        if model in serving.config.models:
            message += f": model {model} is configured but not loaded, and not loaded on " \
                       "demand (make it the default or set keep_loaded = true)"
        raise NotFound(f"{message}; voices: {', '.join(names[:50]) or 'none'}",
                       code=Code.UNKNOWN_VOICE)
    return Choice(model=model, voice=voice or wanted.speaker or None)


def _language(host: Host, model: str | None, language: str | None) -> str | None:
    """Wyoming names languages as Piper does (``en_US``); a model may say ``en``."""
    if not language:
        return None
    serving = host.registry.serving
    gen = serving.generations.get(model or serving.config.default_model) if serving else None
    if gen is None:
        return language
    # Refused with the request when nothing matches, naming the languages the model speaks.
    return match_language(language, gen.capabilities.languages) or language
