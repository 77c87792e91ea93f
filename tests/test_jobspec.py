"""Job files: the default job loads; each kind of mistake gives one clear line, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.jobspec import JobSpecError, load_job, resolve_job_path

DEFAULT = resolve_job_path("pneumonia-pediatric")


def test_default_job_is_complete() -> None:
    spec = load_job(DEFAULT)
    assert spec.label_values == ["NORMAL", "PNEUMONIA"]
    assert "cant_tell" in spec.certainty_values
    assert spec.judgments.min <= spec.judgments.max
    assert spec.gold.per_page < spec.pages.items_per_page
    assert "diaphragm" in spec.instructions_markdown()
    assert abs(sum(spec.quality.expected_prevalence.values()) - 1.0) < 1e-9


def test_repo_jobs_folder_is_the_bundled_one() -> None:
    repo_job = Path(__file__).parents[1] / "jobs" / "pneumonia-pediatric.toml"
    assert repo_job.read_text() == DEFAULT.read_text()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def _mutate(old: str, new: str) -> str:
    text = DEFAULT.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


CASES = [
    # (replace this, with this, expected fragments of the message)
    ("min = 2\nmax = 6", "min = 7\nmax = 6", ["field 'judgments'", "max (6) must be >= min (7)"]),
    (
        "items_per_page = 10",
        "items_per_page = 0",
        ["field 'pages.items_per_page'", "greater than or equal to 1", "bad.toml:"],
    ),
    ("min_accuracy = 0.7", "min_accuracy = 'high'", ["field 'gold.min_accuracy'", "number"]),
    ("quiz_length = 8", "quiz_lenght = 8", ["field 'gold.quiz_lenght'", "unknown field"]),
    ('name = "pneumonia-pediatric"', 'name = "Bad Name!"', ["field 'name'", "pattern"]),
    ("per_page = 1\n", "per_page = 10\n", ["gold.per_page (10) must be smaller"]),
    ('cant_tell = "cant_tell"', 'cant_tell = "unsure"', ["field 'certainty'", "unsure"]),
    ('{ value = "probably"', '{ value = "definitely"', ["certainty options must be unique"]),
    ("NORMAL = 0.26", "HEALTHY = 0.26", ["unknown label 'HEALTHY'"]),
    (
        '[question]\nprompt = "What do the lungs look like?"\n',
        "[question]\n",
        ["field 'question.prompt'", "required field is missing"],
    ),
    ("title =", "title = = ", ["not valid TOML", "line"]),
]


@pytest.mark.parametrize(("old", "new", "fragments"), CASES)
def test_each_mistake_gives_one_clear_line(
    tmp_path: Path, old: str, new: str, fragments: list[str]
) -> None:
    path = _write(tmp_path, _mutate(old, new))
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, message


def test_line_number_points_at_the_field(tmp_path: Path) -> None:
    text = _mutate("items_per_page = 10", "items_per_page = 0")
    line = 1 + text.splitlines().index("items_per_page = 0")
    with pytest.raises(JobSpecError, match=rf"bad.toml:{line}: "):
        load_job(_write(tmp_path, text))


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match="job file not found"):
        load_job(tmp_path / "nope.toml")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(JobSpecError, match="not UTF-8"):
        load_job(binary)


def test_bad_regex_in_patient_pattern(tmp_path: Path) -> None:
    text = DEFAULT.read_text() + '\n[ingest]\npatient_id_pattern = "(?P<pid>unclosed"\n'
    with pytest.raises(JobSpecError, match="not a valid regex"):
        load_job(_write(tmp_path, text))


def test_cli_reports_bad_job_without_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, _mutate("items_per_page = 10", "items_per_page = -1"))
    result = CliRunner().invoke(
        app, ["--data-dir", str(tmp_path / "data"), "ingest", str(tmp_path), "--job", str(path)]
    )
    assert result.exit_code == 2
    output = result.output
    assert "Traceback" not in output
    assert "pages.items_per_page" in output
