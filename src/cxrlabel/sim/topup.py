"""Crowd gold top-up in the simulation (issue 17, ``simulate --gold-top-up N``).

Exposure retires test questions whose answers several annotators have seen
(``design/exposure.py``), so a long job's bank shrinks: on the full seed-7 Kermany run 96 of 208
were retired. A job without an expert-written reserve refills it from the crowd's agreement:
an expert confirms proposals on the Gold proposals page. Here the simulated radiologist does
that whenever ``N`` more items have been retired than topped up, through the same draw as the
page (``design.crowdgold.draw_proposals``, the clearest half of each crowd label) and the same
recording (``quality.crowdconfirm.confirm_answers``: an agreeing answer makes ``easy`` gold,
a disagreeing one corrects the crowd's label), so the simulator exercises the whole loop.
Each confirmed image leaves the work pool: its label is now a test question's answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from cxrlabel.design.crowdgold import Answered, draw_proposals
from cxrlabel.jobspec import JobSpec
from cxrlabel.quality.crowdconfirm import confirm_answers
from cxrlabel.storage.models import Job, User

REASON = "Simulated radiologist: a clear case, confirmed from the crowd's agreement."
CLEAREST = 0.5  # the Gold proposals page's default


@dataclass
class TopUpStats:
    rounds: int = 0
    promoted: int = 0  # crowd proposals the expert confirmed: new gold
    corrected: int = 0  # proposals where the expert disagreed with the crowd: corrections
    nothing_to_propose: int = 0  # checks that found no clear finalised image

    def as_dict(self) -> dict[str, int]:
        return {
            "gold_top_up_rounds": self.rounds,
            "gold_topped_up": self.promoted,
            "gold_top_up_corrections": self.corrected,
        }


def top_up(
    session: Session,
    job: Job,
    spec: JobSpec,
    expert: User,
    answer: Callable[[int], str],
    n: int,
    seed: int,
    now: datetime,
) -> tuple[list[int], list[int]]:
    """Draw up to ``n`` proposals and record the expert's ``answer(image_id)`` for each;
    returns (made gold, corrected) image ids. ``ValueError``: nothing to propose."""
    proposals = draw_proposals(session, job, spec, n, seed, clearest_fraction=CLEAREST)
    answered = [Answered("", p.image.public_id, answer(p.image.id), REASON) for p in proposals]
    confirmed = confirm_answers(session, job, spec, expert, answered, "simulated top-up", now)
    return confirmed.promoted, confirmed.corrected
