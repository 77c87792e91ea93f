"""The project's words, defined once: roles, statuses, page kinds, taint and removal reasons,
label names.

Plain strings (portable across SQLite and PostgreSQL, readable in the audit log and exports);
no imports, so every room (the pure quality core included) can use them. ``storage.models``
stores them; ``quality.state`` and the rules compute with them.
"""

from __future__ import annotations

# --- labels of the bundled pneumonia job ---------------------------------------------------------
NORMAL = "NORMAL"
PNEUMONIA = "PNEUMONIA"
LABELS: tuple[str, str] = (NORMAL, PNEUMONIA)
# The positive class: model scores are P(PNEUMONIA); ties of the crowd go to it (a missed
# pneumonia costs more than a second look at a normal film).
POSITIVE_LABEL = PNEUMONIA


class Role:
    ADMIN = "admin"
    ANNOTATOR = "annotator"
    EXPERT = "expert"
    ALL = (ADMIN, ANNOTATOR, EXPERT)


class ImageStatus:
    NEEDS_JUDGMENTS = "needs_judgments"
    FINALISED = "finalised"
    NEEDS_REVIEW = "needs_review"
    EXPERT = "expert"  # finalised by an expert
    GOLD = "gold"  # a test question, never aggregated as work
    # Held for admin review (a DICOM flagged as having burned-in text, possibly identifying):
    # never served, never sampled as gold, until released (``cxrlabel held release``).
    HELD = "held"
    # A training case (issue 17): shown with its answer and reason before the quiz, so it is
    # kept out of the gold bank (its answer is no secret) and out of the work (never judged).
    TRAINING = "training"
    ALL = (NEEDS_JUDGMENTS, FINALISED, NEEDS_REVIEW, EXPERT, GOLD, HELD, TRAINING)
    # Statuses of images that are not work to label (counted apart in progress and metrics).
    NOT_WORK = (GOLD, TRAINING)


class AnnotatorStatus:
    QUIZ = "quiz"  # joined, quiz not yet passed
    ACTIVE = "active"
    REMOVED = "removed"  # removed by quality control or admin; reversible by reinstating
    DISQUALIFIED = "disqualified"  # failed the quiz; final for this job
    ALL = (QUIZ, ACTIVE, REMOVED, DISQUALIFIED)


class PageKind:
    TRAINING = "training"  # practice before the quiz: feedback after each page, counts for nothing
    QUIZ = "quiz"
    WORK = "work"


# Judgment taint reasons (a judgment may carry several; it counts only when it carries none).
TAINT_REMOVED = "annotator_removed"
TAINT_SPEED = "speed_trap"
TAINT_ORDER = (TAINT_REMOVED, TAINT_SPEED)
