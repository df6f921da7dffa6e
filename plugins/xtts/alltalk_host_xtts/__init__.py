"""alltalk-host plugin: Coqui XTTS on PyTorch.

Importing this module imports neither torch nor TTS (Coqui): both load with a model.
"""

from alltalk_host import hookimpl

from .backend import XttsBackend


@hookimpl
def alltalk_host_register_backends(register):  # type: ignore[no-untyped-def]
    register(XttsBackend)
