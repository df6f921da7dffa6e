"""alltalk-host: a text-to-speech server with plugin backends and git-versioned configuration.

Plugin authors need only what is re-exported here: ``hookimpl``, the backend contract, the
error a backend raises for a request it cannot take (``BadRequest``) and the host's sentence
splitter for streaming (``split_sentences``). plugins/reference/README.md is their guide.
"""

from importlib.metadata import PackageNotFoundError, version

from .backend import (
    Audio,
    Backend,
    Capabilities,
    MemoryNeed,
    ModelContext,
    SpeechRequest,
    parse_settings,
)
from .errors import BadRequest
from .hookspecs import hookimpl
from .text import split_sentences

try:
    __version__ = version("alltalk-host")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Audio",
    "Backend",
    "BadRequest",
    "Capabilities",
    "MemoryNeed",
    "ModelContext",
    "SpeechRequest",
    "__version__",
    "hookimpl",
    "parse_settings",
    "split_sentences",
]
