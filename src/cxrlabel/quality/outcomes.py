"""What grading produces, kept apart from the engine that applies events (pure core).

``Decision`` (an audited action) and ``PageResult`` (an annotator's feedback for one page) are
the engine's outputs; ``gold_missed``, ``count_peer_pairs`` and ``regrade_gold`` are the
counting rules it applies to a ``QualityState``: how an answer to a test question is graded,
how peer agreement pairs are counted, and how a corrected gold item regrades earlier answers.
No web or database imports: this module is part of the pure quality core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import rules
from .state import AnswerCounts, GoldRec, JudgmentRec, QualityState

RETAKE_MESSAGE = (
    "You did not reach this job's accuracy on the quiz yet. Please read the instructions and "
    "the examples again; the next quiz has different images."
)


@dataclass(frozen=True)
class Decision:
    action: str
    subject: str
    payload: dict[str, Any]


@dataclass
class PageResult:
    """What one submitted page led to, for the annotator's feedback page."""

    quiz_passed: bool | None = None
    quiz_accuracy: float | None = None
    missed: list[JudgmentRec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def gold_missed(rec: JudgmentRec, gold: GoldRec, cant_tell: str) -> bool:
    """A wrong answer to a test question, except an honest "can't tell" on a gold item marked
    hard: an expert-calibration case that a careful non-expert may rightly not decide."""
    if rec.certainty == cant_tell and gold.difficulty == "hard":
        return False
    return rec.answer not in gold.accepted


def round6(value: float | None) -> float | None:
    """Numbers in audit payloads: six decimals, so a replay compares equal."""
    return None if value is None else round(value, 6)


def count_peer_pairs(
    state: QualityState, recs: list[JudgmentRec], cant_tell: str, per_peer: bool = False
) -> set[int]:
    """Peer agreement (``skill.py``): each new counted label on a work image pairs with
    every earlier counted label of another annotator on it; both get the pair. Tainted
    and "can't tell" answers are not labels. ``per_peer``: also tally the pairs per peer
    (``AnswerCounts.peer_tally``, for the collusion rule). Returns the peers whose counts
    changed."""
    new = [r for r in recs if not r.is_gold and not r.tainted and r.certainty != cant_tell]
    if not new:
        return set()
    state.prefetch(sorted({r.image_id for r in new}))
    counts = state.counts(new[0].user_id)
    peers: set[int] = set()
    for rec in new:
        for other in state.judgments_on(rec.image_id):
            if (
                other.id >= rec.id
                or other.user_id == rec.user_id
                or other.is_gold
                or other.tainted
                or other.certainty == cant_tell
            ):
                continue
            agree = int(other.answer == rec.answer)
            counts.peer_pairs += 1
            counts.peer_agree += agree
            other_counts = state.counts(other.user_id)
            other_counts.peer_pairs += 1
            other_counts.peer_agree += agree
            if per_peer:
                _tally(counts, other.user_id, agree)
                _tally(other_counts, rec.user_id, agree)
            peers.add(other.user_id)
    return peers


def _tally(counts: AnswerCounts, peer: int, agree: int) -> None:
    pairs, agreements = counts.peer_tally.get(peer, (0, 0))
    counts.peer_tally[peer] = [pairs + 1, agreements + agree]


def regrade_gold(state: QualityState, gold: GoldRec, cant_tell: str) -> dict[int, dict[str, int]]:
    """Regrade every answer to ``gold`` against its (corrected) accepted answers.

    A pending contest on one of those answers is resolved (it counts again). Returns, per
    affected annotator, how many misses were forgiven and how many answers are newly missed."""
    affected: dict[int, dict[str, int]] = {}
    for rec in state.judgments_on(gold.image_id):
        if not rec.is_gold:
            continue
        annotator = state.annotator(rec.user_id)
        pending = rules.contested_pending(annotator)
        if rec.id in pending:  # the correction resolves this contest: it counts again
            rest = [j for j in pending if j != rec.id]
            flags = {k: v for k, v in annotator.flags.items() if k != "contested"}
            annotator.flags = {**flags, "contested": rest} if rest else flags
            affected.setdefault(rec.user_id, {"forgiven": 0, "newly_missed": 0})
        missed = gold_missed(rec, gold, cant_tell)
        if rec.gold_missed is None or missed == rec.gold_missed:
            continue
        change = affected.setdefault(rec.user_id, {"forgiven": 0, "newly_missed": 0})
        annotator.gold_missed += 1 if missed else -1
        if rec.is_quiz:
            state.counts(rec.user_id).quiz_missed += 1 if missed else -1
        if missed:
            change["newly_missed"] += 1
        else:
            annotator.gold_forgiven += 1
            change["forgiven"] += 1
        rec.gold_missed = missed
    return affected
