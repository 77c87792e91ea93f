"""A job file copied under a new name, self-contained (no web or database code).

A stored job re-reads its instructions file relative to the bundled job of the same name;
a renamed copy has no such file, so the instructions Markdown is inlined into the copy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cxrlabel.jobspec import JobSpecError, parse_job

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,119}$")
_NAME_LINE = re.compile(r'^name\s*=\s*"[^"]*"\s*$', re.M)
_FILE_LINE = re.compile(r'^file\s*=\s*"([^"]+)"\s*$', re.M)


class JobFileError(ValueError):
    pass


def renamed_job_toml(source: Path, name: str) -> str:
    """The TOML of ``source`` with ``name`` as its job name and its instructions inline."""
    if not NAME_RE.match(name):
        raise JobFileError(
            f"{name!r}: a job name is letters, digits, '-' and '_' "
            "(at most 120, starting with a letter or digit)"
        )
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobFileError(f"{source}: cannot read the job file ({exc.strerror})") from None
    if not _NAME_LINE.search(text):
        raise JobFileError(f'{source}: no top-level name = "..." line to rename')
    text = _NAME_LINE.sub(f'name = "{name}"', text, count=1)
    text = _inline_instructions(text, source.parent)
    try:
        spec = parse_job(text, str(source), source.parent)
    except JobSpecError as exc:
        raise JobFileError(str(exc)) from None
    if spec.name != name:
        raise JobFileError(f"{source}: the renamed job is called {spec.name!r}, not {name!r}")
    return text


def _inline_instructions(text: str, base: Path) -> str:
    section = text.find("[instructions]")
    if section < 0:
        return text
    match = _FILE_LINE.search(text, section)
    next_table = re.compile(r"^\[[^\]]+\]\s*$", re.M).search(text, section + 1)
    if match is None or (next_table and match.start() > next_table.start()):
        return text
    try:
        markdown = (base / match.group(1)).read_text(encoding="utf-8")
    except OSError as exc:
        raise JobFileError(
            f"{base / match.group(1)}: cannot read the instructions ({exc.strerror})"
        ) from None
    # A JSON string is a valid TOML basic string (same escapes).
    return text[: match.start()] + f"markdown = {json.dumps(markdown)}" + text[match.end() :]
