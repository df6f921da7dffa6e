"""The files a voice library change writes: an upload's sample and its voices.toml table, or
their removal. Pure steps on the I/O thread; the coordinator commits and applies them like any
setting change (control.py)."""

from __future__ import annotations

from collections.abc import Mapping

from ..config.repo import ConfigRepo
from ..config.settings import HostConfig
from ..config.voices import NAME_RE, VOICES_DIR, VOICES_FILE, with_voice, without_voice
from ..errors import BadRequest, Code, Conflict, NotFound


def _voices_toml(repo: ConfigRepo, commit: str) -> str | None:
    try:
        return repo.read_file(commit, VOICES_FILE)
    except KeyError:  # no library yet
        return None


def upload_files(repo: ConfigRepo, config: HostConfig, name: str, wav: bytes,
                 fields: Mapping[str, str | None], replace: bool
                 ) -> dict[str, str | bytes | None]:
    """The files that add voice ``name`` (or replace it, with ``replace``) at ``config``'s
    commit: ``voices/NAME.wav`` and its table in voices.toml."""
    if not NAME_RE.match(name):
        raise BadRequest(f"{name[:70]!r} is not a voice name: letters, digits, _ . - (at most "
                         "64, starting with a letter or digit)", code=Code.BAD_FILE_NAME)
    old = config.voices.get(name)
    if old is not None and not replace:
        raise Conflict(f"the library has a voice {name!r} already: replace it with PUT "
                       f"/control/voices/{name}, or choose another name",
                       code=Code.VOICE_EXISTS)
    if old is None and replace:
        raise NotFound(f"the library has no voice {name!r} to replace", code=Code.UNKNOWN_VOICE)
    file = f"{VOICES_DIR}/{name}.wav"
    files: dict[str, str | bytes | None] = {file: wav}
    if old is not None and old.file != file:
        files[old.file] = None  # the sample it had, under another name or format
    kept = {"language": old.language, "transcript": old.transcript, "source": old.source,
            "model": old.model} if old is not None else {}
    table = {"file": file, **kept, **{k: v for k, v in fields.items() if v is not None}}
    files[VOICES_FILE] = with_voice(_voices_toml(repo, config.commit), name, table)
    return files


def edit_files(repo: ConfigRepo, config: HostConfig, name: str, new_name: str | None,
               fields: Mapping[str, str | None]) -> dict[str, str | bytes | None]:
    """The files that rename voice ``name`` to ``new_name`` and/or change its fields (an
    empty string clears one): the sample moves to ``voices/NEW.wav``, unchanged."""
    old = config.voices.get(name)
    if old is None:
        raise NotFound(f"the library has no voice {name[:70]!r}", code=Code.UNKNOWN_VOICE,
                       details={"voices": sorted(config.voices)[:100]})
    target = new_name or name
    if target != name:
        if not NAME_RE.match(target):
            raise BadRequest(f"{target[:70]!r} is not a voice name: letters, digits, _ . - (at "
                             "most 64, starting with a letter or digit)",
                             code=Code.BAD_FILE_NAME)
        if target in config.voices:
            raise Conflict(f"the library has a voice {target!r} already",
                           code=Code.VOICE_EXISTS)
    table = {"file": old.file, "model": old.model, "language": old.language,
             "transcript": old.transcript, "source": old.source or None}
    table.update({k: (v or None) for k, v in fields.items()})
    text = _voices_toml(repo, config.commit)
    assert text is not None  # it lists the voice
    files: dict[str, str | bytes | None] = {}
    if target != name:
        suffix = old.file.rsplit(".", 1)[-1]
        table["file"] = f"{VOICES_DIR}/{target}.{suffix}"
        files[old.file] = None
        files[table["file"]] = old.path.read_bytes()
        text = without_voice(text, name)
    files[VOICES_FILE] = with_voice(text, target, table)
    return files


def removal_files(repo: ConfigRepo, config: HostConfig, name: str
                  ) -> dict[str, str | bytes | None]:
    """The files that remove voice ``name`` from the library at ``config``'s commit."""
    old = config.voices.get(name)
    if old is None:
        raise NotFound(f"the library has no voice {name[:70]!r}", code=Code.UNKNOWN_VOICE,
                       details={"voices": sorted(config.voices)[:100]})
    text = _voices_toml(repo, config.commit)
    assert text is not None  # it lists the voice
    return {old.file: None, VOICES_FILE: without_voice(text, name)}
