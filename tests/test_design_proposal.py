"""The job design Proposal: every section, live numbers, simulation figures, formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.design.proposal import section_titles
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import GoldItem, ImageStatus, Job
from design_support import add_image, bundled_job, external_refs

SECTIONS = [
    "Goal and users",
    "Labels and why",
    "Certainty capture and its use downstream",
    "Instructions in summary",
    "Test questions",
    "Quiz and minimum accuracy",
    "Judgments per image and dynamic judgments",
    "Aggregation method",
    "Expert-review routing",
    "Annotator removal and re-collection",
    "Expected label accuracy and cost (simulation)",
    "Cost and time estimate",
    "Risks and limitations",
    "How the job improves over time",
]
SIMULATION = {
    "label_accuracy": 0.934,
    "judgments_per_image": 3.6,
    "expert_review_fraction": 0.08,
    "annotators_removed": 7,
    "bad_annotators_removed": 6,
    "cost": 1234.5,
    "hours": 321.0,
}


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> tuple[Path, str]:
    """A job with 40 work images (26 % NORMAL reference labels) and 12 gold."""
    root = tmp_path_factory.mktemp("proposal")
    url = f"sqlite:///{root / 'db.sqlite3'}"
    db = Database(url)
    with db.session() as s:
        job, _ = bundled_job(s)
        for k in range(40):
            add_image(s, job, root, k, reference_label="NORMAL" if k % 4 == 0 else "PNEUMONIA")
        for k in range(12):
            im = add_image(s, job, root, 100 + k, status=ImageStatus.GOLD)
            s.add(
                GoldItem(
                    job_id=job.id,
                    image_id=im.id,
                    reason="Expert reason.",
                    accepted_answers=["NORMAL" if k < 5 else "PNEUMONIA"],
                    difficulty="hard" if k == 0 else "medium",
                )
            )
    db.dispose()
    return root, url


def _run(job_dir, *args: str):
    root, url = job_dir
    return CliRunner().invoke(app, ["--data-dir", str(root), "--db", url, "proposal", *args])


def test_html_has_every_section_a_toc_and_inline_plots(job_dir, tmp_path: Path) -> None:
    out = tmp_path / "proposal.html"
    result = _run(job_dir, "-o", str(out))
    assert result.exit_code == 0, result.output
    html = out.read_text()
    for n, title in enumerate(SECTIONS, 1):
        slug = title.lower().replace(" ", "-").replace("(", "").replace(")", "")
        assert f'<a href="#{slug}">{title}</a>' in html, title  # table of contents
        assert f"<h2>{n}. {title}</h2>" in html, title
    assert html.count("<svg") == 3  # cost vs judgments, days vs pool, gold balance
    assert external_refs(html).external == []
    # Live numbers: 40 work images, 12 gold (5 NORMAL), the page bound (12 - 8) / 1.
    assert "52 images in the job (12 gold, 40 needs judgments)" in html
    assert "NORMAL 10 (25%), PNEUMONIA 30 (75%)" in html
    assert "For <strong>40 images</strong>" in html
    assert "12 active test questions" in html
    assert '<td>answer NORMAL</td>\n<td style="text-align:right">5 (42%)</td>' in html
    assert "<strong>4 work pages per annotator</strong>" in html
    assert "needs 6 of 8 right to pass" in html
    # No simulation: said plainly, estimate from the dynamic-judgment minimum.
    assert "Not computed." in html
    assert "2.00 judgments per image" in html  # judgments.min of the bundled job
    assert "(no simulation" in " ".join(result.output.split())


def test_simulation_figures_are_used(job_dir, tmp_path: Path) -> None:
    sim = tmp_path / "sim.json"
    sim.write_text(json.dumps(SIMULATION))
    out = tmp_path / "proposal.md"
    result = _run(job_dir, "-o", str(out), "--format", "md", "--simulation", str(sim))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert section_titles(text)[1:] == SECTIONS  # "Contents" first, then every section
    assert "Not computed" not in text
    assert "| label accuracy (vs reference) | 93.4% |" in text
    assert "| share of images sent to an expert | 8.0% |" in text
    assert "| bad annotators removed | 6 |" in text
    assert "3.60 judgments per image** (from the simulation)" in text
    # 40 x 3.6 = 144 judgments / 9 = 16 work pages + 20 quiz pages = 3.60 USD.
    assert "**3.60 USD**" in text
    assert "| images for expert review | 3 |" in text
    figures = sorted(p.name for p in (tmp_path / "proposal-figures").iterdir())
    assert figures == ["cost_vs_judgments.png", "days_vs_pool.png", "gold_balance.png"]
    assert "](proposal-figures/cost_vs_judgments.png)" in text


def test_simulation_found_in_the_data_dir(job_dir, tmp_path: Path) -> None:
    root, _ = job_dir
    default = root / "simulation" / "pneumonia-pediatric.json"
    default.parent.mkdir(exist_ok=True)
    default.write_text(json.dumps({**SIMULATION, "label_accuracy": 0.911}))
    try:
        result = _run(job_dir, "-o", str(tmp_path / "p.md"), "-f", "md")
        assert result.exit_code == 0, result.output
        assert "91.1%" in (tmp_path / "p.md").read_text()
    finally:
        default.unlink()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"label_accuracy": "high"}', "'label_accuracy' must be a number"),
    ],
)
def test_bad_simulation_file_is_a_clear_error(job_dir, tmp_path, content, message) -> None:
    sim = tmp_path / "sim.json"
    sim.write_text(content)
    result = _run(job_dir, "-o", str(tmp_path / "p.html"), "--simulation", str(sim))
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "p.html").exists()


def test_unknown_format_and_job(job_dir, tmp_path: Path) -> None:
    assert _run(job_dir, "-o", str(tmp_path / "p"), "-f", "docx").exit_code == 2
    result = _run(job_dir, "-o", str(tmp_path / "p"), "--job", "no-such-job")
    assert result.exit_code == 2 and "no job named" in result.output


def test_the_output_suffix_sets_the_format_and_a_contradiction_is_refused(
    job_dir, tmp_path: Path
) -> None:
    """Before: the default was HTML whatever the name, so `-o proposal.md` held HTML and
    `-o proposal.pdf` a file no PDF reader opens."""
    md = tmp_path / "proposal.md"
    assert _run(job_dir, "-o", str(md)).exit_code == 0
    assert md.read_text().startswith("# Job design proposal")
    clash = tmp_path / "proposal.pdf"
    result = _run(job_dir, "-o", str(clash), "-f", "html")
    assert result.exit_code == 2 and "names a pdf file but --format is html" in result.output
    assert not clash.exists()
    other = tmp_path / "proposal.txt"  # a suffix that names no format: HTML, as before
    assert _run(job_dir, "-o", str(other)).exit_code == 0
    assert other.read_text().startswith("<!doctype html>")


@pytest.mark.browser
def test_pdf_and_screenshot(browser, job_dir, tmp_path: Path, artifacts_dir: Path) -> None:
    out = tmp_path / "proposal.pdf"
    result = _run(job_dir, "-o", str(out))  # the suffix says PDF (no --format)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:5] == b"%PDF-" and out.stat().st_size > 20_000
    html = tmp_path / "proposal.html"
    assert _run(job_dir, "-o", str(html)).exit_code == 0
    context = browser.new_context(offline=True, viewport={"width": 1100, "height": 1400})
    page = context.new_page()
    page.goto(html.as_uri())
    assert page.locator("nav.toc li").count() == len(SECTIONS)
    page.screenshot(path=str(artifacts_dir / "design-proposal.png"))  # title and contents
    page.locator("#cost-and-time-estimate").screenshot(
        path=str(artifacts_dir / "design-proposal-estimate.png")
    )
    context.close()


def test_job_row_is_not_modified(job_dir) -> None:
    root, url = job_dir
    db = Database(url)
    with db.session() as s:
        assert s.scalar(select(Job.name)) == "pneumonia-pediatric"
    db.dispose()
