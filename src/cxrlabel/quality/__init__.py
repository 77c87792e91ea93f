"""Quality control: trust, gold, contests, speed trap, answer distribution, dynamic judgments,
expert review, and a replayable audit trail.

Pure core (no web or database imports): ``trust``, ``rules``, ``consensus``, ``state``,
``events``, ``engine``, ``outcomes`` (decisions, page results, grading counts), ``records`` (what
annotate hands to quality and gets back). Database side (imported explicitly by its users, so
importing this package stays light): ``store`` (state adapter), ``rows`` (rows <-> records),
``grading`` (a submitted page), ``commands`` (admin, annotator and expert actions), ``views``
(read views for pages), ``audit`` (replay). CLI commands: ``cli``.
"""

from .engine import Engine, new_state, replay
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
from .outcomes import Decision, PageResult
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
