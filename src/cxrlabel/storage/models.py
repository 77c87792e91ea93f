"""SQLAlchemy 2 ORM model: the single source of truth for stored state.

Design notes (why, not what):
- Every row a person or the quality engine creates is kept; nothing is deleted. Judgments are
  *tainted* (flag + reason), never removed, so the quality state can be replayed from history.
- Images carry an opaque ``public_id`` used in every URL an annotator sees, so gold and work
  images are indistinguishable by URL and file names of the source never leak.
- ``AuditEvent`` is append-only: the application never updates or deletes its rows.
- Timestamps are timezone-aware UTC everywhere (stored as naive UTC on SQLite by SQLAlchemy).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# The stored enumerations (plain strings, portable across SQLite and PostgreSQL) are defined once
# in ``cxrlabel.vocab``, which the pure quality core uses too; importable from here as before.
from cxrlabel.vocab import AnnotatorStatus as AnnotatorStatus
from cxrlabel.vocab import ImageStatus as ImageStatus
from cxrlabel.vocab import PageKind as PageKind
from cxrlabel.vocab import Role as Role

# Sort key of ``[assignment] order = "model_uncertainty"``: distance of the model's p from 0.5
# (smallest = least sure), 1.0 for unscored images so they come last on every database.
MODEL_UNCERTAINTY_SQL = "coalesce(abs(model_score - 0.5), 1.0)"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); compare everything as aware UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def new_public_id() -> str:
    """An unguessable, meaningless identifier for URLs (128 bits)."""
    return secrets.token_urlsafe(16)


def serve_rank(job_id: int, sha256: str) -> int:
    """An image's place in its job's serving order: a hash of (job, file content), so the
    order is random with respect to folder layout and class (a Kaggle folder lists NORMAL
    first), the same on every replay, and different per job. 31 bits: a plain INTEGER."""
    digest = hashlib.sha256(f"cxrlabel-serve-order:{job_id}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def _serve_rank_default(context: Any) -> int:
    params = context.get_current_parameters()
    return serve_rank(params["job_id"], params["sha256"])


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}
    # Every mapped class here has a ``Table`` (for the Core statements of the hot paths).
    __table__: ClassVar[Table]


# --- tables ------------------------------------------------------------------------------------


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    spec_toml: Mapped[str] = mapped_column(Text)
    spec_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("job_id", "sha256", name="uq_image_job_sha256"),
        Index("ix_images_job_status", "job_id", "status"),
        # Assignment's candidate scan: unjudged open images in (target, serve_rank, id) order,
        # and the in-progress ones (trusted_judgments > 0), without ranking the whole job.
        Index(
            "ix_images_open_order",
            "job_id",
            "status",
            "trusted_judgments",
            "judgment_target",
            "serve_rank",
            "id",
        ),
        # The same scan with ``[assignment] order = "model_uncertainty"``: the model's least
        # sure images first (unscored last); the ORDER BY must repeat this expression exactly.
        Index(
            "ix_images_model_order",
            "job_id",
            "status",
            "trusted_judgments",
            "judgment_target",
            text(MODEL_UNCERTAINTY_SQL),
            "id",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    # Admin/export-only fields: never rendered to an annotator.
    source_path: Mapped[str] = mapped_column(Text)
    source_format: Mapped[str] = mapped_column(String(16))  # jpeg | png | dicom
    sha256: Mapped[str] = mapped_column(String(64))  # of the source file's bytes
    pixel_sha256: Mapped[str] = mapped_column(String(64))  # of the decoded 8-bit pixels
    phash: Mapped[str] = mapped_column(String(16), index=True)  # 64-bit DCT hash, hex
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    patient_id: Mapped[str | None] = mapped_column(String(120), index=True)
    reference_label: Mapped[str | None] = mapped_column(String(32))
    rendition_path: Mapped[str] = mapped_column(Text)  # relative to the data dir
    thumb_path: Mapped[str] = mapped_column(Text)
    burned_in_annotation: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(24), default=ImageStatus.NEEDS_JUDGMENTS)
    # Current aggregate (written by the quality engine).
    label: Mapped[str | None] = mapped_column(String(32))
    confidence: Mapped[float | None] = mapped_column(Float)
    proba: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # class -> probability
    aggregation_method: Mapped[str | None] = mapped_column(String(16))
    trusted_judgments: Mapped[int] = mapped_column(Integer, default=0)
    judgment_target: Mapped[int] = mapped_column(Integer, default=0)  # trusted judgments wanted
    model_score: Mapped[float | None] = mapped_column(Float)  # p(PNEUMONIA) from a model
    # Default serving order (``serve_rank`` above): shuffled, not the ingest (folder) order.
    serve_rank: Mapped[int] = mapped_column(Integer, default=_serve_rank_default)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    gold: Mapped[GoldItem | None] = relationship(back_populates="image", uselist=False)


class GoldItem(Base):
    __tablename__ = "gold_items"
    __table_args__ = (
        # The active bank in id order, index-only (assignment draws gold by position; 0004).
        Index("ix_gold_items_job_active_image", "job_id", "active", "image_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    accepted_answers: Mapped[list[Any]] = mapped_column(JSON)  # e.g. ["PNEUMONIA"]
    reason: Mapped[str] = mapped_column(Text, default="")
    difficulty: Mapped[str] = mapped_column(String(16), default="medium")  # easy|medium|hard
    # import | expert (review-queue promotion) | reference | crowd (agreement, expert-confirmed)
    source: Mapped[str] = mapped_column(String(16), default="import")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image] = relationship(back_populates="gold")


class TrainingItem(Base):
    """A training case (issue 17): an image with its answer and the expert's reason, shown to
    newcomers before the quiz with that answer. Kept apart from ``gold_items`` on purpose: a
    training answer is no secret, so a training image is never a test question (its status is
    ``training``: never work, never sampled or imported as gold)."""

    __tablename__ = "training_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    answer: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingAnswer(Base):
    """An answer on a training page. Counted for nothing: not a ``Judgment``, so the quality
    engine, trust, aggregation and replay never see it; kept for the annotator's progress."""

    __tablename__ = "training_answers"
    __table_args__ = (
        UniqueConstraint("user_id", "image_id", name="uq_training_answer_user_image"),
        Index("ix_training_answers_job_user", "job_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    answer: Mapped[str] = mapped_column(String(32))
    certainty: Mapped[str] = mapped_column(String(16))
    correct: Mapped[bool] = mapped_column(Boolean)
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    # Pseudonymous id used in reports and exports instead of the username.
    pseudonym: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    api_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserSession(Base):
    """A signed-in browser session (server side, so it can be revoked).

    The cookie carries a random token; only its SHA-256 is stored. Signing out deletes the
    row; a password change or an admin disabling the account deletes all the user's rows.
    ``last_seen_at`` is touched at most once a minute (``annotate/sessions.py``) so the
    annotation loop does not write on every request."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The ID token of an OpenID Connect sign-in (None for a password sign-in): sign-out hands
    # it to the provider as ``id_token_hint`` so the provider's session ends too. Without
    # that, on a shared ward workstation the next person clicking "Sign in with ..." was
    # signed straight back in as the previous user (web/routes/auth.py logout).
    id_token: Mapped[str | None] = mapped_column(Text, nullable=True)


class LoginAttempt(Base):
    """One sign-in (or sign-up) attempt counted by the throttle that every worker process
    shares (``web/throttle.py``): a failure inside the window, or an attempt still being
    checked (``pending``: it counts against the budget, so concurrent guesses cannot
    overshoot it). ``key_sha256`` hashes the (address, username) or address key: no address
    or name is stored. Rows older than the window are deleted as new attempts arrive."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_sha256: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    pending: Mapped[bool] = mapped_column(Boolean, default=False)


class UserIdentity(Base):
    """An account at an OpenID Connect provider (issuer + subject) bound to a user: the
    provider's ``sub`` never changes, unlike a username or e-mail claim
    (``annotate/identities.py``)."""

    __tablename__ = "user_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_identity_issuer_subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnnotatorState(Base):
    """Per-job state of one annotator, maintained by the quality engine."""

    __tablename__ = "annotator_states"
    __table_args__ = (UniqueConstraint("job_id", "user_id", name="uq_annotator_job_user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=AnnotatorStatus.QUIZ)
    status_reason: Mapped[str | None] = mapped_column(Text)
    trust: Mapped[float] = mapped_column(Float, default=0.0)
    gold_seen: Mapped[int] = mapped_column(Integer, default=0)
    gold_missed: Mapped[int] = mapped_column(Integer, default=0)
    gold_contested: Mapped[int] = mapped_column(Integer, default=0)
    gold_forgiven: Mapped[int] = mapped_column(Integer, default=0)
    judgments: Mapped[int] = mapped_column(Integer, default=0)
    speed_trips: Mapped[int] = mapped_column(Integer, default=0)
    flags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[str | None] = mapped_column(Text)  # shown on the annotator's next page
    joined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    quiz_passed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The answer counts the quality rules need (labels and certainties of non-quiz answers,
    # quiz answers seen / missed), kept up to date by the engine so a submit does not count
    # the annotator's whole history; NULL = not computed yet (counted once, then kept).
    answer_counts: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Page(Base):
    """A page served to an annotator: a reservation of its items until submitted or expired."""

    __tablename__ = "pages"
    __table_args__ = (Index("ix_pages_open", "job_id", "submitted_at", "expires_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    served_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    items: Mapped[list[PageItem]] = relationship(
        back_populates="page", order_by="PageItem.position", cascade="all, delete-orphan"
    )


class PageItem(Base):
    __tablename__ = "page_items"
    __table_args__ = (
        UniqueConstraint("page_id", "image_id", name="uq_page_item"),
        Index("ix_page_items_image", "image_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    position: Mapped[int] = mapped_column(Integer)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)

    page: Mapped[Page] = relationship(back_populates="items")
    image: Mapped[Image] = relationship()


class Submission(Base):
    """One accepted page submission; the client id makes replays idempotent."""

    __tablename__ = "submissions"
    __table_args__ = (
        UniqueConstraint("user_id", "client_submission_id", name="uq_submission_client_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id"), unique=True)
    client_submission_id: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any]] = mapped_column(JSON)  # replayed verbatim on retry
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Judgment(Base):
    __tablename__ = "judgments"
    __table_args__ = (
        UniqueConstraint("user_id", "image_id", name="uq_judgment_user_image"),
        Index("ix_judgments_image", "image_id", "tainted"),
        Index("ix_judgments_job", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id"), index=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"))
    answer: Mapped[str] = mapped_column(String(32))
    certainty: Mapped[str] = mapped_column(String(16))
    quality_flag: Mapped[str | None] = mapped_column(String(32))
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    is_quiz: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_missed: Mapped[bool | None] = mapped_column(Boolean)
    trust_at_time: Mapped[float | None] = mapped_column(Float)
    tainted: Mapped[bool] = mapped_column(Boolean, default=False)
    taint_reason: Mapped[str | None] = mapped_column(Text)
    served_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # page time / items on page


class Contest(Base):
    __tablename__ = "contests"

    id: Mapped[int] = mapped_column(primary_key=True)
    gold_id: Mapped[int] = mapped_column(ForeignKey("gold_items.id"), index=True)
    judgment_id: Mapped[int] = mapped_column(ForeignKey("judgments.id"), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open|upheld|changed
    reply: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ExpertReview(Base):
    __tablename__ = "expert_reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    expert_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    label: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    promoted_to_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Invite(Base):
    __tablename__ = "invites"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    role: Mapped[str] = mapped_column(String(16), default=Role.ANNOTATOR)
    max_uses: Mapped[int] = mapped_column(Integer, default=1)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GoldReveal(Base):
    """A test question's accepted answer shown to one annotator (missed-gold feedback): the
    gold bank's exposure, counted per distinct annotator (``design/exposure.py``)."""

    __tablename__ = "gold_reveals"
    __table_args__ = (UniqueConstraint("image_id", "user_id", name="uq_gold_reveal"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Signup(Base):
    """How an account was created by invite: the signals the admin's duplicate-account list
    groups by (a device cookie's hash, the client network's prefix). Never shown to
    annotators."""

    __tablename__ = "signups"
    __table_args__ = (
        Index("ix_signups_invite_time", "invite_id", "created_at"),
        Index("ix_signups_network_time", "network", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    invite_id: Mapped[int | None] = mapped_column(ForeignKey("invites.id"))
    network: Mapped[str] = mapped_column(String(64))  # e.g. 203.0.113.0/24, 2001:db8::/48
    device: Mapped[str | None] = mapped_column(String(64), index=True)  # sha256 of the cookie
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IngestRun(Base):
    __tablename__ = "ingest_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    source: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ingested: Mapped[int] = mapped_column(Integer, default=0)
    already_present: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)


class IngestIssue(Base):
    """A file that was skipped: a failure (with reason) or a duplicate of an ingested image."""

    __tablename__ = "ingest_issues"
    __table_args__ = (UniqueConstraint("job_id", "source_path", name="uq_ingest_issue_path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("ingest_runs.id"))
    source_path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))  # failed | exact_duplicate | near_duplicate
    reason: Mapped[str] = mapped_column(Text)
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    distance: Mapped[int | None] = mapped_column(Integer)  # phash Hamming distance
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """Append-only log of every decision, with its inputs; the quality state replays from it."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(48))
    subject: Mapped[str | None] = mapped_column(String(120))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
