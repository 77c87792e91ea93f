"""The command line loads only what a command needs, and declares every command it offers.

Import checks run the real ``cxrlabel`` entry point in a fresh interpreter and read
``sys.modules`` afterwards, so an import added anywhere on the path shows up here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cxrlabel import cli

HEAVY = ("scipy", "pandas", "sqlalchemy", "fastapi", "starlette", "torch", "onnxruntime")
# Web, database and simulator code, pandas (0.15-0.2 s of start-up, issue 20), for `-m ds`
# scipy (0.1 s), and with plain arguments pydantic (Typer's parsing, 0.1-0.15 s): `aggregate`
# must load none of it.
NOT_FOR_AGGREGATE = (
    "pandas",
    "scipy",
    "pydantic",
    "sqlalchemy",
    "fastapi",
    "starlette",
    "torch",
    "cxrlabel.web",
    "cxrlabel.storage",
    "cxrlabel.sim",
    "cxrlabel.context",
    "cxrlabel.quality",
)

PROBE = """
import json, sys
sys.argv = ["cxrlabel", *json.loads(sys.argv[1])]
from cxrlabel.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
sys.stdout.flush()
print("\\nMODULES=" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _run_cli(*args: str) -> tuple[int, set[str], str]:
    """Run the CLI in a fresh interpreter; its exit code, loaded modules and output."""
    src = Path(cli.__file__).resolve().parents[1]
    path = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    output, _, probe = proc.stdout.rpartition("MODULES=")
    assert probe, proc.stderr
    result = json.loads(probe)
    return result["code"], set(result["modules"]), output + proc.stderr


def _loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("args", [["--version"], ["--help"], []])
def test_version_and_help_import_no_stage(args: list[str]) -> None:
    code, modules, output = _run_cli(*args)
    assert code == 0 or (not args and code == 2), output  # no args: help, click's usage code
    assert _loaded(modules, HEAVY) == []
    stages = sorted(m for m in modules if m.startswith("cxrlabel."))
    # cxrlabel.vocab is the import-free ground floor (label names for the package root).
    assert stages == ["cxrlabel.cli", "cxrlabel.config", "cxrlabel.vocab"]


def test_help_lists_every_declared_command() -> None:
    code, _, output = _run_cli("--help")
    assert code == 0
    for stage in cli.STAGES:
        for name in stage.commands:
            assert f" {name} " in output, name


def test_aggregate_loads_no_pandas_web_database_or_simulator(tmp_path: Path) -> None:
    answers = tmp_path / "answers.csv"
    answers.write_text("task,worker,label\nt1,w1,A\nt1,w2,A\nt1,w3,B\nt2,w1,B\nt2,w2,B\n")
    out = tmp_path / "out.csv"
    code, modules, output = _run_cli("aggregate", str(answers), "-m", "ds", "-o", str(out))
    assert code == 0, output
    assert "aggregated 2 tasks" in output
    assert out.read_text().startswith("task,label,confidence")
    assert _loaded(modules, NOT_FOR_AGGREGATE) == []


def test_every_declared_command_is_registered_with_its_summary() -> None:
    """The summaries shown without importing a stage equal the commands' own help."""
    for stage in cli.STAGES:
        commands = cli.stage_commands(stage)
        for name, summary in stage.commands.items():
            assert summary == cli.summary_of(commands[name]), name


def test_a_stage_that_registers_an_undeclared_command_fails_loudly() -> None:
    def register(app: typer.Typer) -> None:
        app.command("declared")(lambda: None)
        app.command("sneaky")(lambda: None)

    module = types.SimpleNamespace(__name__="fake.cli", register=register)
    stage = cli.Stage(lambda: module, {"declared": "Declared."})  # type: ignore[arg-type, return-value]
    with pytest.raises(RuntimeError, match="sneaky"):
        cli.stage_commands(stage)


def test_a_broken_stage_import_is_not_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> types.ModuleType:
        raise ModuleNotFoundError("No module named 'missing_dependency'", name="missing_dependency")

    monkeypatch.setattr(cli, "STAGES", [cli.Stage(broken, {"broken": "Broken."})])
    result = CliRunner().invoke(cli.app, ["broken"])
    assert isinstance(result.exception, ModuleNotFoundError)


def test_an_unknown_command_is_refused() -> None:
    result = CliRunner().invoke(cli.app, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output
    typo = CliRunner().invoke(cli.app, ["stauts"])
    assert typo.exit_code == 2
    assert "Did you mean 'status'?" in typo.output
