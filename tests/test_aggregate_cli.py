"""The `cxrlabel aggregate` CLI contract and the CSV layer's error policy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from cxrlabel.aggregate import csvfiles
from cxrlabel.aggregate.cli import aggregate_command

app = typer.Typer()
app.command("aggregate")(aggregate_command)
# Typer collapses a one-command app into that command; a second one keeps "aggregate" a
# sub-command, as it is in the main CLI.
app.command("noop")(lambda: None)


def run(*args: str) -> object:
    return CliRunner().invoke(app, ["aggregate", *args])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def answers(tmp_path: Path) -> Path:
    return write(
        tmp_path / "answers.csv",
        "task,worker,label\n"
        "x1,w1,PNEUMONIA\nx1,w2,PNEUMONIA\nx1,w3,NORMAL\n"
        "x2,w1,NORMAL\nx2,w2,NORMAL\nx2,w3,NORMAL\n"
        "x3,w1,NORMAL\nx3,w2,PNEUMONIA\n",
    )


@pytest.mark.parametrize("method", ["mv", "trust", "ds", "glad"])
def test_output_contract(answers: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "out.csv"
    result = run(str(answers), "--method", method, "-o", str(out))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, dtype={"task": str, "label": str})
    assert {"task", "label", "confidence", "p_NORMAL", "p_PNEUMONIA"} <= set(table.columns)
    assert table["task"].tolist() == ["x1", "x2", "x3"]
    assert table.loc[1, "label"] == "NORMAL"
    assert (table[["p_NORMAL", "p_PNEUMONIA"]].sum(axis=1) - 1).abs().max() < 1e-9


def test_mv_tie_policy_in_cli(answers: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert run(str(answers), "-o", str(out)).exit_code == 0
    assert pd.read_csv(out).loc[2, "label"] == "NORMAL"  # x3 is tied: first in sorted order
    assert run(str(answers), "-o", str(out), "--tie-break", "PNEUMONIA").exit_code == 0
    tied = pd.read_csv(out).loc[2]
    assert tied["label"] == "PNEUMONIA" and tied["confidence"] == 0.5


def test_appen_example_through_cli(tmp_path: Path) -> None:
    trusts = [0.9231, 0.8571, 0.9000, 0.8901, 0.9000, 0.9286, 0.9285, 0.9231]
    meals = ["beef"] * 5 + ["chicken"] * 2 + ["veggie"]
    rows = "".join(f"burrito,c{i},{m}\n" for i, m in enumerate(meals))
    answers = write(tmp_path / "a.csv", "task,worker,label\n" + rows)
    trust = write(
        tmp_path / "t.csv", "worker,trust\n" + "".join(f"c{i},{t}\n" for i, t in enumerate(trusts))
    )
    out = tmp_path / "o.csv"
    result = run(str(answers), "--method", "trust", "--trust", str(trust), "-o", str(out))
    assert result.exit_code == 0, result.output
    row = pd.read_csv(out).iloc[0]
    assert row["label"] == "beef" and round(row["confidence"], 4) == 0.6166


def test_gold_is_clamped(answers: Path, tmp_path: Path) -> None:
    gold = write(tmp_path / "gold.csv", "task,label\nx2,PNEUMONIA\nnot_answered,NORMAL\n")
    out = tmp_path / "out.csv"
    assert run(str(answers), "--method", "ds", "--gold", str(gold), "-o", str(out)).exit_code == 0
    table = pd.read_csv(out)
    assert table.loc[1, "label"] == "PNEUMONIA" and table.loc[1, "gold"]
    assert len(table) == 3  # gold for an unanswered task is ignored


def test_labels_are_strings(tmp_path: Path) -> None:
    answers = write(tmp_path / "a.csv", "task,worker,label\n001,7,NA\n001,8,NA\n002,7,01\n")
    out = tmp_path / "o.csv"
    assert run(str(answers), "-o", str(out)).exit_code == 0
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert table["task"].tolist() == ["001", "002"]
    assert table["label"].tolist() == ["NA", "01"]
    assert {"p_NA", "p_01"} <= set(table.columns)


def test_duplicate_answer_warns_and_keeps_last(tmp_path: Path) -> None:
    answers = write(
        tmp_path / "a.csv", "task,worker,label\nx,w1,NORMAL\nx,w2,NORMAL\nx,w1,PNEUMONIA\n"
    )
    out = tmp_path / "o.csv"
    result = run(str(answers), "-o", str(out))
    assert result.exit_code == 0
    assert "warning:" in result.output and "kept the last" in result.output
    row = pd.read_csv(out).iloc[0]
    assert row["n_answers"] == 2 and row["p_PNEUMONIA"] == 0.5  # w1's NORMAL was replaced


def test_warnings_are_shown_even_when_a_later_step_refuses(tmp_path: Path) -> None:
    """The repeated answer's warning used to be lost when the run then failed (warnings were
    printed only after a successful fit); now it comes first, then the error."""
    answers = write(
        tmp_path / "a.csv", "task,worker,label\nx,w1,NORMAL\nx,w2,NORMAL\nx,w1,PNEUMONIA\n"
    )
    out = tmp_path / "o.csv"
    result = run(str(answers), "-o", str(out), "--tie-break", "EFFUSION")
    assert result.exit_code == 2
    warning, error = result.output.find("warning:"), result.output.find("error:")
    assert 0 <= warning < error, result.output
    assert "kept the last" in result.output and "EFFUSION" in result.output
    assert not out.exists()


def test_certainty_column_used(tmp_path: Path) -> None:
    answers = write(
        tmp_path / "a.csv",
        "task,worker,label,certainty\nx,w1,NORMAL,definitely\nx,w2,PNEUMONIA,Can't tell\n"
        "y,w1,NORMAL,probably\ny,w2,NORMAL,\n",
    )
    out = tmp_path / "o.csv"
    result = run(str(answers), "--method", "certainty", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out).loc[0, "label"] == "NORMAL"


def test_bom_blank_lines_quotes_and_spaces(tmp_path: Path) -> None:
    """A spreadsheet export: byte-order mark, blank lines, quoted cells, padded cells."""
    answers = tmp_path / "a.csv"
    answers.write_bytes(
        b"\xef\xbb\xbftask, worker ,label\r\n\r\n"
        b'"x, 1",w1, NORMAL\r\n"x, 1",w2,NORMAL \r\n\r\n"x, 1",w3,PNEUMONIA\r\n'
    )
    out = tmp_path / "o.csv"
    result = run(str(answers), "-o", str(out))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, dtype={"task": str})
    assert table["task"].tolist() == ["x, 1"] and table.loc[0, "n_answers"] == 3
    assert table.loc[0, "label"] == "NORMAL" and {"p_NORMAL", "p_PNEUMONIA"} <= set(table)


def assert_one_line_error(result: object, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("task,worker\nx,w1\n", "missing column(s) label"),
        ("", "is empty"),
        ("task,worker,label\n", "no rows"),
        ("task,worker,label\nx,,NORMAL\n", "line 2: empty 'worker'"),
        ("task,worker,label,certainty\nx,w,NORMAL,maybe\n", "certainty 'maybe'"),
        ("task,worker,label\nx,w1,A\nx,w2,A,B\n", "line 3 has 4 fields"),
        ("task,worker,label\nx,w1,A\n\nx,w2\n", "line 4: empty 'label'"),  # short row
        # as many commas as two good lines, but one long and one short: still refused
        ("task,worker,label\nx,w1,A,B\ny,w2\n", "line 2 has 4 fields"),
    ],
)
def test_bad_answers_file(tmp_path: Path, content: str, fragment: str) -> None:
    answers = write(tmp_path / "a.csv", content)
    assert_one_line_error(run(str(answers), "-o", str(tmp_path / "o.csv")), fragment)


def test_other_errors(answers: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "o.csv")
    assert_one_line_error(run(str(tmp_path / "nope.csv"), "-o", out), "does not exist")
    assert_one_line_error(run(str(answers), "-m", "bogus", "-o", out), "unknown --method")
    assert_one_line_error(run(str(answers), "-m", "certainty", "-o", out), "'certainty' column")
    assert_one_line_error(run(str(answers), "--tie-break", "X", "-o", out), "tie-break label")
    gold = write(tmp_path / "g.csv", "task,label\nx1,NORMAL\nx1,PNEUMONIA\n")
    assert_one_line_error(run(str(answers), "--gold", str(gold), "-o", out), "conflicting gold")
    trust = write(tmp_path / "t.csv", "worker,trust\nw1,high\n")
    assert_one_line_error(
        run(str(answers), "-m", "trust", "--trust", str(trust), "-o", out), "not a number"
    )
    assert_one_line_error(run(str(answers), "-o", str(tmp_path / "no" / "o.csv")), "folder")


@pytest.mark.parametrize(
    "content",
    [
        "task,worker,label\nx,w1,A\ny,w2,B\n",
        "task,worker,label\r\nx,w1,A\r\ny, w2 ,B \r\n",  # Windows line ends, padded cells
        "task,worker,label\nx,w1,A\ny,w2,B",  # no final newline
        "task,worker,label\n",  # header only
        "task,worker,label\nx,w1,A\n\ny,w2,B\n",  # blank line: csv path
        'task,worker,label\n"x,1",w1,A\n',  # quoted comma: csv path
        "task,worker,label,task\nx,w1,A,z\n",  # repeated column name
        "task,worker,label\nx,w1,A\ny,w2\nz,w3,B\n",  # short row: csv path
        "task,worker,label\nx,w1,A\ny,w2,B\n  \n",  # white space after the last line
        "task,worker,label\nx,w1,A\ny,w2,B\n\n",  # two final newlines
        "task,worker,label\nx,wé,Ä\ny,w2,B\n",  # non-ASCII
        "task,worker\nx,w1\n",  # the narrowest fast-path file
    ],
)
def test_fast_reader_matches_the_csv_module(tmp_path: Path, content: str) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(content.encode())
    assert csvfiles._read_cells(path) == csvfiles._read_cells_csv(path)


# --- plain arguments without Typer's parsing (issue 20: start-up time) --------------------


@pytest.mark.parametrize(
    "options",
    [
        ["-m", "ds", "-o", "OUT"],
        ["--method=glad", "--output=OUT"],
        ["-o", "OUT"],  # default method
        ["-o", "OUT", "-m", "mv", "--gold", "GOLD", "--tie-break", "PNEUMONIA"],
        ["-o", "OUT", "-m", "ds", "--trust", "TRUST"],  # trust ignored, with a warning
        ["-m", "bogus", "-o", "OUT"],  # an input error: exit code 2
        ["-o", "NOWHERE"],  # no such folder: exit code 2
    ],
)
def test_plain_arguments_run_as_typer_runs_them(
    answers: Path, tmp_path: Path, options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from cxrlabel.aggregate.cli import run_plain_arguments

    gold = write(tmp_path / "gold.csv", "task,label\nx3,NORMAL\n")
    trust = write(tmp_path / "trust.csv", "worker,trust\nw1,1\n")
    outputs = {}
    for way in ("typer", "plain"):
        paths = {
            "OUT": str(tmp_path / f"{way}.csv"),
            "NOWHERE": str(tmp_path / "no" / "o.csv"),
            "GOLD": str(gold),
            "TRUST": str(trust),
        }
        args = [str(answers), *(_filled(option, paths) for option in options)]
        if way == "typer":
            result = run(*args)
            outputs[way] = (result.exit_code, result.output)  # type: ignore[attr-defined]
        else:
            code = run_plain_arguments(args)
            captured = capsys.readouterr()
            outputs[way] = (code, captured.err + captured.out)
    assert outputs["plain"][0] == outputs["typer"][0]
    assert outputs["plain"][1].replace("plain.csv", "typer.csv").splitlines() == sorted(
        outputs["typer"][1].splitlines(), key=lambda line: not line.startswith(("warning", "error"))
    )
    if outputs["typer"][0] == 0:
        assert (tmp_path / "plain.csv").read_text() == (tmp_path / "typer.csv").read_text()


def _filled(option: str, paths: dict[str, str]) -> str:
    """``option`` with a placeholder (OUT, GOLD, ...) replaced by its path."""
    name, equals, value = option.partition("=")
    return f"{name}={paths.get(value, value)}" if equals else paths.get(option, option)


@pytest.mark.parametrize(
    "args",
    [
        ["a.csv", "--help"],
        ["a.csv"],  # no output
        ["-o", "o.csv"],  # no answers
        ["a.csv", "b.csv", "-o", "o.csv"],
        ["a.csv", "-o", "o.csv", "-o", "p.csv"],  # repeated
        ["a.csv", "-o=o.csv"],  # click reads the value "=o.csv"
        ["a.csv", "-o"],  # no value
        ["a.csv", "-o", "-m", "ds"],
        ["a.csv", "--output="],
        ["a.csv", "-o", "o.csv", "--verbose"],  # unknown
        ["--", "a.csv", "-o", "o.csv"],
        ["a.csv", "-mds", "-o", "o.csv"],
    ],
)
def test_other_arguments_are_left_to_typer(args: list[str]) -> None:
    from cxrlabel.aggregate.cli import run_plain_arguments

    assert run_plain_arguments(args) is None


def test_main_runs_plain_arguments_and_defers_bad_settings_to_typer(
    answers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrlabel import cli

    out = tmp_path / "o.csv"
    monkeypatch.setattr("sys.argv", ["cxrlabel", "aggregate", str(answers), "-o", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0 and out.read_text().startswith("task,label,")
    out.unlink()
    monkeypatch.setenv("CXRLABEL_SESSION_IDLE_MINUTES", "soon")  # the root options refuse it
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2 and not out.exists()
