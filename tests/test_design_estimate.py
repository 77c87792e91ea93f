"""Cost and time estimator: arithmetic checked against hand-computed cases."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.design.estimate import EstimateInputs, estimate, inputs_from_spec
from cxrlabel.jobspec import load_job, resolve_job_path


def test_default_page_layout_by_hand() -> None:
    # 1000 images x 3 = 3000 work judgments; 9 work items a page -> ceil(333.3) = 334 pages,
    # each with 1 gold -> 334 gold; quiz 8 items fits one page of 10 -> 20 annotators x 1 page.
    e = estimate(
        EstimateInputs(
            images=1000,
            judgments_per_image=3,
            items_per_page=10,
            gold_per_page=1,
            quiz_length=8,
            pay_per_page=0.10,
            pages_per_hour=40,
            annotators=20,
            hours_per_annotator_per_day=2,
        )
    )
    assert e.work_judgments == 3000
    assert e.work_pages == 334
    assert e.gold_judgments == 334
    assert e.quiz_pages == 20 and e.quiz_judgments == 160
    assert e.total_pages == 354
    assert e.total_judgments == 3000 + 334 + 160
    assert e.cost == pytest.approx(35.40)
    assert e.cost_per_image == pytest.approx(0.0354)
    assert e.annotator_hours == pytest.approx(354 / 40)
    assert e.calendar_days == pytest.approx(354 / 40 / (20 * 2))
    assert e.overhead_fraction == pytest.approx((334 + 160) / 3494)
    assert e.pages_per_annotator == pytest.approx(17.7)


def test_fractional_judgments_quiz_spanning_pages_and_unpaid_quiz() -> None:
    # 250 x 3.4 = 850 judgments; 5 - 2 = 3 work items a page -> ceil(283.3) = 284 pages;
    # gold 568; quiz of 12 in pages of 5 -> 3 pages each x 4 annotators = 12 unpaid pages.
    e = estimate(
        EstimateInputs(
            images=250,
            judgments_per_image=3.4,
            items_per_page=5,
            gold_per_page=2,
            quiz_length=12,
            pay_per_page=0.25,
            pages_per_hour=30,
            annotators=4,
            hours_per_annotator_per_day=3,
            pay_quiz=False,
            expert_review_fraction=0.1,
        )
    )
    assert (e.work_judgments, e.work_pages, e.gold_judgments) == (850, 284, 568)
    assert (e.quiz_pages, e.total_pages) == (12, 296)
    assert e.cost == pytest.approx(284 * 0.25)  # quiz pages not paid
    assert e.calendar_days == pytest.approx(296 / 30 / 12)
    assert e.expert_reviews == 25


def test_no_gold_per_page_and_zero_images() -> None:
    e = estimate(
        EstimateInputs(
            images=0,
            judgments_per_image=3,
            items_per_page=10,
            gold_per_page=0,
            quiz_length=0,
            pay_per_page=1,
            pages_per_hour=10,
            annotators=1,
        )
    )
    assert (e.work_pages, e.total_pages, e.cost, e.cost_per_image) == (0, 0, 0.0, 0.0)
    assert e.overhead_fraction == 0.0


@pytest.mark.parametrize(
    "bad",
    [
        {"judgments_per_image": 0},
        {"gold_per_page": 10},
        {"annotators": 0},
        {"pages_per_hour": 0},
        {"expert_review_fraction": 1.5},
        {"images": -1},
    ],
)
def test_rejects_impossible_inputs(bad: dict) -> None:
    base = dict(
        images=10,
        judgments_per_image=3,
        items_per_page=10,
        gold_per_page=1,
        quiz_length=8,
        pay_per_page=0.1,
        pages_per_hour=40,
    )
    with pytest.raises(ValueError):
        EstimateInputs(**{**base, **bad})


def test_inputs_from_bundled_job_default_to_the_minimum_judgments() -> None:
    spec = load_job(resolve_job_path(None))
    inputs = inputs_from_spec(spec, images=90)
    assert inputs.judgments_per_image == spec.judgments.min
    assert (inputs.items_per_page, inputs.gold_per_page) == (10, 1)
    assert inputs_from_spec(spec, 90, judgments_per_image=4.2).judgments_per_image == 4.2


def test_cli_json(tmp_path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "--data-dir",
            str(tmp_path),
            "estimate",
            "--images",
            "900",
            "--annotators",
            "10",
            "--judgments-per-image",
            "4",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    # 3600 judgments / 9 = 400 work pages + 10 quiz pages at 0.10 USD.
    assert data["work_pages"] == 400 and data["quiz_pages"] == 10
    assert data["cost"] == pytest.approx(41.0)
    assert data["inputs"]["annotators"] == 10


def test_cli_without_images_is_a_clear_error(tmp_path) -> None:
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path), "estimate"])
    assert result.exit_code == 2
    assert "no work images" in result.output
