"""The plugin hooks. There is one: a plugin registers backend classes; behaviour lives on them."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from .backend import Backend

PROJECT = "alltalk_host"  # the pluggy project name and the entry-point group

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def alltalk_host_register_backends(register: Callable[[type[Backend]], None]) -> None:
    """Call ``register(BackendClass)`` once for each backend this plugin provides.

    The host, not the plugin, decides what happens to duplicates: two backends with one name stop
    the host at start-up with an error naming both distributions.
    """
