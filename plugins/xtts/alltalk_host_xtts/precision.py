"""``dtype = "bf16"``: the GPT part of XTTS under bfloat16 autocast, everything else in float32.

Autocasting the whole generation fails at its end: Coqui converts the GPT latents and the
waveform to numpy, which has no bfloat16. The GPT (the autoregressive part, most of the time of
a generation) is where half precision pays, so its entry points run under autocast and hand
float32 back; the HiFiGAN decoder and the speaker encoder stay in float32.

The wrappers are set on the loaded model's own ``gpt`` object, never on Coqui's classes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

DTYPES = ("fp32", "bf16")
# The GPT methods Coqui's inference() and inference_stream() call.
_CALLS = ("forward", "generate", "compute_embeddings")
_GENERATORS = ("get_generator",)


def autocast_gpt(gpt: Any, device_type: str, torch: Any) -> None:
    """Run ``gpt``'s entry points under bfloat16 autocast on ``device_type`` ("cuda", "cpu")."""

    def in_autocast() -> Any:
        return torch.autocast(device_type, dtype=torch.bfloat16)

    def to_float(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.float() if value.is_floating_point() else value
        if isinstance(value, tuple | list):
            return type(value)(to_float(v) for v in value)
        return value

    def call(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with in_autocast():
                return to_float(fn(*args, **kwargs))
        return wrapper

    def generator(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        # A generator runs in whoever calls next(), so each step enters autocast itself.
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with in_autocast():
                inner = fn(*args, **kwargs)
            try:
                while True:
                    with in_autocast():
                        try:
                            item = next(inner)
                        except StopIteration:
                            return
                    yield to_float(item)
            finally:
                inner.close()
        return wrapper

    for name in _CALLS:
        setattr(gpt, name, call(getattr(gpt, name)))
    for name in _GENERATORS:
        setattr(gpt, name, generator(getattr(gpt, name)))
