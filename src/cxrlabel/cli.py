"""The ``cxrlabel`` command line: a thin Typer layer; each pipeline stage registers its commands."""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

from cxrlabel import __version__
from cxrlabel.config import Settings

app = typer.Typer(
    name="cxrlabel",
    help="Crowd labeling of pediatric chest X-rays: ingest -> job -> annotate -> quality -> "
    "aggregate -> export -> model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module exposes ``register(app)``; the order is the order of the pipeline in --help.
COMMAND_MODULES = [
    "cxrlabel.ingest.cli",
    "cxrlabel.status",
    "cxrlabel.design.cli",
    "cxrlabel.web.cli",
    "cxrlabel.quality.cli",
    "cxrlabel.aggregate.cli",
    "cxrlabel.sim.cli",
    "cxrlabel.results.cli",
    "cxrlabel.model.cli",
    "cxrlabel.ops.cli",
    "cxrlabel.demo",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrlabel {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    data_dir: Path = typer.Option(
        None, "--data-dir", envvar="CXRLABEL_DATA_DIR",
        help="Folder for the database, renditions and exports [default: ./cxrlabel-data].",
    ),
    db: str = typer.Option(
        None, "--db", envvar="CXRLABEL_DB",
        help="Database URL, e.g. postgresql+psycopg://user@host/db [default: SQLite in data dir].",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    from cxrlabel.context import AppContext

    ctx.obj = AppContext(Settings.from_env(data_dir=data_dir, db_url=db))


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Stages are added one by one; a missing stage module is simply not offered yet.
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
