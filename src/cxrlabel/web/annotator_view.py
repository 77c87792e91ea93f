"""What an annotator sends and gets back, translated between their aliases and the shared ids.

The engine (``annotate/``, ``quality/``) works with the shared public ids and database ids;
the annotator's browser only ever sees their own aliases (``annotate/aliases.py``). This module is
the one place where the two meet: answers come in under the annotator's image aliases and are
mapped back within *that page*; results go out with image aliases and opaque answer ids; a
contest names an answer by its opaque id, which resolves only among the annotator's own
*missed* test questions. Every other id gets one and the same refusal (``NOT_CONTESTABLE``),
so probing cannot tell a work answer, a correct gold answer, another account's answer or a
made-up id apart.
"""

from __future__ import annotations

import hmac

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.annotate.aliases import Aliases
from cxrlabel.annotate.schemas import AnswerIn, SubmitResult
from cxrlabel.design.exposure import answers_shown
from cxrlabel.quality.commands import not_contestable
from cxrlabel.storage.models import Image, Job, Judgment, Page, PageItem

# Never a public id or an alias (url-safe base64 has no "~"): an unknown alias is refused by
# the engine as "an answer names an image not on this page".
_UNKNOWN_IMAGE = "~"


class MissedGoldOut(BaseModel):
    """Feedback on one missed test question, as the annotator gets it."""

    judgment_id: str = Field(
        description="Opaque id of this answer, only valid for you: "
        "send it to contest the accepted answer"
    )
    image_public_id: str = Field(description="Your own id of the image (not valid for anyone else)")
    given_answer: str
    accepted_answers: list[str]
    reason: str


class SubmitResultOut(SubmitResult):
    missed_gold: list[MissedGoldOut] = []  # type: ignore[assignment]


def page_alias_map(
    session: Session, aliases: Aliases, user_id: int, page_public_id: str
) -> dict[str, str]:
    """alias -> public id for the images of one of the user's pages (empty if not theirs;
    the engine then refuses the page as not found)."""
    public_ids = session.scalars(
        select(Image.public_id)
        .join(PageItem, PageItem.image_id == Image.id)
        .join(Page, Page.id == PageItem.page_id)
        .where(Page.public_id == page_public_id, Page.user_id == user_id)
    )
    return aliases.image_map(public_ids, user_id)


def answers_in(answers: list[AnswerIn], alias_map: dict[str, str]) -> list[AnswerIn]:
    """The answers with each image alias replaced by the image's public id."""
    return [
        a.model_copy(update={"image_public_id": alias_map.get(a.image_public_id, _UNKNOWN_IMAGE)})
        for a in answers
    ]


def result_out(result: SubmitResult, aliases: Aliases, user_id: int) -> SubmitResultOut:
    """The result with the annotator's aliases in place of shared and sequential ids. A failed
    quiz gets its score but not the accepted answers: the account cannot continue, so the
    answers would teach it nothing, and throwaway accounts failing the quiz on purpose were
    how the whole gold bank was collected (design/exposure.py counts no reveal for them)."""
    data = result.model_dump()
    if not answers_shown(result.kind, result.quiz_passed):
        data["missed_gold"] = []
    data["missed_gold"] = [
        {
            **m,
            "judgment_id": aliases.answer(m["judgment_id"], user_id),
            "image_public_id": aliases.image(m["image_public_id"], user_id),
        }
        for m in data["missed_gold"]
    ]
    # Training feedback shows training cases (never gold), under the annotator's aliases too.
    data["training"] = [
        {**t, "image_public_id": aliases.image(t["image_public_id"], user_id)}
        for t in data["training"]
    ]
    return SubmitResultOut.model_validate(data)


def missed_gold_judgment(
    session: Session, aliases: Aliases, job: Job, user_id: int, answer_id: str
) -> int:
    """The id of the user's missed test-question answer named by ``answer_id``, else the
    uniform ``not_contestable`` refusal."""
    candidates = session.scalars(
        select(Judgment.id).where(
            Judgment.job_id == job.id,
            Judgment.user_id == user_id,
            Judgment.is_gold.is_(True),
            Judgment.gold_missed.is_(True),
        )
    )
    supplied = answer_id.encode()
    for judgment_id in candidates:
        if hmac.compare_digest(aliases.answer(judgment_id, user_id).encode(), supplied):
            return judgment_id
    raise not_contestable()
