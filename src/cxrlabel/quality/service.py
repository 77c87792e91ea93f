"""The quality engine's database side under one name, for scripts and tests written against it.

The code lives in five modules (imported directly by ``cxrlabel`` itself):

* ``store``: the state adapter (rows <-> records, locks, the audit log, running one event);
* ``grading``: a submitted page (``on_page_submitted``);
* ``commands``: contests, gold corrections, removing/reinstating annotators, messages, expert
  labels;
* ``views``: the review queue, contributors, gold statistics, contests (reads only);
* ``audit``: replaying the audit log and checking it against the stored state.
"""

from __future__ import annotations

from .audit import ReplayReport, load_events, replay, stored_snapshot, verify_replay
from .commands import (
    contest_gold,
    record_expert_label,
    reinstate_annotator,
    remove_annotator,
    resolve_contest,
    send_message,
    update_gold,
)
from .grading import on_page_submitted
from .records import MissedGold, PageOutcome, SubmittedJudgment
from .store import INPUT_ACTIONS, DbState, QualityError, ReviewConflict
from .views import (
    ContestView,
    Contributor,
    GoldStat,
    ReviewItem,
    contributors,
    gold_stats,
    list_contests,
    review_queue,
)

__all__ = [
    "INPUT_ACTIONS",
    "ContestView",
    "Contributor",
    "DbState",
    "GoldStat",
    "MissedGold",
    "PageOutcome",
    "QualityError",
    "ReplayReport",
    "ReviewConflict",
    "ReviewItem",
    "SubmittedJudgment",
    "contest_gold",
    "contributors",
    "gold_stats",
    "list_contests",
    "load_events",
    "on_page_submitted",
    "record_expert_label",
    "reinstate_annotator",
    "remove_annotator",
    "replay",
    "resolve_contest",
    "review_queue",
    "send_message",
    "stored_snapshot",
    "update_gold",
    "verify_replay",
]
