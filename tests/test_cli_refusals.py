"""Wrong usage is refused with one clear message and a non-zero exit, and changes nothing."""

from __future__ import annotations

import re
from pathlib import Path

from typer.core import TyperGroup
from typer.testing import CliRunner

from cxrlabel import cli
from cxrlabel.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def test_predict_on_a_missing_path_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    result = runner.invoke(
        app, ["predict", "--model", str(tmp_path), str(tmp_path / "nope.png"), "-o", str(out)]
    )
    assert result.exit_code == 2
    # Rich folds a long temporary path across the error box's lines, wherever the path's
    # length puts the break (it failed in CI once pytest's temp folder number grew a digit).
    flat = "".join(result.output.replace("│", "").split())
    assert "nope.png" in flat and "doesnotexist" in flat
    assert not out.exists()


def test_serve_refuses_a_port_out_of_range(tmp_path: Path) -> None:
    for port in ("99999", "0"):
        result = runner.invoke(app, ["--data-dir", str(tmp_path), "serve", "--port", port])
        assert result.exit_code == 2, port
        assert "--port" in result.output


def test_a_missing_data_dir_is_refused_not_created(tmp_path: Path) -> None:
    typo = tmp_path / "typo" / "dir"
    for args in (
        ["status"],
        ["status", "--json"],
        ["report", "full", "-o", str(tmp_path / "r.csv")],
        ["serve"],
    ):
        result = runner.invoke(app, ["--data-dir", str(typo), *args])
        assert result.exit_code == 2, (args, result.output)
        assert "does not exist" in result.output and "--data-dir" in result.output
    assert not (tmp_path / "typo").exists()


def test_a_command_that_creates_data_may_start_a_data_dir(tmp_path: Path) -> None:
    new = tmp_path / "new"
    result = runner.invoke(
        app,
        [
            "--data-dir",
            str(new),
            "user",
            "add",
            "admin",
            "--role",
            "admin",
            "--password",
            "a-long-enough-password",
        ],
    )
    assert result.exit_code == 0, result.output
    status = runner.invoke(app, ["--data-dir", str(new), "status", "--json"])
    assert status.exit_code == 0, status.output


def test_a_refused_creating_command_does_not_start_a_data_dir(tmp_path: Path) -> None:
    """A creating command that refuses its input must not leave a new, empty installation
    behind: the typo'd data dir would then "exist" and later commands (serve) would open it."""
    typo = tmp_path / "typo"
    for args, says in (
        (["ingest", str(tmp_path / "nowhere")], "no such file or folder"),
        (["ingest", str(tmp_path), "--since", "2020-01-01"], "dicomweb+http:// source only"),
        (["user", "add", "x", "--password", "purple elephant tuba"], "Usernames are 2-40"),
        (["user", "add", "ann", "--password", "short"], "at least 8 characters"),
        (["user", "add", "ann", "--role", "boss", "--password", "purple tuba x"], "'boss'"),
    ):
        result = runner.invoke(app, ["--data-dir", str(typo), *args])
        assert result.exit_code == 2, (args, result.output)
        assert says in result.output, (args, result.output)
        assert not typo.exists(), args  # before: cxrlabel.sqlite3 was created, then the refusal


def test_demo_of_images_that_cannot_be_used_says_so(tmp_path: Path) -> None:
    """Before: an empty folder ended in a traceback, and unreadable files in a demo "ready"
    with no image and exit 0."""
    empty, unreadable = tmp_path / "empty", tmp_path / "unreadable"
    empty.mkdir()
    unreadable.mkdir()
    (unreadable / "scan.png").write_bytes(b"not a png")
    for folder, code, says in (
        (empty, 2, "folder holds no files"),
        (unreadable, 1, "no image could be read"),
    ):
        data = tmp_path / f"data-{folder.name}"
        result = runner.invoke(
            app, ["--data-dir", str(data), "demo", "--no-serve", "--images", str(folder)]
        )
        assert result.exit_code == code, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert says in result.output and "demo-logins" not in result.output
        assert not (data / "demo-logins.json").exists()


def test_ingest_of_a_non_image_file_fails(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["--data-dir", str(tmp_path / "data"), "ingest", str(REPO / "README.md"), "--workers", "0"],
    )
    assert result.exit_code == 1
    assert "not an image" in result.output
    assert "no image could be read" in result.output


def _all_commands() -> list[tuple[str, object]]:
    """Every command and sub-command, with its full name."""
    found: list[tuple[str, object]] = []
    for stage in cli.STAGES:
        for name, command in cli.stage_commands(stage).items():
            found.append((name, command))
            if isinstance(command, TyperGroup):
                found += [(f"{name} {sub}", c) for sub, c in command.commands.items()]
    return found


def test_help_texts_name_only_commands_that_exist() -> None:
    """A help text that says "run `cxrlabel X Y`" must name a real command."""
    commands = dict(_all_commands())
    mentioned = re.compile(r"`cxrlabel ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?")
    for name, command in commands.items():
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            for first, second in mentioned.findall(text):
                assert first in commands, f"{name}: help names `cxrlabel {first}`"
                if isinstance(commands[first], TyperGroup) and second:
                    assert f"{first} {second}" in commands, (
                        f"{name}: help names `cxrlabel {first} {second}`"
                    )


def test_simulate_refuses_a_bad_gold_top_up(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "NORMAL").mkdir(parents=True)
    base = ["--data-dir", str(tmp_path), "simulate", "--images", str(images)]
    negative = runner.invoke(app, [*base, "--gold-top-up", "-1"])
    assert negative.exit_code == 2 and "--gold-top-up" in negative.output
    into = runner.invoke(app, [*base, "--gold-top-up", "5", "--into-job", "x"])
    assert into.exit_code != 0
    assert "--gold-top-up is for a fresh simulation" in " ".join(into.output.split())
    assert not (tmp_path / "simulation").exists()  # refused before anything was made
