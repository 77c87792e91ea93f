"""The pandas API of the CSV layer: the readers return DataFrames, ``aggregate_frame`` takes
and returns them.

The file contracts, the validation and the error policy live in
:mod:`cxrlabel.aggregate.csvfiles` (standard ``csv`` module and NumPy, so that
``cxrlabel aggregate`` does not import pandas); this module converts between those columns and
DataFrames. In short: ANSWERS is ``task,worker,label[,certainty]``, GOLD ``task,label``, TRUST
``worker,trust``; everything is read as strings; every problem is an
:class:`AggregationInputError` with one line; a repeated (task, worker) answer keeps the last
one and warns (:class:`DuplicateAnswersWarning`); classes are the sorted union of the answered
labels and the gold labels of answered tasks.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import csvfiles
from .base import AggregationResult
from .csvfiles import (
    ANSWER_COLUMNS,
    GOLD_COLUMNS,
    TRUST_COLUMNS,
    Columns,
    DuplicateAnswersWarning,
    EncodedAnswers,
)

__all__ = [
    "ANSWER_COLUMNS",
    "GOLD_COLUMNS",
    "TRUST_COLUMNS",
    "DuplicateAnswersWarning",
    "EncodedAnswers",
    "aggregate_frame",
    "drop_duplicate_answers",
    "encode",
    "read_answers",
    "read_gold",
    "read_trust",
    "result_frame",
]


def read_answers(path: str | Path) -> pd.DataFrame:
    """Read and validate ANSWERS.csv; duplicates (task, worker) keep the last answer."""
    return pd.DataFrame(csvfiles.read_answers(path))


def read_gold(path: str | Path) -> pd.DataFrame:
    """Read GOLD.csv; identical repeated rows collapse, conflicting ones are an error."""
    return pd.DataFrame(csvfiles.read_gold(path))


def read_trust(path: str | Path) -> pd.DataFrame:
    """Read TRUST.csv; trust must be a number >= 0, one row per worker."""
    frame = pd.DataFrame(csvfiles.read_trust(path))
    return frame.assign(trust=frame["trust"].astype(float))


def drop_duplicate_answers(frame: pd.DataFrame, source: str = "ANSWERS") -> pd.DataFrame:
    """Keep the last of repeated (task, worker) answers, with a warning."""
    return pd.DataFrame(csvfiles.drop_duplicate_answers(_columns(frame), source))


def encode(
    answers: pd.DataFrame, gold: pd.DataFrame | None = None, trust: pd.DataFrame | None = None
) -> EncodedAnswers:
    """Map task/worker/label values to integer codes (tasks in order of first appearance)."""
    return csvfiles.encode(
        _columns(answers),
        None if gold is None else _columns(gold),
        None if trust is None else _columns(trust),
    )


def aggregate_frame(
    answers: pd.DataFrame,
    method: str = "mv",
    *,
    gold: pd.DataFrame | None = None,
    trust: pd.DataFrame | None = None,
    tie_break: str | None = None,
    **params: object,
) -> pd.DataFrame:
    """String-label wrapper: answers/gold/trust frames in, one row per task out with
    ``task, label, confidence, n_answers, gold, p_<class>...``."""
    result, encoded = csvfiles.fit_columns(
        _columns(answers),
        method,
        gold=None if gold is None else _columns(gold),
        trust=None if trust is None else _columns(trust),
        tie_break=tie_break,
        **params,
    )
    return result_frame(result, encoded)


def result_frame(result: AggregationResult, encoded: EncodedAnswers) -> pd.DataFrame:
    columns = csvfiles.result_columns(result, encoded)
    return pd.DataFrame(dict(zip(csvfiles.result_header(encoded.classes), columns, strict=True)))


def _columns(frame: pd.DataFrame) -> Columns:
    return {str(name): frame[name].tolist() for name in frame.columns}
