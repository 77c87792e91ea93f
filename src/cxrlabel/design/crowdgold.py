"""Gold proposed from the crowd's own agreement, for a job without model scores
(``cxrlabel gold sample --from-crowd N``, and ``--from-reference N --clearest F`` when no image
has a model score): the clearest finalised work images (``design/crowdclarity.py``), balanced
per crowd label, one per patient, no near-duplicates.

A proposal is not gold. It is written to a CSV with empty ``answer`` and ``reason`` columns;
it counts only once an expert has filled both in and ``cxrlabel quality confirm-gold`` has
recorded the expert's label with promotion to gold (``quality.crowdconfirm.confirm_answers``,
also behind the expert's web page ``/gold-proposals/JOB``, which lists ``draw_proposals``).
That goes through the quality engine's own expert-label event, so ``quality replay`` sees the
image become gold at the moment it did (a finalised image turned gold behind the log's back
would replay as gold from the start and change every decision its answers took part in).

The annotators who judged the image are never served it as gold: the assignment engine
excludes every image ever put on one of their pages (``annotate/assignment.py``), work or
gold. Their earlier answers stay work answers, weighed as before; they are not re-graded
against the expert's answer (they were given without feedback, on an image they could not
know would become a test, and the image was picked *because* they agreed).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.design.crowdclarity import (
    Clarity,
    ClarityRule,
    CrowdAnswer,
    CrowdImage,
    crowd_clarity,
)
from cxrlabel.design.goldbank import GoldImportError, find_images, instruction_example_ids
from cxrlabel.design.goldseed import check_draw, clearest, draw_balanced
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    AuditEvent,
    ExpertReview,
    Image,
    ImageStatus,
    Job,
    Judgment,
    utcnow,
)

GOLD_PROPOSED = "gold.proposed"  # audit-log action; not a quality input
SENT_TO_REVIEW = f"quality.image_{ImageStatus.NEEDS_REVIEW}"  # the engine's decision
MIN_ANSWERS = 3
COLUMNS = (
    "image",
    "public_id",
    "source_file",
    "crowd_label",
    "crowd_confidence",
    "answers",
    "clarity",
    "answer",
    "reason",
)


@dataclass(frozen=True)
class Proposal:
    image: Image
    label: str
    confidence: float
    answers: int
    clarity: float


@dataclass(frozen=True)
class Confirmation:
    """An expert's answer and reason for a proposed image (``answer`` may differ from the
    crowd's label: then the image is corrected, not made gold)."""

    image: Image
    answer: str
    reason: str


def clarity_rule(spec: JobSpec) -> ClarityRule:
    return ClarityRule(
        cant_tell=spec.certainty.cant_tell,
        certainty_weights=spec.certainty_weights,
        min_answers=max(MIN_ANSWERS, spec.judgments.min),
    )


def job_clarity(session: Session, job: Job, spec: JobSpec) -> tuple[Clarity, dict[int, Image]]:
    """Crowd clarity of the job's finalised work images (instruction examples left out: their
    answer is shown to everyone), and those images by id."""
    examples = instruction_example_ids(session, job, spec)
    images = {
        im.id: im
        for im in session.scalars(
            select(Image)
            .where(Image.job_id == job.id, Image.status == ImageStatus.FINALISED)
            .order_by(Image.id)
        )
        if im.id not in examples
    }
    answers: dict[int, list[CrowdAnswer]] = {i: [] for i in images}
    for image_id, answer, certainty, flag in session.execute(
        select(Judgment.image_id, Judgment.answer, Judgment.certainty, Judgment.quality_flag)
        .join(Image, Image.id == Judgment.image_id)
        .where(
            Judgment.job_id == job.id,
            Image.status == ImageStatus.FINALISED,
            Judgment.is_gold.is_(False),
            Judgment.tainted.is_(False),
        )
    ):
        if image_id in answers:
            answers[image_id].append(CrowdAnswer(answer, certainty, flag))
    reviewed = _ever_reviewed(session, job)
    records = [
        CrowdImage(
            im.id,
            im.status,
            im.label,
            im.confidence,
            tuple(answers[im.id]),
            reviewed=im.id in reviewed,
        )
        for im in images.values()
    ]
    return crowd_clarity(records, clarity_rule(spec)), images


def _ever_reviewed(session: Session, job: Job) -> set[int]:
    """Images the engine sent to expert review at any time, or an expert labelled."""
    sent = {
        int((subject or "").removeprefix("image:"))
        for subject in session.scalars(
            select(AuditEvent.subject).where(
                AuditEvent.job_id == job.id, AuditEvent.action == SENT_TO_REVIEW
            )
        )
    }
    labelled = session.scalars(
        select(ExpertReview.image_id)
        .join(Image, Image.id == ExpertReview.image_id)
        .where(Image.job_id == job.id)
    )
    return sent | set(labelled)


def draw_proposals(
    session: Session,
    job: Job,
    spec: JobSpec,
    n: int,
    seed: int = 0,
    *,
    clearest_fraction: float = 1.0,
) -> list[Proposal]:
    """Up to ``n`` proposals, balanced per crowd label, drawn (by ``seed``) from the clearest
    ``clearest_fraction`` of each label's candidates; reads only (the web page's list). A
    ``ValueError`` says why there is nothing to propose."""
    check_draw(n, clearest_fraction)
    clarity, images = job_clarity(session, job, spec)
    if not images:
        raise ValueError(
            f"job {job.name} has no finalised work image, so there is no crowd agreement to "
            "judge clarity by (and no model score: `cxrlabel score`); let the crowd finish "
            "some images first, or import gold written by an expert (`cxrlabel gold import`)"
        )
    if not clarity.scores:
        raise ValueError(
            f"none of the {len(images)} finalised images of job {job.name} is clear enough "
            f"to propose as gold (left out: {clarity.explain()})"
        )
    per_label = {
        label: clearest(
            [images[i] for i in clarity.scores if images[i].label == label],
            clarity.scores,
            clearest_fraction,
        )
        for label in spec.label_values
    }
    chosen = draw_balanced(per_label, n, seed)
    proposals = [_proposal(im, clarity.scores[im.id]) for im in chosen]
    proposals.sort(key=lambda p: (p.label, p.clarity, p.image.id))
    return proposals


def propose_from_crowd(
    session: Session,
    job: Job,
    spec: JobSpec,
    n: int,
    seed: int = 0,
    *,
    clearest_fraction: float = 1.0,
    now: datetime | None = None,
) -> list[Proposal]:
    """``draw_proposals``, logged: success writes one ``gold.proposed`` audit event (the CSV
    handed to an expert); a ``ValueError`` leaves the database untouched."""
    proposals = draw_proposals(session, job, spec, n, seed, clearest_fraction=clearest_fraction)
    session.add(
        AuditEvent(
            at=now or utcnow(),
            job_id=job.id,
            action=GOLD_PROPOSED,
            subject=str(n),
            payload={
                "source": "crowd",
                "seed": seed,
                "clearest_fraction": clearest_fraction,
                "images": [p.image.public_id for p in proposals],
                "clarity": [round(p.clarity, 6) for p in proposals],
            },
        )
    )
    session.flush()
    return proposals


def crowd_votes(
    session: Session, job: Job, image_ids: list[int]
) -> dict[int, dict[str, dict[str, int]]]:
    """The trusted work answers on each image as counts, label -> certainty -> n (what the
    expert reads beside a proposal; never who answered)."""
    votes: dict[int, dict[str, dict[str, int]]] = {i: {} for i in image_ids}
    for image_id, answer, certainty in session.execute(
        select(Judgment.image_id, Judgment.answer, Judgment.certainty).where(
            Judgment.job_id == job.id,
            Judgment.image_id.in_(image_ids),
            Judgment.is_gold.is_(False),
            Judgment.tainted.is_(False),
        )
    ):
        per = votes[image_id].setdefault(answer, {})
        per[certainty] = per.get(certainty, 0) + 1
    return votes


def propose_to_file(
    session: Session,
    job: Job,
    spec: JobSpec,
    n: int,
    seed: int,
    clearest_fraction: float,
    path: Path,
) -> list[str]:
    """``propose_from_crowd`` written to ``path`` as CSV (an existing file is never
    overwritten: it may hold an expert's answers); the lines that tell the user what next."""
    if path.exists():
        raise ValueError(
            f"{path} exists (it may hold an expert's answers): choose another --output"
        )
    proposals = propose_from_crowd(session, job, spec, n, seed, clearest_fraction=clearest_fraction)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(proposals_csv(proposals), encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot write {path}: {exc.strerror}") from None
    per_label = ", ".join(
        f"{label} {sum(p.label == label for p in proposals)}" for label in spec.label_values
    )
    lines = [
        f"{len(proposals)} images proposed as gold from the crowd's agreement ({per_label}), "
        f"written to {path}. None is gold yet: an expert fills in answer and reason, then "
        f"cxrlabel quality confirm-gold {path} --job {spec.name} --as EXPERT."
    ]
    if len(proposals) < n:
        lines.append(
            f"[yellow]warning[/] only {len(proposals)} of {n} found (clear enough, one per "
            "patient, no near-duplicates)"
        )
    return lines


def _proposal(image: Image, clarity: float) -> Proposal:
    assert image.label is not None and image.confidence is not None  # a scored candidate
    return Proposal(image, image.label, image.confidence, image.trusted_judgments, clarity)


def proposals_csv(proposals: list[Proposal]) -> str:
    """The proposals for the expert: ``answer`` and ``reason`` left empty on purpose (the
    expert answers from the image, the crowd's label is shown beside it)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in proposals:
        im = p.image
        writer.writerow(
            [
                im.sha256,
                im.public_id,
                Path(im.source_path).name,
                p.label,
                f"{p.confidence:.4f}",
                p.answers,
                f"{p.clarity:.4f}",
                "",
                "",
            ]
        )
    return out.getvalue()


@dataclass(frozen=True)
class Answered:
    """An expert's answer as given, before it is checked: ``where`` names it in an error
    ("line 3" of a CSV; empty on the web page, where there is one)."""

    where: str
    image: str  # public id, sha256, source path or file name
    answer: str
    reason: str


def read_answers(path: Path) -> tuple[list[Answered], int]:
    """The answered rows of a proposals CSV, unchecked (and how many were left blank: not
    confirmed); ``GoldImportError`` when the file cannot be read or lacks a column."""
    source = str(path)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GoldImportError(source, [f"cannot read the file: {exc}"]) from None
    if not rows or not {"image", "answer", "reason"} <= set(rows[0]):
        raise GoldImportError(source, ["expected the columns image, answer, reason"])
    answered = [
        Answered(
            f"line {line}",
            (row.get("image") or "").strip(),
            (row.get("answer") or "").strip(),
            (row.get("reason") or "").strip(),
        )
        for line, row in enumerate(rows, start=2)
    ]
    kept = [a for a in answered if a.answer]
    return kept, len(answered) - len(kept)


def check_confirmations(
    session: Session, job: Job, spec: JobSpec, answered: list[Answered], source: str
) -> list[Confirmation]:
    """Every answer checked first (``quality.crowdconfirm`` records them only if all pass);
    one bad answer raises ``GoldImportError`` listing every problem."""
    labels = {v.lower(): v for v in spec.label_values}
    examples = instruction_example_ids(session, job, spec)
    confirmed: list[Confirmation] = []
    problems: list[str] = []
    seen: set[int] = set()
    for row in answered:
        matches = find_images(session, job, row.image.strip())
        answer, reason = row.answer.strip(), row.reason.strip()
        problem = _row_problem(matches, answer, reason, labels, seen | examples)
        if problem:
            problems.append(f"{row.where}: {problem}" if row.where else problem)
            continue
        seen.add(matches[0].id)
        confirmed.append(Confirmation(matches[0], labels[answer.lower()], reason))
    if problems:
        raise GoldImportError(source, problems)
    return confirmed


def read_confirmations(
    session: Session, job: Job, spec: JobSpec, path: Path
) -> tuple[list[Confirmation], int]:
    """The rows an expert answered (and how many were left blank), all checked."""
    answered, skipped = read_answers(path)
    return check_confirmations(session, job, spec, answered, str(path)), skipped


def _row_problem(
    matches: list[Image], answer: str, reason: str, labels: dict[str, str], refused: set[int]
) -> str | None:
    """What is wrong with a row; ``refused``: images listed before, or instruction examples
    (everyone sees their answer, so they cannot be test questions)."""
    if len(matches) != 1:
        return "unknown image" if not matches else "ambiguous image reference"
    image = matches[0]
    if not answer:
        return f"no answer given (allowed: {', '.join(labels.values())})"
    if answer.lower() not in labels:
        return f"answer {answer!r} is not a label (allowed: {', '.join(labels.values())})"
    if not reason:
        return "a reason is required: annotators who miss a test question are shown it"
    if image.id in refused:
        return "image listed twice, or an instruction example (its answer is no secret)"
    if image.status != ImageStatus.FINALISED:
        return f"image {image.public_id} is {image.status}, no longer a finalised work image"
    return None
