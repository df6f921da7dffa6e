"""A test-only backend: the reference backend plus an oracle for the host's concurrency promise.

The host promises every backend instance at most ``capabilities.max_concurrency`` requests at
once (alltalk_host/backend.py), including while a swap drains it and after the drain deadline
has answered a request whose backend call is still running. This backend raises when that
promise is broken, so the requests that over-admission lets in fail with a 500 and the tests
that use it see them. The oracle lives here, not in the reference backend that plugin authors
copy. Every test host registers it (conftest.host_options); a model opts in with
``backend = STRICT``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import replace

from alltalk_host import Audio, ModelContext, SpeechRequest, hookimpl, split_sentences
from alltalk_host_reference import ReferenceBackend, ReferenceSettings

STRICT = "strict-reference"


class OverAdmitted(AssertionError):
    """The host let more requests into one instance than it declares it can take."""


class StrictReferenceBackend(ReferenceBackend):
    name = STRICT

    def __init__(self, settings: ReferenceSettings, context: ModelContext) -> None:
        super().__init__(settings, context)
        self.active = 0  # requests inside this instance now
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        with self._lock:
            self.active += 1
            active = self.active
        try:
            if active > self.capabilities.max_concurrency:
                raise OverAdmitted(f"{active} requests at once in an instance that declares "
                                   f"max_concurrency {self.capabilities.max_concurrency}")
            yield
        finally:
            with self._lock:
                self.active -= 1

    def synthesize(self, request: SpeechRequest) -> Audio:
        with self._admitted():
            return super().synthesize(request)

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        # A stream is one request from its first chunk to its last, not one per sentence.
        with self._admitted():
            for sentence in split_sentences(request.text):
                if request.cancelled.is_set():
                    return
                yield ReferenceBackend.synthesize(self, replace(request, text=sentence))


@hookimpl
def alltalk_host_register_backends(register):  # type: ignore[no-untyped-def]
    register(StrictReferenceBackend)
