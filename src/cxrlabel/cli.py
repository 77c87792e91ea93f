"""The ``cxrlabel`` command line: a thin Typer layer over the pipeline stages.

Every command is declared here, in :data:`STAGES`, with the one-line summary that
``cxrlabel --help`` shows; the stage's CLI module (and whatever it imports) is loaded only when
one of its commands runs or its own ``--help`` is asked for. So ``cxrlabel --version`` and
``cxrlabel --help`` import no stage at all, and ``cxrlabel aggregate`` imports the aggregation
code and nothing of the web app, the database or the simulator.

To add a command: write ``register(app)`` in the stage's ``cli.py`` (``app.command(...)`` or
``app.add_typer(...)``, heavy imports inside the command functions), then add its name and
summary to that stage's entry below (or a new ``Stage`` with a loader that imports the module).
A stage that registers a command not declared here, or misses one, fails loudly.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:  # Typer vendors its own click: these are its classes, not the click package's
    from typer._click import Command, Context, HelpFormatter

from cxrlabel import __version__
from cxrlabel.config import Settings


def _ingest() -> ModuleType:
    from cxrlabel.ingest import cli

    return cli


def _status() -> ModuleType:
    from cxrlabel import status

    return status


def _design() -> ModuleType:
    from cxrlabel.design import cli

    return cli


def _web() -> ModuleType:
    from cxrlabel.web import cli

    return cli


def _quality() -> ModuleType:
    from cxrlabel.quality import cli

    return cli


def _aggregate() -> ModuleType:
    from cxrlabel.aggregate import cli

    return cli


def _sim() -> ModuleType:
    from cxrlabel.sim import cli

    return cli


def _results() -> ModuleType:
    from cxrlabel.results import cli

    return cli


def _model() -> ModuleType:
    from cxrlabel.model import cli

    return cli


def _ops() -> ModuleType:
    from cxrlabel.ops import cli

    return cli


def _demo() -> ModuleType:
    from cxrlabel import demo

    return demo


@dataclass(frozen=True)
class Stage:
    """A CLI module (``load`` imports it; it exposes ``register(app)``) and its commands."""

    load: Callable[[], ModuleType]
    commands: dict[str, str]  # command name -> the summary shown by ``cxrlabel --help``


# In pipeline order, which is the order of ``cxrlabel --help``. A summary must equal the first
# paragraph of the command's own help (tests/test_cli_lean.py checks it).
STAGES: list[Stage] = [
    Stage(
        _ingest,
        {
            "ingest": "Add images to a job: safe decode, DICOM de-identification, renditions, "
            "dedup.",
            "held": "Images held for review (burned-in text in DICOM pixels).",
        },
    ),
    Stage(
        _status,
        {
            "status": "Counts of images, duplicates, failures, judgments and annotators.",
        },
    ),
    Stage(
        _design,
        {
            "preview": "Write the job Preview: one self-contained HTML file (instructions, work "
            "page, example test questions) that opens offline and makes no request.",
            "proposal": "Write the job design Proposal (HTML, Markdown or PDF) from the job file "
            "and live data.",
            "estimate": "Cost and calendar time of labeling N images with this job's settings.",
            "gold": "The test-question (gold) bank: import, export, list, check, sample.",
            "training": (
                "The training pool shown before the quiz (never test questions): sample, list."
            ),
            "job": "Jobs: create a named job for real data.",
        },
    ),
    Stage(
        _web,
        {
            "serve": "Serve the annotator web app (admin pages, annotator pages, REST API at "
            "/api/docs).",
            "user": "Manage accounts.",
            "invite": "Invite links for new annotators.",
        },
    ),
    Stage(
        _quality,
        {
            "quality": "Quality control: replay and check the quality state.",
            "annotators": "List, remove and reinstate annotators.",
            "contests": "Contested test questions: list and resolve.",
        },
    ),
    Stage(
        _aggregate,
        {
            "aggregate": "Aggregate crowd answers into one label per task with class "
            "probabilities.",
        },
    ),
    Stage(
        _sim,
        {
            "simulate": "Simulate a crowd on a job through the real engines; report accuracy, "
            "cost and time.",
            "design-sweep": "Sweep job settings over crowd mixes; show the accuracy-vs-cost "
            "Pareto front.",
        },
    ),
    Stage(
        _results,
        {
            "export": "Export the labelled images as an ML dataset with patient-aware "
            "train/validation/test splits and a datasheet (README.md).",
            "report": "Reports on a job: full (per judgment), aggregated (per image), "
            "contributors, gold, and qa (an HTML page of plots).",
        },
    ),
    Stage(
        _model,
        {
            "train": "Train the triage CNN from an export's soft labels; calibrate; export ONNX; "
            "model card.",
            "predict": "Score X-rays with ONNX Runtime (no PyTorch needed): p_pneumonia and a "
            "triage band.",
            "score": "Write Image.model_score (p_pneumonia) for a job's images, from their "
            "renditions.",
            "site-check": "Do the model's flag/clear bands hold at this site? Checked on its "
            "expert-read images.",
        },
    ),
    Stage(
        _ops,
        {
            "backup": "Back up the database, renditions and keys of this installation into one "
            "archive.",
            "restore": "Restore a backup into the data dir (and --db database); refuses to "
            "overwrite unless --force. Every checksum is verified before anything is replaced.",
        },
    ),
    Stage(
        _demo,
        {
            "demo": "Create a ready-to-use demo job (offline) and start the server.",
        },
    ),
]


def stage_commands(stage: Stage) -> dict[str, Command]:
    """Import the stage and build its click commands; refuse a mismatch with the declaration."""
    module = stage.load()
    holder = typer.Typer()
    module.register(holder)
    commands = dict(typer.main.get_group(holder).commands)
    if set(commands) != set(stage.commands):
        raise RuntimeError(
            f"{module.__name__}.register adds {sorted(commands)} but cxrlabel.cli declares "
            f"{sorted(stage.commands)}; update STAGES in cxrlabel/cli.py"
        )
    return commands


def summary_of(command: Command) -> str:
    """The first paragraph of a command's help, as ``--help`` lists it."""
    text = inspect.cleandoc(command.short_help or command.help or "")
    return text.split("\n\n")[0].replace("\n", " ").strip()


class LazyGroup(TyperGroup):
    """The root group: lists every declared command, imports a stage only when it is used."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [name for stage in STAGES for name in stage.commands]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name not in self.commands:
            stage = next((s for s in STAGES if cmd_name in s.commands), None)
            if stage is None:
                return None
            if ctx.resilient_parsing or getattr(ctx, "_listing_commands", False):
                # The root --help only needs the summary: don't import the stage for it.
                return TyperCommand(cmd_name, help=stage.commands[cmd_name])
            self.commands.update(stage_commands(stage))
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple:
        # Typer suggests close matches from the commands already loaded (none, here): suggest
        # from every declared command instead.
        name = args[0] if args else ""
        if (
            name
            and not name.startswith("-")
            and not ctx.resilient_parsing
            and self.get_command(ctx, name) is None
        ):
            matches = get_close_matches(name, self.list_commands(ctx))
            hint = f" Did you mean {', '.join(map(repr, matches))}?" if matches else ""
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        ctx._listing_commands = True  # type: ignore[attr-defined]
        try:
            super().format_help(ctx, formatter)
        finally:
            ctx._listing_commands = False  # type: ignore[attr-defined]


app = typer.Typer(
    name="cxrlabel",
    cls=LazyGroup,
    help="Crowd labeling of pediatric chest X-rays: ingest -> job -> annotate -> quality -> "
    "aggregate -> export -> model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrlabel {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        envvar="CXRLABEL_DATA_DIR",
        help="Folder for the database, renditions and exports \\[default: ./cxrlabel-data].",
    ),
    db: str = typer.Option(
        None,
        "--db",
        envvar="CXRLABEL_DB",
        help="Database URL, e.g. postgresql+psycopg://user@host/db "
        "\\[default: SQLite in data dir].",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    # Only the settings here: the database layer is imported by the commands that use it
    # (cxrlabel.context.app_context), so `cxrlabel aggregate` never loads SQLAlchemy.
    try:
        ctx.obj = Settings.from_env(data_dir=data_dir, db_url=db)
    except ValueError as exc:  # a bad CXRLABEL_* setting: one line, not a traceback
        from cxrlabel.context import fail

        fail(str(exc))


def main() -> None:
    if sys.argv[1:2] == ["aggregate"]:
        _run_aggregate_without_typer_parsing(sys.argv[2:])
    app()


def _run_aggregate_without_typer_parsing(args: list[str]) -> None:
    """``cxrlabel aggregate`` with plain arguments skips Typer's parsing (0.1-0.15 s of
    pydantic, issue 20; see cxrlabel.aggregate.cli.run_plain_arguments). Returns without
    running anything when Typer must parse: other arguments, or a bad ``CXRLABEL_*`` setting,
    which the root options report."""
    try:
        Settings.from_env()
    except ValueError:
        return
    from cxrlabel.aggregate.cli import run_plain_arguments

    code = run_plain_arguments(args)
    if code is not None:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
