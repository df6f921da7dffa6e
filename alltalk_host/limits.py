"""How much one peer may send and how long it may keep the host waiting, on either front-end.

Per machine, not per commit: they protect this process from the network it is exposed to, a
config commit is untrusted input, and aiohttp takes its own limits once, when it starts. Set
by ``ALLTALK_<NAME>`` variables or ``<name>`` keys in the host-local file (variables win);
docs/operations.md ("Wyoming and HTTP limits") lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from .errors import Code, ConfigInvalid


@dataclass(frozen=True)
class EdgeLimits:
    # One Wyoming event (header line, data and payload together): a TTS request is text,
    # kilobytes; beyond this the event is refused before its data is read.
    wyoming_max_event_bytes: int = 1_048_576
    # How long a Wyoming peer may go quiet in the middle of something: between an event's
    # first byte and its last, and between events while its stream holds a model (its generation).
    wyoming_idle_timeout_s: float = 10.0
    # From a connection's opening (or its previous response) to the end of the next
    # request's headers; also how long an idle keep-alive connection stays open.
    http_header_timeout_s: float = 30.0
    # From the end of a request's headers to the end of its body.
    http_body_timeout_s: float = 60.0

    @classmethod
    def from_settings(cls, env: Mapping[str, str], local: Mapping[str, object],
                      prefix: str = "ALLTALK") -> EdgeLimits:
        """The limits ``env`` (``PREFIX_NAME``) and the host-local file (``name``) set."""
        values: dict[str, float | int] = {}
        for f in fields(cls):
            raw = env.get(f"{prefix}_{f.name.upper()}", local.get(f.name))
            if raw is None:
                continue
            whole = f.type == "int"
            try:
                if isinstance(raw, bool) or not isinstance(raw, str | int | float):
                    raise ValueError
                value = int(raw) if whole else float(raw)
            except ValueError:
                value = 0
            if not value > 0 or value == float("inf"):
                raise ConfigInvalid(
                    f"{f.name} must be a positive {'whole number' if whole else 'number'}, "
                    f"not {raw!r}", code=Code.VALIDATION_FAILED)
            values[f.name] = value
        return cls(**values)  # type: ignore[arg-type]
