"""alltalk-host: a text-to-speech server with plugin backends and git-versioned configuration.

Plugin authors need only what is re-exported here: ``hookimpl`` and the backend contract.
"""

from importlib.metadata import PackageNotFoundError, version

from .backend import Audio, Backend, Capabilities, ModelContext, SpeechRequest, parse_settings
from .hookspecs import hookimpl

try:
    __version__ = version("alltalk-host")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Audio",
    "Backend",
    "Capabilities",
    "ModelContext",
    "SpeechRequest",
    "__version__",
    "hookimpl",
    "parse_settings",
]
