"""alltalk-host plugin: Kokoro-82M ONNX models, their many voices and blends of them.

Importing this module imports neither onnxruntime nor a reader: both load with a model, so
discovery stays cheap.
"""

from alltalk_host import hookimpl

from .backend import KokoroBackend, KokoroSettings


@hookimpl
def alltalk_host_register_backends(register):  # type: ignore[no-untyped-def]
    register(KokoroBackend)


__all__ = ["KokoroBackend", "KokoroSettings"]
