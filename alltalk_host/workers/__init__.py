"""Backend workers: each loaded instance of a model in a process of its own, behind a proxy with
the ``Backend`` interface, so the host can put deadlines on it, survive its crashes and get all
its memory back at unload (issue 23).

``protocol`` (deadlines, messages, errors across the socket) <- ``child`` (the worker's side)
and ``processes`` (starting them, the spare, the group, memory) <- ``link`` (one process: its
reader, load and unload) <- ``calls`` (one request on it) and ``supervisor`` (an instance's
processes over time: restarts, unload, kill) <- ``proxy`` (``WorkerBackend``).
"""

from .link import WorkerDied
from .processes import WorkerGroup, memory_of
from .protocol import WorkerLimits
from .proxy import WorkerBackend
from .supervisor import WorkerState

__all__ = ["WorkerBackend", "WorkerDied", "WorkerGroup", "WorkerLimits", "WorkerState",
           "memory_of"]
