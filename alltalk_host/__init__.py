"""alltalk-host: a text-to-speech server with plugin backends and git-versioned configuration.

Plugin authors need only what is re-exported here: ``hookimpl``, the backend contract (with the
reserved option names and their scales), the error a backend raises for a request it cannot
take (``BadRequest``) and the codes it gives it (``Code``: errors are part of the contract),
the host's sentence splitter for streaming (``split_sentences``, with ``first_clause`` to speak
a long first sentence's first clause first), its checks of audio (``chunk_problem``: the
sample format of every chunk; ``audio_problem``: the warm-up's) and of a number in a range
(``number_in``), and a voice blend's parts (``parse_blend``, ``is_blend``) for backends that
mix voices; their tests use ``alltalk_host.testing``.
docs/plugins.md is their guide.
"""

from importlib.metadata import PackageNotFoundError, version

from .audio import audio_problem, chunk_problem
from .backend import (
    RESERVED_OPTIONS,
    Audio,
    Backend,
    Capabilities,
    MemoryNeed,
    ModelContext,
    OptionScale,
    SpeechRequest,
    VoiceSample,
    parse_settings,
)
from .blends import is_blend, parse_blend
from .errors import BadRequest, Code
from .hookspecs import hookimpl
from .numbers import number_in
from .text import first_clause, split_sentences

try:
    __version__ = version("alltalk-host")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "RESERVED_OPTIONS",
    "Audio",
    "Backend",
    "BadRequest",
    "Capabilities",
    "Code",
    "MemoryNeed",
    "ModelContext",
    "OptionScale",
    "SpeechRequest",
    "VoiceSample",
    "__version__",
    "audio_problem",
    "chunk_problem",
    "first_clause",
    "hookimpl",
    "is_blend",
    "number_in",
    "parse_blend",
    "parse_settings",
    "split_sentences",
]
