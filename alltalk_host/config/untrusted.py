"""What a commit's files may say before Dynaconf reads them.

A config commit is untrusted input: anyone who can push to the watched branch, or call the
control routes, can land one. Dynaconf is a settings *framework*, not a data parser, and reads
more into a file than values:
  - keys it obeys: ``dynaconf_include`` / ``includes_for_dynaconf`` load (and, for ``.py``
    files, import and run) more files; ``preload_for_dynaconf``, ``loaders_for_dynaconf``,
    ``dynaconf_merge`` and the other ``*_for_dynaconf`` settings change how it loads;
  - string tokens it evaluates: ``"@format {env[HOME]}"`` reads the host's environment (a
    control token included), ``@jinja``, ``@read_file``, ``@get``, ``@json``, ``@del``, ...
  - a ``dynaconf_hooks.py`` next to a loaded file, which it imports and runs (``build_config``
    therefore hands Dynaconf copies of the TOML files alone, in a folder of their own).
So the raw TOML of every commit file is scanned here first and a commit that says any of it is
refused, naming the file and the key. The host-local file and ``ALLTALK_`` variables belong to
the machine's owner and are not scanned: tokens keep working there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dynaconf.default_settings as _dynaconf_defaults
from dynaconf.utils import RENAMED_VARS

from ..errors import Code, ConfigInvalid
from .values import clip

# Dynaconf's own settings, by the short names a file could use too ("includes", "preload",
# "settings_module", "root_path", ...). Names with "dynaconf" in them are refused anyway.
_SUFFIX = "_FOR_DYNACONF"
CORE_NAMES = frozenset(
    {name.removesuffix(_SUFFIX).lower() for name in vars(_dynaconf_defaults)
     if name.endswith(_SUFFIX)}
    | {name.lower() for name in RENAMED_VARS}
    | {"env", "includes", "preload", "settings_module", "settings_files", "environment"}
)
# Dynaconf splits a top-level key at "__" into nested tables ("outputs__dir") and reads "[n]"
# as a list index, which would hide the key from the per-layer rules (paths.py): a commit
# writes nested tables instead.
_NESTED_SEPARATOR = "__"


def refuse_untrusted(files: list[tuple[str, dict[str, Any]]], global_env: str) -> None:
    """Raise ConfigInvalid when the parsed TOML of a commit's files (name, data) says anything
    Dynaconf would obey rather than store. ``global_env`` is the section Dynaconf reads for
    every environment besides ``[default]`` (its env-var prefix in lower case: ``[alltalk]``)."""
    problems = [f"{file}: {where}: {why}" for file, data in files
                for where, why in _problems(data, global_env)]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigInvalid(f"a commit may not steer the settings loader: {problems[0]}{more}",
                            code=Code.VALIDATION_FAILED, details=problems)


def _problems(data: dict[str, Any], global_env: str) -> Iterator[tuple[str, str]]:
    for section, table in data.items():
        if section.lower() == global_env:
            yield section, (f"a top-level [{section}] section is read for every environment; "
                            f"write [default.{section}] instead")
        if isinstance(table, dict):
            for key in table:  # a section's own keys are Dynaconf's top-level settings
                low = str(key).lower()
                if low in CORE_NAMES:
                    yield f"{section}.{key}", "is a setting of the settings loader itself"
                elif _NESTED_SEPARATOR in low or "[" in low:
                    yield f"{section}.{key}", "write nested tables, not '__' or '[' in a key"
    yield from _walk(data, "")


def _walk(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if "dynaconf" in str(key).lower():
                yield path, "keys naming dynaconf steer the settings loader"
            yield from _walk(item, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]")
    elif isinstance(value, str) and value.startswith("@"):
        # Dynaconf reads "@word rest" as a converter (@format, @jinja, @read_file, @get,
        # @json, @del, ...); refusing every leading "@" also covers converters added later.
        yield where, (f"{clip(value)} starts with '@', which the settings loader evaluates "
                      f"as a token; a commit's strings may not start with '@'")

