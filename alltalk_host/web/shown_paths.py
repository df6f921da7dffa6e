"""Paths in text that anonymous clients read: relative to the host's folders, or a file name.

A model's unavailability reason (``weights file /srv/tts/models/x.onnx not found``) is shown
by public routes (``/tts/models``, ``/health/models/{name}``). Where the server keeps its files
is the operator's business: ``/control/status`` and the log keep the whole path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config.settings import HostConfig
    from ..host import HostOptions

# An absolute path of two or more parts, not inside a URL (``http://h/a/b``) or a relative
# path (``./a/b``, ``~/a/b``): its last part is kept.
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"/,;()]+/)+([^\s'\"/,;()]*)")


def relative_paths(text: str, folders: Mapping[str, Path]) -> str:
    """``text`` with paths under ``folders`` (label -> folder) shown as ``label/rest``, and any
    other absolute path as its last part."""
    for label, folder in sorted(folders.items(), key=lambda kv: -len(str(kv[1]))):
        root = str(folder).rstrip("/")
        if len(root) > 1:
            text = re.sub(re.escape(root) + r"(?=/|\b|$)", label, text)
    return _ABSOLUTE.sub(lambda m: m.group(1) or m.group(0), text)


def host_folders(config: HostConfig, options: HostOptions) -> dict[str, Path]:
    """The folders paths are shown relative to, by the setting or option that names them."""
    return {"models_dir": Path(config.models_dir), "outputs.dir": Path(config.outputs_dir),
            "state_dir": Path(options.state_dir), "config_repo": Path(options.config_repo)}
