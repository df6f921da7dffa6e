"""alltalk-host plugin: Piper-format ONNX voices on onnxruntime.

Importing this module imports neither onnxruntime nor espeak-ng: both are loaded when a model
loads, so discovery stays cheap.
"""

from alltalk_host import hookimpl

from .backend import OnnxBackend


@hookimpl
def alltalk_host_register_backends(register):  # type: ignore[no-untyped-def]
    register(OnnxBackend)
