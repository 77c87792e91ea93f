"""The test-question (gold) bank: import/export as CSV and listing (health checks:
``goldcheck``; seeding from reference labels: ``goldseed``).

A gold item is an image with an expert answer and a reason. Annotators see it like any other
image; the quality engine grades their answer and shows the reason when they miss it. Each gold
is shown at most once per annotator, so the bank's size bounds how much one person can do.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from cxrlabel.design.goldreason import is_placeholder_reason
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import (
    AuditEvent,
    Contest,
    GoldItem,
    Image,
    ImageStatus,
    Job,
    Judgment,
    utcnow,
)

REQUIRED_COLUMNS = ("image", "accepted_answers", "reason")
OPTIONAL_COLUMNS = ("difficulty",)
# Written by ``export`` for people reading the file; ignored on import.
EXPORT_ONLY_COLUMNS = ("public_id", "source_file", "source", "active", "seen", "missed")
DIFFICULTIES = ("easy", "medium", "hard")
ANSWER_SEPARATOR = ";"


class GoldImportError(ValueError):
    """The CSV cannot be imported; ``problems`` lists every problem found, with row numbers."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{source}: nothing imported: {shown}{more}")


# --- image references ----------------------------------------------------------------------


def find_images(session: Session, job: Job, reference: str) -> list[Image]:
    """Images of the job a reference names: public id, sha256, source path or file name."""
    reference = reference.strip()
    if not reference:
        return []
    exact = session.scalars(
        select(Image).where(
            Image.job_id == job.id,
            or_(
                Image.public_id == reference,
                Image.sha256 == reference.lower(),
                Image.source_path == reference,
            ),
        )
    ).all()
    if exact:
        return list(exact)
    name = Path(reference).name
    candidates = session.scalars(
        select(Image).where(Image.job_id == job.id, Image.source_path.endswith(name))
    ).all()
    # Match whole path components only, so "1.jpeg" never matches "11.jpeg".
    return [
        im
        for im in candidates
        if im.source_path.replace("\\", "/").endswith("/" + reference)
        or Path(im.source_path).name == reference
    ]


def instruction_example_ids(session: Session, job: Job, spec: JobSpec) -> set[int]:
    """Images the instructions show *with their answer*: they must never be test questions,
    or an annotator would have seen the answer before the quiz."""
    ids: set[int] = set()
    for example in spec.instructions.examples:
        ids.update(im.id for im in find_images(session, job, example.image))
    return ids


# --- import ---------------------------------------------------------------------------------


@dataclass
class ImportSummary:
    created: int = 0
    updated: int = 0
    public_ids: list[str] = field(default_factory=list)
    kept_retired: list[str] = field(default_factory=list)  # updated, left inactive


@dataclass
class _Row:
    line: int
    image: Image
    answers: list[str]
    reason: str
    difficulty: str


def _parse_answers(raw: str, spec: JobSpec) -> tuple[list[str], list[str]]:
    """Canonical label values (case-insensitive input) and the unknown ones."""
    canonical = {v.lower(): v for v in spec.label_values}
    given = [a.strip() for a in raw.split(ANSWER_SEPARATOR) if a.strip()]
    answers = [canonical[a.lower()] for a in given if a.lower() in canonical]
    unknown = [a for a in given if a.lower() not in canonical]
    return list(dict.fromkeys(answers)), unknown


def _read_csv(text: str, source: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise GoldImportError(source, ["the file is empty (expected a header row)"])
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    known = set(REQUIRED_COLUMNS + OPTIONAL_COLUMNS + EXPORT_ONLY_COLUMNS)
    unknown = [c for c in header if c not in known]
    problems = [f"missing column '{c}'" for c in missing]
    problems += [f"unknown column '{c}'" for c in unknown]
    if problems:
        expected = ", ".join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
        raise GoldImportError(source, [*problems, f"expected columns: {expected}"])
    reader.fieldnames = header
    return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def _validate(
    session: Session, job: Job, spec: JobSpec, rows: list[dict[str, str]]
) -> tuple[list[_Row], list[str]]:
    parsed, problems = [], []
    seen: dict[int, int] = {}  # image id -> the line it was first on
    examples = instruction_example_ids(session, job, spec)
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        ref = row.get("image", "")
        matches = find_images(session, job, ref)
        if not ref:
            problems.append(f"line {line}: empty image reference")
        elif not matches:
            problems.append(f"line {line}: unknown image '{ref}' (not ingested in job {job.name})")
        elif len(matches) > 1:
            problems.append(f"line {line}: image '{ref}' is ambiguous ({len(matches)} images)")
        answers, unknown = _parse_answers(row.get("accepted_answers", ""), spec)
        if unknown:
            problems.append(
                f"line {line}: answer {', '.join(map(repr, unknown))} is not a label "
                f"(allowed: {', '.join(spec.label_values)})"
            )
        elif not answers:
            problems.append(f"line {line}: no accepted answer")
        difficulty = (row.get("difficulty") or "medium").lower()
        if difficulty not in DIFFICULTIES:
            problems.append(
                f"line {line}: difficulty '{difficulty}' must be one of {', '.join(DIFFICULTIES)}"
            )
        if len(matches) == 1 and matches[0].status == ImageStatus.HELD:
            problems.append(
                f"line {line}: image '{ref}' is held for review (burned-in text); "
                "release it with `cxrlabel held release` first"
            )
        if len(matches) == 1 and matches[0].status == ImageStatus.TRAINING:
            problems.append(
                f"line {line}: image '{ref}' is a training case: newcomers see its "
                "answer in training, so it cannot be a test question"
            )
        if len(matches) == 1 and matches[0].id in examples:
            problems.append(
                f"line {line}: image '{ref}' is an instruction example: annotators "
                "see its answer in the instructions, so it cannot be a test question"
            )
        if len(matches) == 1:
            image = matches[0]
            if image.id in seen:
                problems.append(f"line {line}: same image as line {seen[image.id]}")
            seen[image.id] = line
            parsed.append(_Row(line, image, answers, row.get("reason", ""), difficulty))
    if not rows:
        problems.append("no rows after the header")
    return parsed, problems


def import_gold_csv(
    session: Session,
    job: Job,
    spec: JobSpec,
    path: Path,
    now: datetime | None = None,
    actor_id: int | None = None,
) -> ImportSummary:
    """Make every row's image a gold item. All rows are checked first: one bad row imports
    nothing (the caller's transaction is left untouched)."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise GoldImportError(source, ["file not found"]) from None
    except UnicodeDecodeError:
        raise GoldImportError(source, ["not UTF-8 text (save the CSV as UTF-8)"]) from None
    except OSError as exc:
        raise GoldImportError(source, [f"cannot read: {exc.strerror}"]) from None
    try:
        rows = _read_csv(text, source)
    except csv.Error as exc:
        raise GoldImportError(source, [f"not a valid CSV file: {exc}"]) from None
    parsed, problems = _validate(session, job, spec, rows)
    if problems:
        raise GoldImportError(source, problems)
    now = now or utcnow()
    summary = ImportSummary()
    for row in parsed:
        make_gold(
            session, job, row.image, row.answers, row.reason, row.difficulty, "import", now, summary
        )
    session.add(
        AuditEvent(
            at=now,
            job_id=job.id,
            actor_id=actor_id,
            action="gold.import",
            subject=path.name,
            payload={
                "created": summary.created,
                "updated": summary.updated,
                "images": summary.public_ids,
                "kept_retired": summary.kept_retired,
            },
        )
    )
    session.flush()
    return summary


def make_gold(
    session: Session,
    job: Job,
    image: Image,
    answers: list[str],
    reason: str,
    difficulty: str,
    source: str,
    now: datetime,
    summary: ImportSummary,
) -> GoldItem:
    gold = session.scalar(select(GoldItem).where(GoldItem.image_id == image.id))
    retired = gold is not None and is_retired(gold)
    if gold is None:
        gold = GoldItem(
            job_id=job.id,
            image_id=image.id,
            accepted_answers=answers,
            reason=reason,
            difficulty=difficulty,
            source=source,
            created_at=now,
        )
        session.add(gold)
        summary.created += 1
    else:
        gold.accepted_answers, gold.reason, gold.difficulty = answers, reason, difficulty
        summary.updated += 1
    if retired:
        summary.kept_retired.append(image.public_id)  # only an admin brings it back
    else:
        # Active only with a real reason: a placeholder would be shown to whoever misses it.
        gold.active = not is_placeholder_reason(reason)
    image.status = ImageStatus.GOLD
    summary.public_ids.append(image.public_id)
    return gold


def is_retired(gold: GoldItem) -> bool:
    """Switched off on purpose (retired for exposure, ``design/exposure.py``, or by an admin,
    e.g. after contests) rather than waiting for its expert's reason: inactive with a real
    reason. An import updates such an item but leaves it retired."""
    return not gold.active and not is_placeholder_reason(gold.reason)


# --- listing and export ----------------------------------------------------------------------


@dataclass(frozen=True)
class GoldRow:
    gold: GoldItem
    image: Image
    seen: int  # gold judgments graded on this item
    missed: int
    contests: int
    open_contests: int = 0

    @property
    def miss_rate(self) -> float | None:
        return self.missed / self.seen if self.seen else None


def gold_rows(session: Session, job: Job, include_inactive: bool = True) -> list[GoldRow]:
    """Each gold item with its image and how often it was answered, missed and contested: the
    one place these counts are made (``gold list``, the gold check, the admin pages and
    ``quality.views.gold_stats`` read them)."""
    query = (
        select(GoldItem, Image)
        .join(Image, Image.id == GoldItem.image_id)
        .where(GoldItem.job_id == job.id)
    )
    if not include_inactive:
        query = query.where(GoldItem.active.is_(True))
    pairs = session.execute(query.order_by(GoldItem.id)).all()
    graded = select(Judgment.image_id, func.count()).where(
        Judgment.job_id == job.id,
        Judgment.is_gold.is_(True),
        Judgment.gold_missed.is_not(None),
    )
    seen = dict(session.execute(graded.group_by(Judgment.image_id)).all())
    missed = dict(
        session.execute(
            graded.where(Judgment.gold_missed.is_(True)).group_by(Judgment.image_id)
        ).all()
    )
    per_gold = select(Contest.gold_id, func.count()).group_by(Contest.gold_id)
    contests = dict(session.execute(per_gold).all())
    open_contests = dict(session.execute(per_gold.where(Contest.status == "open")).all())
    return [
        GoldRow(
            g,
            im,
            seen.get(im.id, 0),
            missed.get(im.id, 0),
            contests.get(g.id, 0),
            open_contests.get(g.id, 0),
        )
        for g, im in pairs
    ]


def export_gold_csv(session: Session, job: Job) -> str:
    """The bank as CSV; ``import`` reads it back (image = source sha256, portable across DBs)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *EXPORT_ONLY_COLUMNS])
    for row in gold_rows(session, job):
        g, im = row.gold, row.image
        writer.writerow(
            [
                im.sha256,
                ANSWER_SEPARATOR.join(g.accepted_answers),
                g.reason,
                g.difficulty,
                im.public_id,
                Path(im.source_path).name,
                g.source,
                str(g.active).lower(),
                row.seen,
                row.missed,
            ]
        )
    return out.getvalue()
