"""One request on one worker process: sent, its answers awaited against a deadline, the
request's cancel forwarded while it waits.

Past the deadline the process is killed (the only way to stop a call stuck in native code) and
the caller gets 503 ``backend_timeout``; the supervisor then restarts the worker. A stream the
consumer leaves is cancelled in the worker and waited for, so the slot the host gives back is
really free.
"""

from __future__ import annotations

import time

from ..backend import SpeechRequest
from ..errors import Code, Unavailable
from . import protocol as p
from .link import DIED, Link, Message, wait_for

POLL_S = 0.05  # how often a waiting call looks at its request's cancel flag


class Call:
    def __init__(self, link: Link, method: str, request: SpeechRequest) -> None:
        self.link = link
        self.request = request
        # The worker answered (a result, a stream's end, or an error the backend raised): the
        # process works, whatever the answer.
        self.answered = False
        self._cancel_sent = False
        self.id, self._inbox = link.open_call()
        link.send(p.CALL, self.id, (method, p.request_fields(request)))

    def next(self, timeout: float) -> Message:
        """The next answer within ``timeout`` s: a result, a chunk or a stream's end; raises
        the backend's error, WorkerDied, or backend_timeout."""
        message = wait_for(self._inbox, time.monotonic() + timeout, POLL_S,
                           self._forward_cancel)
        if message is None:
            self.link.kill(f"a call gave no answer within {timeout:g} s", restart=True)
            raise Unavailable(
                f"{self.link.label}: the backend gave no answer within {timeout:g} s; its "
                "worker was killed", code=Code.BACKEND_TIMEOUT,
                details={"timeout_s": timeout, "pid": self.link.pid})
        kind, payload = message
        if kind == DIED:
            raise payload
        if kind in (p.RESULT, p.END, p.ERROR):
            self.answered = True
        if kind == p.ERROR:
            raise p.decode_error(payload)
        return message

    def stop(self, timeout: float) -> None:
        """Cancel a stream its consumer left and wait for the worker to end it; kill the
        worker if it does not within ``timeout``."""
        self.link.send(p.CANCEL, self.id, None)
        deadline = time.monotonic() + timeout
        while (message := wait_for(self._inbox, deadline)) is not None:
            if message[0] in (p.END, p.ERROR, DIED):
                return
        self.link.kill(f"a cancelled stream did not stop within {timeout:g} s", restart=True)

    def close(self) -> None:
        self.link.close_call(self.id)

    def _forward_cancel(self) -> None:
        if not self._cancel_sent and self.request.cancelled.is_set():
            self._cancel_sent = True
            self.link.send(p.CANCEL, self.id, None)
