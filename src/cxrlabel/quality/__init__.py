"""Quality control: trust, gold, contests, speed trap, answer distribution, dynamic judgments,
expert review, and a replayable audit trail.

Pure core (no web or database imports): ``trust``, ``rules``, ``consensus``, ``state``,
``events``, ``engine``. Database adapter: ``service`` (imported explicitly by its users, so
importing this package stays light). Commands: ``cli``.
"""

from .engine import Decision, Engine, PageResult, new_state, replay
from .events import (
    AnnotatorReinstated,
    AnnotatorRemoved,
    ContestOpened,
    Event,
    ExpertLabeled,
    GoldChanged,
    JudgmentIn,
    PageSubmitted,
)
from .state import QualityState
from .trust import beta_trust

__all__ = [
    "AnnotatorReinstated",
    "AnnotatorRemoved",
    "ContestOpened",
    "Decision",
    "Engine",
    "Event",
    "ExpertLabeled",
    "GoldChanged",
    "JudgmentIn",
    "PageResult",
    "PageSubmitted",
    "QualityState",
    "beta_trust",
    "new_state",
    "replay",
]
