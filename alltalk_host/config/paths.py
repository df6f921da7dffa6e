"""The paths a config commit may name, and where they may lead.

A commit is untrusted (``untrusted.py``); the host-local file and ``ALLTALK_`` variables belong
to the machine's owner. So a folder or file path is judged by the layer that set it
(``HostConfig.sources``):
  - from the owner's layers: anything, ``~`` and absolute paths included;
  - from a commit (or a validator's default): relative, without ``..`` or control characters.
    ``models_dir`` and ``outputs.dir`` resolve against the host's working directory and may
    neither be nor hold the host's own folders (its state folder; the folder of the host-local
    file, with the control token; the config repo): the outputs folder is served to anonymous
    clients, and a model's files are read.
    A model's path settings (each backend declares them in ``Backend.path_settings``) resolve
    inside ``models_dir``.
Symbolic links inside those folders are followed: a commit cannot create one there (it only
writes the config repo), so each was placed by the owner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from ..errors import Code, ConfigInvalid
from .values import Layer, clip

OWNER_LAYERS = frozenset({"host-local", "env"})
MAX_PATH = 1024


def commit_path_problem(value: object) -> str | None:
    """Why a path written in a commit is refused (None when it is fine)."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty path"
    if len(value) > MAX_PATH:
        return f"is longer than {MAX_PATH} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "has control characters"
    if value.startswith("-"):  # never a path a tool could read as an option
        return "starts with '-'"
    if value.startswith("~") or PurePosixPath(value).is_absolute() or "\\" in value:
        return ("is absolute; a commit names paths relative to the host's folders (an "
                "absolute one belongs in the host-local file or an ALLTALK_ variable)")
    if ".." in PurePosixPath(value).parts:
        return "climbs out of its folder with '..'"
    return None


def host_folder(key: str, value: str, layer: Layer, host_dirs: Iterable[Path]) -> Path:
    """``models_dir`` or ``outputs.dir``, resolved, or ConfigInvalid when a commit set it to
    something the rules above refuse."""
    owner = layer.kind in OWNER_LAYERS
    problem = None if owner else commit_path_problem(value)
    if problem is None:
        try:
            path = Path(value).expanduser().resolve() if owner else Path(value).resolve()
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL, a symlink loop
            raise _refused(key, value, layer, f"cannot be resolved ({exc})") from None
        if owner:
            return path
        for own in host_dirs:
            own = own.resolve()
            if own.is_relative_to(path):  # it is, or holds, one of the host's folders
                problem = f"would be or hold the host's own folder {own.name!r}"
                break
        else:
            return path
    raise _refused(key, value, layer, problem)


def model_path_problems(name: str, settings: Mapping[str, object], path_settings: Iterable[str],
                        owner_keys: frozenset[str]) -> list[str]:
    """The path settings of model ``name`` that a commit set and the rules refuse."""
    problems = []
    for key in path_settings:
        dotted = f"models.{name}.settings.{key}"
        value = settings.get(key)
        if value is None or dotted in owner_keys:
            continue
        problem = commit_path_problem(value)
        if problem:
            problems.append(f"{dotted}: {clip(value)} {problem}")
    return problems


def _refused(key: str, value: str, layer: Layer, problem: str) -> ConfigInvalid:
    message = f"{key}: {clip(value)} {problem}"
    return ConfigInvalid(f"{message} (set by {layer})", code=Code.VALIDATION_FAILED,
                         details=[message])

