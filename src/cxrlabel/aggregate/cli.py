"""``cxrlabel aggregate``: the Typer sub-command (registered by the main CLI).

Register it with ``app.command("aggregate")(aggregate_command)``.

Contract (kept stable for other tools)::

    cxrlabel aggregate ANSWERS.csv --method {mv,trust,ds,glad,certainty}
                       [--gold GOLD.csv] [--trust TRUST.csv] [--tie-break LABEL] -o OUT.csv

OUT.csv has ``task,label,confidence,n_answers,gold`` and one ``p_<label>`` column per class.
Errors print one ``error: ...`` line to stderr and exit with code 2 (no traceback); warnings
(e.g. a repeated answer, of which the last is kept) print ``warning: ...`` lines and carry on.

:func:`run_plain_arguments` runs the command on arguments in their plain forms without
Typer's parsing (the main CLI's ``main`` tries it first), for start-up time (issue 20).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from . import METHODS
from .base import AggregationInputError

EXIT_INPUT_ERROR = 2


def aggregate_command(
    answers: Annotated[
        Path, typer.Argument(help="ANSWERS.csv with columns task,worker,label[,certainty].")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write OUT.csv.")],
    method: Annotated[
        str, typer.Option("--method", "-m", help=f"One of: {', '.join(METHODS)}.")
    ] = "mv",
    gold: Annotated[
        Path | None, typer.Option("--gold", help="GOLD.csv with task,label (clamped).")
    ] = None,
    trust: Annotated[
        Path | None, typer.Option("--trust", help="TRUST.csv with worker,trust (method trust).")
    ] = None,
    tie_break: Annotated[
        str | None,
        typer.Option("--tie-break", help="Label that wins ties (default: first in sorted order)."),
    ] = None,
) -> None:
    """Aggregate crowd answers into one label per task with class probabilities."""
    try:
        n_tasks, n_classes = _run(answers, output, method, gold, trust, tie_break)
    except AggregationInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INPUT_ERROR) from None
    except OSError as exc:
        typer.echo(f"error: {exc.strerror or exc} ({exc.filename or output})", err=True)
        raise typer.Exit(EXIT_INPUT_ERROR) from None
    typer.echo(f"aggregated {n_tasks} tasks ({n_classes} classes) with {method} -> {output}")


def _run(
    answers: Path,
    output: Path,
    method: str,
    gold: Path | None,
    trust: Path | None,
    tie_break: str | None,
) -> tuple[int, int]:
    # The pandas-free CSV layer: start-up time is most of a small run (issue 20).
    from .csvfiles import (
        encode,
        fit_encoded,
        read_answer_table,
        read_gold,
        read_trust,
        trust_for_method,
        write_result,
    )

    if method not in METHODS:
        raise AggregationInputError(
            f"unknown --method {method!r}; choose one of: {', '.join(METHODS)}"
        )
    if not output.parent.exists():
        raise AggregationInputError(f"output folder {str(output.parent)!r} does not exist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            answer_columns = read_answer_table(answers)
            gold_columns = read_gold(gold) if gold is not None else None
            trust_columns = read_trust(trust) if trust is not None else None
            # Repeated (task, worker) answers: the last is kept, dropped on the integer codes.
            encoded = encode(
                answer_columns,
                gold_columns,
                trust_for_method(method, trust_columns),
                drop_repeated=True,
                source=answers.name,
            )
            result = fit_encoded(encoded, method, tie_break=tie_break)
        finally:
            # Warnings first, also when a later file is refused: "warning: answers.csv ..."
            # then "error: trust.csv ...", in the order the files were read.
            for warning in caught:
                typer.echo(f"warning: {warning.message}", err=True)
    write_result(output, result, encoded)
    return len(encoded.tasks), len(encoded.classes)


#: the options of :func:`aggregate_command` by spelling -> parameter
_OPTIONS = {
    "--output": "output",
    "-o": "output",
    "--method": "method",
    "-m": "method",
    "--gold": "gold",
    "--trust": "trust",
    "--tie-break": "tie_break",
}


def run_plain_arguments(args: list[str]) -> int | None:
    """Run ``cxrlabel aggregate ARGS`` without Typer's argument parsing; the exit code, or None
    (nothing run) when ARGS are not all plain, for Typer to parse them as usual.

    Why: Typer 0.29 coerces every parameter through a pydantic validator, and importing
    pydantic and building those costs 0.1-0.15 s, a third of a run on a small file. Plain
    means: one ANSWERS path, each option once as ``-o VALUE``, ``--output VALUE`` or
    ``--output=VALUE``, no value empty or starting with "-". Anything else (``--help``, an
    unknown, repeated or incomplete option, ``--``) goes to Typer with its messages. Once
    parsed, the same :func:`aggregate_command` runs, so the behaviour is the same."""
    values: dict[str, str] = {}
    positional: list[str] = []
    remaining = iter(args)
    for arg in remaining:
        if not arg.startswith("-"):
            positional.append(arg)
            continue
        name, equals, value = arg.partition("=")
        if name not in _OPTIONS or _OPTIONS[name] in values or (equals and len(name) == 2):
            return None  # click reads "-o=x" as the value "=x": leave such forms to Typer
        value = value if equals else next(remaining, "")
        if not value or value.startswith("-"):
            return None
        values[_OPTIONS[name]] = value
    if len(positional) != 1 or "output" not in values:
        return None
    try:
        aggregate_command(
            answers=Path(positional[0]),
            output=Path(values["output"]),
            method=values.get("method", "mv"),
            gold=Path(values["gold"]) if "gold" in values else None,
            trust=Path(values["trust"]) if "trust" in values else None,
            tie_break=values.get("tie_break"),
        )
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return 130  # as Typer's main does
    except BrokenPipeError:  # stdout closed early (`| head`): quietly, as Typer's main does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def register(app: typer.Typer) -> None:
    """Add ``cxrlabel aggregate`` to the main command line."""
    app.command("aggregate")(aggregate_command)
