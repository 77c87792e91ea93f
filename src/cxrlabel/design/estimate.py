"""Cost and time of a labeling job: pure arithmetic, no database, no I/O.

The model is the one a crowd platform bills by:
- annotators are paid per submitted page; a page holds ``items_per_page`` images of which
  ``gold_per_page`` are test questions (paid, but they produce no work judgment);
- every annotator first takes a quiz of ``quiz_length`` test questions, shown in pages of the
  same size. Quiz pages are paid by default: honest people who fail still spent the time;
- one annotator does ``pages_per_hour`` pages an hour and works ``hours_per_annotator_per_day``
  hours a day, so calendar time = annotator-hours / (pool size * daily hours).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cxrlabel.jobspec import JobSpec

# Assumptions used when the caller has no better figure. Each is stated in the proposal.
DEFAULT_ANNOTATORS = 20  # a small, invited pool for a first job
DEFAULT_HOURS_PER_ANNOTATOR_PER_DAY = 2.0  # crowd workers do short sessions


@dataclass(frozen=True)
class EstimateInputs:
    images: int
    judgments_per_image: float  # expected trusted judgments per work image
    items_per_page: int
    gold_per_page: int
    quiz_length: int
    pay_per_page: float
    pages_per_hour: float
    annotators: int = DEFAULT_ANNOTATORS
    hours_per_annotator_per_day: float = DEFAULT_HOURS_PER_ANNOTATOR_PER_DAY
    pay_quiz: bool = True
    currency: str = "USD"
    expert_review_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.images < 0:
            raise ValueError("images must be >= 0")
        if self.judgments_per_image <= 0:
            raise ValueError("judgments per image must be > 0")
        if self.items_per_page < 1 or not 0 <= self.gold_per_page < self.items_per_page:
            raise ValueError("need items_per_page >= 1 and 0 <= gold_per_page < items_per_page")
        if self.annotators < 1:
            raise ValueError("annotators must be >= 1")
        if self.pages_per_hour <= 0 or self.hours_per_annotator_per_day <= 0:
            raise ValueError("pages per hour and hours per day must be > 0")
        if not 0.0 <= self.expert_review_fraction <= 1.0:
            raise ValueError("expert review fraction must be within 0..1")


@dataclass(frozen=True)
class Estimate:
    inputs: EstimateInputs
    work_judgments: int
    work_pages: int
    gold_judgments: int  # test questions mixed into work pages
    quiz_pages: int
    quiz_judgments: int
    total_pages: int
    total_judgments: int
    overhead_fraction: float  # share of all judgments spent on gold and quiz
    cost: float
    cost_per_image: float
    annotator_hours: float
    pages_per_annotator: float
    calendar_days: float
    expert_reviews: int

    def as_dict(self) -> dict:
        data = asdict(self)
        data["inputs"] = asdict(self.inputs)
        return data


def estimate(inputs: EstimateInputs) -> Estimate:
    work_judgments = math.ceil(inputs.images * inputs.judgments_per_image)
    work_per_page = inputs.items_per_page - inputs.gold_per_page
    work_pages = math.ceil(work_judgments / work_per_page)
    gold_judgments = work_pages * inputs.gold_per_page
    quiz_pages = inputs.annotators * math.ceil(inputs.quiz_length / inputs.items_per_page)
    quiz_judgments = inputs.annotators * inputs.quiz_length
    total_pages = work_pages + quiz_pages
    total_judgments = work_judgments + gold_judgments + quiz_judgments
    paid_pages = work_pages + (quiz_pages if inputs.pay_quiz else 0)
    cost = round(paid_pages * inputs.pay_per_page, 2)
    hours = total_pages / inputs.pages_per_hour
    return Estimate(
        inputs=inputs,
        work_judgments=work_judgments,
        work_pages=work_pages,
        gold_judgments=gold_judgments,
        quiz_pages=quiz_pages,
        quiz_judgments=quiz_judgments,
        total_pages=total_pages,
        total_judgments=total_judgments,
        overhead_fraction=(gold_judgments + quiz_judgments) / total_judgments
        if total_judgments
        else 0.0,
        cost=cost,
        cost_per_image=cost / inputs.images if inputs.images else 0.0,
        annotator_hours=hours,
        pages_per_annotator=total_pages / inputs.annotators,
        calendar_days=hours / (inputs.annotators * inputs.hours_per_annotator_per_day),
        expert_reviews=round(inputs.images * inputs.expert_review_fraction),
    )


def inputs_from_spec(
    spec: JobSpec,
    images: int,
    judgments_per_image: float | None = None,
    annotators: int = DEFAULT_ANNOTATORS,
    hours_per_annotator_per_day: float = DEFAULT_HOURS_PER_ANNOTATOR_PER_DAY,
    expert_review_fraction: float = 0.0,
) -> EstimateInputs:
    """Inputs from the job file. Without a simulation, judgments per image defaults to the
    dynamic-judgment minimum: the cheapest case, reached when every image is easy."""
    return EstimateInputs(
        images=images,
        judgments_per_image=judgments_per_image or float(spec.judgments.min),
        items_per_page=spec.pages.items_per_page,
        gold_per_page=spec.gold.per_page,
        quiz_length=spec.gold.quiz_length,
        pay_per_page=spec.pay.per_page,
        pages_per_hour=spec.pay.pages_per_hour,
        annotators=annotators,
        hours_per_annotator_per_day=hours_per_annotator_per_day,
        currency=spec.pay.currency,
        expert_review_fraction=expert_review_fraction,
    )


def judgments_range(spec: JobSpec) -> tuple[float, float]:
    """Cheapest and dearest judgments per image the dynamic-judgment settings allow."""
    return float(spec.judgments.min), float(spec.judgments.max)
