"""The docs cover the interface (in the style of Datasette's test_docs.py): every CLI command and
every job-file field is mentioned, so adding one without documenting it fails here.

Commands are walked from the Typer app (stages register themselves on import); a command counts
as documented when ``cxrlabel <group> <command>`` appears in README.md or docs/*.md, where the
docs' shorthand ``cxrlabel annotators list|remove|reinstate`` (or ``import/export``) names each
alternative. Job-file fields are walked from the pydantic models of ``cxrlabel.jobspec``: each
field must appear as `` `field` `` in its section of docs/job-spec.md (``## `[section]` ``, or
"Top level" for the top-level keys), fields of nested records (labels, examples, marks) included.
"""

from __future__ import annotations

import itertools
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel

from cxrlabel.cli import STAGES, app, stage_commands
from cxrlabel.jobspec import JobSpec

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
JOB_SPEC_DOC = ROOT / "docs" / "job-spec.md"


def _root_command() -> Any:
    """The root command with every stage loaded (the lean CLI imports a stage only when one of
    its commands runs, so an unloaded root lists no subcommands to walk)."""
    root = typer.main.get_command(app)
    for stage in STAGES:
        root.commands.update(stage_commands(stage))  # type: ignore[attr-defined]
    return root


def _command_paths() -> list[str]:
    paths: list[str] = []

    def walk(command: Any, prefix: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            paths.append(" ".join(prefix))
            return
        for name, sub in sorted(subcommands.items()):
            if not getattr(sub, "hidden", False):
                walk(sub, [*prefix, name])

    walk(_root_command(), ["cxrlabel"])
    return paths


def _documented_commands() -> set[str]:
    """Every ``cxrlabel ...`` word sequence in the docs, alternatives expanded."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in DOC_FILES)
    word = r"[a-z][a-z0-9-]*(?:(?:\\?\||/)[a-z][a-z0-9-]*)*"
    found: set[str] = set()
    for match in re.finditer(rf"cxrlabel((?: {word})+)", text):
        choices = [re.split(r"\\?\||/", w) for w in match.group(1).split()]
        for words in itertools.product(*choices):
            for n in range(len(words) + 1):
                found.add(" ".join(["cxrlabel", *words[:n]]))
    return found


@pytest.mark.parametrize("command", _command_paths())
def test_every_cli_command_is_documented(command: str) -> None:
    assert len(_command_paths()) > 40, "the walk no longer reaches the stages' commands"
    assert command in _documented_commands(), (
        f"`{command}` is not mentioned in README.md or docs/*.md"
    )


def _record_type(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (directly, optional, or as list items), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _record_type(arg)
            if found is not None:
                return found
    return None


def _fields(model: type[BaseModel]) -> list[str]:
    """The field names of a model and of the records nested in it (documented fields only)."""
    names: list[str] = []
    for name, info in model.model_fields.items():
        if info.exclude:  # set by the loader, not written in job files (base_dir)
            continue
        names.append(name)
        nested = _record_type(info.annotation)
        if nested is not None:
            names += _fields(nested)
    return names


def _sections() -> dict[str, str]:
    """Section name -> its text in docs/job-spec.md ("" is the top level)."""
    text = JOB_SPEC_DOC.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    sections: dict[str, str] = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        table = re.match(r"`\[([a-z_]+)\]`", heading)
        sections[
            "" if heading.startswith("Top level") else table.group(1) if table else heading
        ] = body
    return sections


def _job_file_fields() -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, info in JobSpec.model_fields.items():
        if info.exclude:
            continue
        section = _record_type(info.annotation)
        if section is None:
            pairs.append(("", name))
        else:
            pairs += [(name, field) for field in dict.fromkeys(_fields(section))]
    return pairs


@pytest.mark.parametrize(("section", "field"), _job_file_fields())
def test_every_job_file_field_is_documented(section: str, field: str) -> None:
    sections = _sections()
    where = f"[{section}]" if section else "the top level"
    assert section in sections, f"docs/job-spec.md has no section for {where}"
    assert f"`{field}`" in sections[section], (
        f"job-file field `{field}` of {where} is not documented in docs/job-spec.md"
    )


def _commands_with_default_notes() -> list[tuple[str, str]]:
    """(command path, note) for every option whose help says what its default is."""
    found: list[tuple[str, str]] = []

    def walk(command: Any, prefix: list[str]) -> None:
        for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
            walk(sub, [*prefix, name])
        for param in getattr(command, "params", []):
            note = re.search(r"default: ([^\]]+)\]", getattr(param, "help", None) or "")
            if note:
                found.append((" ".join(prefix), note.group(1)))

    walk(_root_command(), [])
    return found


@pytest.mark.parametrize(("command", "note"), _commands_with_default_notes())
def test_default_notes_survive_help_rendering(command: str, note: str) -> None:
    """Rich reads ``[default: ...]`` as a markup tag and drops it from ``--help`` unless the
    bracket is escaped; the user then sees "Job name ." instead of the default."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.replace("│", " ").split())
    assert " ".join(note.split()) in shown, f"`cxrlabel {command} --help` lost: {note}"
