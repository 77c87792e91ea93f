"""The quality engine: apply one event to a ``QualityState`` and say what was decided.

``Engine.apply(event)`` is the only way state changes. The incremental path (one submitted page
at a time, on a database-backed state) and ``replay`` (every event from an empty state) call it
the same way, so they agree by construction; the tests check that they do.

Every decision comes back as a ``Decision`` (action, subject, payload with the reason and the
inputs) which ``service.py`` writes to the audit log. ``Decision``, ``PageResult`` and the
counting rules (gold grading, peer pairs, regrading a corrected gold item) live in
``outcomes.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cxrlabel.vocab import TAINT_REMOVED, TAINT_SPEED

from . import rules, skill
from .consensus import REVIEW_MODEL, ConsensusParams, evaluate
from .events import (
    AnnotatorReinstated,
    AnnotatorRemoved,
    ContestOpened,
    ContestUpheld,
    Event,
    ExpertLabeled,
    GoldChanged,
    JudgmentIn,
    PageSubmitted,
)
from .outcomes import (
    RETAKE_MESSAGE,
    Decision,
    PageResult,
    count_peer_pairs,
    gold_missed,
    regrade_gold,
    round6,
)
from .rules import RuleParams
from .state import (
    ACTIVE,
    DISQUALIFIED,
    EXPERT,
    GOLD,
    QUIZ,
    REMOVED,
    AnnotatorRec,
    AnswerCounts,
    GoldRec,
    ImageRec,
    JudgmentRec,
    QualityState,
)

if TYPE_CHECKING:  # the spec is only read here; no pydantic import at run time
    from cxrlabel.jobspec import JobSpec


def new_state(spec: JobSpec) -> QualityState:
    return QualityState(
        default_status=QUIZ if spec.gold.quiz_length > 0 else ACTIVE,
        default_target=spec.judgments.min,
    )


class Engine:
    def __init__(self, state: QualityState, spec: JobSpec) -> None:
        self.state = state
        self.rules = RuleParams.from_spec(spec)
        self.consensus = ConsensusParams.from_spec(spec)
        self.decisions: list[Decision] = []

    # --- dispatch -----------------------------------------------------------------------------
    def apply(self, event: Event) -> PageResult | None:
        if isinstance(event, PageSubmitted):
            return self.page_submitted(event)
        if isinstance(event, GoldChanged):
            self.gold_changed(event)
        elif isinstance(event, ContestOpened):
            self.contest_opened(event)
        elif isinstance(event, ContestUpheld):
            self.contest_upheld(event)
        elif isinstance(event, AnnotatorRemoved):
            self.remove(event.user_id, f"{rules.REMOVED_ADMIN}: {event.reason}", by=event.by)
        elif isinstance(event, AnnotatorReinstated):
            self.reinstate(event.user_id, event.reason, by=event.by)
        elif isinstance(event, ExpertLabeled):
            self.expert_labeled(event)
        else:  # pragma: no cover - the Event union is closed
            raise TypeError(f"unknown quality event {event!r}")
        return None

    def decide(self, action: str, subject: str, **payload: Any) -> None:
        self.decisions.append(Decision(action, subject, payload))

    # --- a submitted page ---------------------------------------------------------------------
    def page_submitted(self, event: PageSubmitted) -> PageResult:
        state, params = self.state, self.rules
        annotator = state.annotator(event.user_id)
        counts = state.counts(event.user_id)
        result = PageResult()
        recs = [self._record(event, j) for j in event.judgments]
        for rec in recs:
            state.add_judgment(rec)
            if annotator.status in (REMOVED, DISQUALIFIED):
                rec.taints.add(TAINT_REMOVED)  # a late page from someone no longer trusted
            self._grade(annotator, counts, rec)
            if rec.gold_missed:
                result.missed.append(rec)
            if not rec.is_quiz:
                counts.labels[rec.answer] += 1
                counts.certainty[rec.certainty] += 1
            if not rec.is_gold:
                annotator.judgments += 1
        annotator.trust = self._trust(annotator)
        graded = [r for r in recs if r.gold_missed is not None]

        if rules.is_too_fast(event.seconds, params):
            self._speed_trap(annotator, event, recs, result)
        elif rules.is_speed_warning(annotator.message):
            # "That page was submitted in 3 s ..." was about an earlier page; shown above every
            # later page it read as a fresh accusation. The count stays in the pace line.
            annotator.message = None
        peers = count_peer_pairs(
            state, recs, self.consensus.cant_tell, per_peer=params.collusion_min_pairs > 0
        )
        if annotator.status == QUIZ:
            active_gold = (
                event.active_gold if event.active_gold is not None else state.active_gold_count()
            )
            if rules.quiz_complete(counts, params, active_gold):
                self._decide_quiz(annotator, counts, result, active_gold)
        if graded and rules.below_minimum_accuracy(annotator, params):
            self.remove(annotator.user_id, rules.low_trust_reason(annotator, params))
            result.warnings.append(
                "Your accuracy on the test questions fell below this job's minimum, so you were "
                "removed from it. An administrator can review this."
            )
        self._check_harm(annotator, result)
        for peer_id in sorted(peers - {annotator.user_id}):  # their evidence grew too
            self._check_harm(state.annotator(peer_id), None)
        self._distribution(annotator, counts, result)
        for rec in recs:
            rec.trust_at_time = annotator.trust
        self.decide(
            "quality.page_graded",
            f"page:{event.page_id}",
            user_id=event.user_id,
            kind=event.kind,
            seconds=round(event.seconds, 3),
            judgments=len(recs),
            gold=len(graded),
            missed=[r.id for r in graded if r.gold_missed],
            trust=round(annotator.trust, 6),
            status=annotator.status,
        )
        self.reevaluate(r.image_id for r in recs if not r.is_gold)
        return result

    @staticmethod
    def _record(event: PageSubmitted, j: JudgmentIn) -> JudgmentRec:
        return JudgmentRec(
            id=j.id,
            image_id=j.image_id,
            user_id=event.user_id,
            page_id=event.page_id,
            answer=j.answer,
            certainty=j.certainty,
            quality_flag=j.quality_flag,
            is_gold=j.is_gold,
            is_quiz=j.is_quiz,
        )

    def _grade(self, annotator: AnnotatorRec, counts: AnswerCounts, rec: JudgmentRec) -> None:
        if not rec.is_gold:
            return
        gold = self.state.gold_of(rec.image_id)
        if gold is None:  # a gold item that no longer exists cannot grade anyone
            return
        rec.gold_missed = gold_missed(rec, gold, self.consensus.cant_tell)
        annotator.gold_seen += 1
        annotator.gold_missed += int(rec.gold_missed)
        if rec.is_quiz:
            counts.quiz_seen += 1
            counts.quiz_missed += int(rec.gold_missed)

    def _check_harm(self, annotator: AnnotatorRec, result: PageResult | None) -> None:
        """Remove an annotator whose answers make labels worse (``skill.harm``)."""
        counts = self.state.counts(annotator.user_id)
        verdict = rules.harm_verdict(annotator, counts, self.rules)
        if verdict is None:
            return
        self.remove(annotator.user_id, verdict.status_reason)
        message = skill.REMOVAL_REASONS[verdict.code]
        annotator.message = message
        if result is not None:
            result.warnings.append(message)

    def _trust(self, annotator: AnnotatorRec) -> float:
        return self.rules.trust(*rules.counted_gold(annotator))

    def _speed_trap(
        self,
        annotator: AnnotatorRec,
        event: PageSubmitted,
        recs: list[JudgmentRec],
        result: PageResult,
    ) -> None:
        for rec in recs:
            rec.taints.add(TAINT_SPEED)
        annotator.speed_trips += 1
        warning = rules.speed_warning(event.seconds, annotator, self.rules)
        annotator.message = warning
        result.warnings.append(warning)
        self.decide(
            "quality.speed_trap",
            f"user:{annotator.user_id}",
            page_id=event.page_id,
            seconds=round(event.seconds, 3),
            min_seconds=self.rules.min_seconds_per_page,
            trips=annotator.speed_trips,
            limit=self.rules.speed_trap_limit,
            tainted=[r.id for r in recs],
        )
        if rules.speed_trap_removes(annotator, self.rules):
            self.remove(
                annotator.user_id,
                f"{rules.REMOVED_SPEED}: {annotator.speed_trips} pages faster than "
                f"{self.rules.min_seconds_per_page:.0f} s",
            )
            result.warnings.append("You were removed from this job for answering too fast.")

    def _decide_quiz(
        self, annotator: AnnotatorRec, counts: AnswerCounts, result: PageResult, active_gold: int
    ) -> None:
        passed = rules.quiz_passes(counts, self.rules)
        score = rules.quiz_trust(counts, self.rules)
        correct = counts.quiz_seen - counts.quiz_missed
        result.quiz_passed = passed
        result.quiz_accuracy = correct / counts.quiz_seen
        inputs = dict(
            correct=correct,
            seen=counts.quiz_seen,
            quiz_trust=round(score, 6),
            min_accuracy=self.rules.min_accuracy,
        )
        if annotator.message == RETAKE_MESSAGE:  # the retake is over either way
            annotator.message = None
        if passed:
            annotator.status, annotator.status_reason = ACTIVE, None
            annotator.quiz_passed = True
            self.decide("quality.quiz_passed", f"user:{annotator.user_id}", **inputs)
        elif rules.quiz_retake_allowed(counts, self.rules, active_gold):
            # Not final: re-read the instructions and take a new quiz on other questions.
            counts.quiz_failures += 1
            counts.quiz_seen = counts.quiz_missed = 0
            annotator.message = RETAKE_MESSAGE
            result.warnings.append(RETAKE_MESSAGE)
            self.decide(
                "quality.quiz_retake",
                f"user:{annotator.user_id}",
                attempt=counts.quiz_failures,
                retakes=self.rules.quiz_retakes,
                **inputs,
            )
        else:
            annotator.status = DISQUALIFIED
            annotator.status_reason = (
                f"quiz: {correct} of {counts.quiz_seen} correct (trust {score:.3f} < "
                f"{self.rules.min_accuracy:.2f})"
            )
            self.decide("quality.quiz_failed", f"user:{annotator.user_id}", **inputs)
            self._taint_all(annotator.user_id)

    def _distribution(
        self, annotator: AnnotatorRec, counts: AnswerCounts, result: PageResult
    ) -> None:
        evidence = rules.distribution_evidence(counts, self.rules)
        before = annotator.flags.get("distribution")
        if evidence is None:
            if before is not None:
                annotator.flags = {k: v for k, v in annotator.flags.items() if k != "distribution"}
                self.decide(
                    "quality.flag_cleared", f"user:{annotator.user_id}", flag="distribution"
                )
            return
        annotator.flags = {**annotator.flags, "distribution": evidence}
        if before is None or before.get("rules") != evidence["rules"]:
            self.decide(
                "quality.flagged", f"user:{annotator.user_id}", flag="distribution", **evidence
            )
        exempt = bool((annotator.flags.get("reinstated") or {}).get("by_admin"))
        if self.rules.distribution_remove and annotator.status == ACTIVE and not exempt:
            self.remove(annotator.user_id, rules.distribution_reason(evidence))
            result.warnings.append(
                "Your answers did not look like careful answers to these images (for example "
                "always the same button), so you were removed from this job."
            )

    # --- removal and reinstatement ------------------------------------------------------------
    def remove(self, user_id: int, reason: str, by: int | None = None) -> None:
        annotator = self.state.annotator(user_id)
        if annotator.status == DISQUALIFIED:
            return  # already out for good; nothing to taint that is not tainted
        annotator.status, annotator.status_reason = REMOVED, reason
        tainted, images = self._taint_all(user_id)
        self.decide(
            "quality.annotator_removed",
            f"user:{user_id}",
            reason=reason,
            by=by,
            trust=round(annotator.trust, 6),
            gold_seen=annotator.gold_seen,
            gold_missed=annotator.gold_missed,
            tainted=len(tainted),
            images=sorted(images),
        )

    def _taint_all(self, user_id: int) -> tuple[list[int], set[int]]:
        tainted: list[int] = []
        for rec in self.state.judgments_by(user_id):
            if TAINT_REMOVED not in rec.taints:
                rec.taints.add(TAINT_REMOVED)
                tainted.append(rec.id)
        images = {
            self.state.judgments[j].image_id for j in tainted if not self.state.judgments[j].is_gold
        }
        self.reevaluate(images)
        return tainted, images

    def reinstate(
        self, user_id: int, reason: str, by: int | None = None, status: str | None = None
    ) -> None:
        annotator = self.state.annotator(user_id)
        if annotator.status not in (REMOVED, DISQUALIFIED):
            return
        was = annotator.status_reason
        annotator.status = status or (
            ACTIVE if annotator.quiz_passed or self.rules.quiz_length == 0 else QUIZ
        )
        annotator.status_reason = None
        annotator.flags = {
            **annotator.flags,
            "reinstated": {
                "by_admin": by is not None,
                "reason": reason,
                "gold_seen": annotator.gold_seen,
                "peer_pairs": self.state.counts(user_id).peer_pairs,
                "speed_trips": annotator.speed_trips,
            },
        }
        untainted: list[int] = []
        for rec in self.state.judgments_by(user_id):
            if TAINT_REMOVED in rec.taints:
                rec.taints.discard(TAINT_REMOVED)
                untainted.append(rec.id)
        images = {
            self.state.judgments[j].image_id
            for j in untainted
            if not self.state.judgments[j].is_gold
        }
        self.decide(
            "quality.annotator_reinstated",
            f"user:{user_id}",
            reason=reason,
            by=by,
            previous_reason=was,
            status=annotator.status,
            untainted=len(untainted),
            images=sorted(images),
        )
        self.reevaluate(images)

    # --- gold corrections and contests --------------------------------------------------------
    def contest_opened(self, event: ContestOpened) -> None:
        """Counted; and a contested *miss* stops counting against trust until an admin
        resolves the contest (upheld: it counts again; changed: the gold is regraded)."""
        annotator = self.state.annotator(event.user_id)
        annotator.gold_contested += 1
        rec = self._own_judgment(event.user_id, event.judgment_id)
        pending = rules.contested_pending(annotator)
        deferred = bool(rec and rec.is_gold and rec.gold_missed and rec.id not in pending)
        self.decide(
            "quality.contest_counted",
            f"user:{event.user_id}",
            contest_id=event.contest_id,
            judgment_id=event.judgment_id,
            miss_deferred=deferred,
        )
        if deferred:
            self._set_pending(annotator, [*pending, event.judgment_id])

    def contest_upheld(self, event: ContestUpheld) -> None:
        annotator = self.state.annotator(event.user_id)
        pending = rules.contested_pending(annotator)
        if event.judgment_id not in pending:
            return
        self.decide(
            "quality.contest_miss_counted",
            f"user:{event.user_id}",
            contest_id=event.contest_id,
            judgment_id=event.judgment_id,
        )
        self._set_pending(annotator, [j for j in pending if j != event.judgment_id])

    def _own_judgment(self, user_id: int, judgment_id: int) -> JudgmentRec | None:
        rec = self.state.judgments.get(judgment_id)
        if rec is None:
            rec = next((j for j in self.state.judgments_by(user_id) if j.id == judgment_id), None)
        return rec if rec is not None and rec.user_id == user_id else None

    def _set_pending(self, annotator: AnnotatorRec, pending: list[int]) -> None:
        flags = {k: v for k, v in annotator.flags.items() if k != "contested"}
        annotator.flags = {**flags, "contested": sorted(pending)} if pending else flags
        self._after_regrade(annotator)

    def gold_changed(self, event: GoldChanged) -> None:
        """Regrade every answer to this gold item against the corrected accepted answers."""
        state = self.state
        gold = state.gold_of(event.image_id)
        old = gold.accepted if gold else ()
        if gold is None:
            gold = GoldRec(event.image_id, tuple(event.accepted))
            state.add_gold(gold)
        gold.accepted = tuple(event.accepted)
        affected = regrade_gold(state, gold, self.consensus.cant_tell)
        self.decide(
            "quality.gold_regraded",
            f"gold:{event.image_id}",
            by=event.by,
            old_accepted=list(old),
            new_accepted=list(gold.accepted),
            affected={str(k): v for k, v in sorted(affected.items())},
        )
        for user_id in sorted(affected):
            self._after_regrade(state.annotator(user_id))

    def _after_regrade(self, annotator: AnnotatorRec) -> None:
        annotator.trust = self._trust(annotator)
        counts = self.state.counts(annotator.user_id)
        if annotator.status == DISQUALIFIED and rules.quiz_passes(counts, self.rules):
            annotator.quiz_passed = True
            self.reinstate(
                annotator.user_id, "quiz regraded after a gold correction", status=ACTIVE
            )
            self.decide(
                "quality.quiz_passed",
                f"user:{annotator.user_id}",
                regraded=True,
                correct=counts.quiz_seen - counts.quiz_missed,
                seen=counts.quiz_seen,
            )
        elif annotator.removal_kind == rules.REMOVED_LOW_TRUST and (
            annotator.trust >= self.rules.min_accuracy - 1e-12
            or annotator.gold_seen < self.rules.min_gold_before_removal
        ):
            self.reinstate(annotator.user_id, "trust restored after a gold correction")
        elif (
            annotator.removal_kind in rules.HARM_KINDS
            and skill.harm(
                rules.skill_evidence(annotator, counts, self.rules.collusion_min_pairs),
                self.rules.harm,
            )
            is None
        ):
            self.reinstate(annotator.user_id, "skill restored after a gold correction")
        elif rules.below_minimum_accuracy(annotator, self.rules):
            self.remove(annotator.user_id, rules.low_trust_reason(annotator, self.rules))
        else:
            self._check_harm(annotator, None)
        # Their trust changed, so every image they weigh on is re-aggregated.
        self.reevaluate(
            r.image_id for r in self.state.judgments_by(annotator.user_id) if not r.is_gold
        )

    # --- experts ------------------------------------------------------------------------------
    def expert_labeled(self, event: ExpertLabeled) -> None:
        image = self.state.image(event.image_id)
        before = image.status
        image.status = GOLD if event.promote_to_gold else EXPERT
        image.label, image.confidence = event.label, 1.0
        image.proba = {lab: float(lab == event.label) for lab in self.consensus.labels}
        image.aggregation_method = "expert"
        if event.promote_to_gold:
            self.state.add_gold(
                GoldRec(event.image_id, (event.label,), difficulty=event.gold_difficulty)
            )
        self.decide(
            "quality.expert_final",
            f"image:{event.image_id}",
            label=event.label,
            expert_id=event.expert_id,
            previous_status=before,
            promoted_to_gold=event.promote_to_gold,
        )

    # --- images -------------------------------------------------------------------------------
    def reevaluate(self, image_ids: Iterable[int]) -> None:
        ordered = sorted(set(image_ids))
        self.state.prefetch(ordered)  # a removal re-evaluates hundreds: load them together
        for image_id in ordered:
            self._evaluate(self.state.image(image_id))

    def _evaluate(self, image: ImageRec) -> None:
        if image.status == GOLD:
            return
        judgments = self.state.judgments_on(image.image_id)
        trust_of = {
            j.user_id: self.state.annotator(j.user_id).trust for j in judgments if not j.tainted
        }
        ev = evaluate(judgments, trust_of, self.consensus, image.model_score)
        if image.status == EXPERT:  # an expert's label is final; only keep the count true
            image.trusted_judgments = ev.trusted_judgments
            return
        before = image.status
        image.status, image.judgment_target = ev.status, ev.judgment_target
        image.trusted_judgments = ev.trusted_judgments
        image.label, image.confidence, image.proba = ev.label, ev.confidence, ev.proba
        image.aggregation_method = ev.method
        if ev.status != before:
            extra = {}
            if ev.review_reason == REVIEW_MODEL:  # the model's opinion is part of the reason
                extra = {
                    "model_score": round6(image.model_score),
                    "model_disagreement": self.consensus.model_disagreement,
                }
            self.decide(
                f"quality.image_{ev.status}",
                f"image:{image.image_id}",
                previous_status=before,
                trusted_judgments=ev.trusted_judgments,
                label=ev.label,
                confidence=round6(ev.confidence),
                review_reason=ev.review_reason,
                judgment_target=ev.judgment_target,
                **extra,
            )


def replay(events: Iterable[Event], spec: JobSpec, state: QualityState | None = None) -> Engine:
    """Apply every event in order to a fresh state (or ``state``); returns the engine."""
    engine = Engine(state if state is not None else new_state(spec), spec)
    for event in events:
        engine.apply(event)
    return engine
