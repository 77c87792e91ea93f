"""CSV reading, validation and string-label encoding for the aggregation methods (pandas).

File contracts (labels and IDs are read as strings, never as numbers):

* ANSWERS: ``task,worker,label`` plus an optional ``certainty`` column with
  ``definitely`` / ``probably`` / ``cant_tell`` (case-insensitive; ``can't tell`` and
  ``cannot tell`` are accepted; an empty cell means ``definitely``, i.e. no discount).
* GOLD: ``task,label``. Gold rows for tasks nobody answered are ignored.
* TRUST: ``worker,trust`` with a number >= 0 per worker.

Error policy: any problem raises :class:`AggregationInputError` with one line naming the file
and the fix. The one thing that is *not* an error is a worker answering the same task twice:
the last answer in file order is kept (a later answer is the worker's correction) and a
:class:`DuplicateAnswersWarning` says how many were dropped.

Classes are the sorted union of the answered labels and the gold labels of answered tasks,
so "first class" in the tie policy means first in plain string order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import get_method
from .base import CERTAINTY_LEVELS, AggregationInputError, AggregationResult

ANSWER_COLUMNS = ("task", "worker", "label")
GOLD_COLUMNS = ("task", "label")
TRUST_COLUMNS = ("worker", "trust")
_CERTAINTY_ALIASES = {
    "": "definitely",
    "can't tell": "cant_tell",
    "cant tell": "cant_tell",
    "cannot tell": "cant_tell",
    "can't_tell": "cant_tell",
}


class DuplicateAnswersWarning(UserWarning):
    """A worker answered one task more than once; the last answer was kept."""


@dataclass(frozen=True)
class EncodedAnswers:
    """String IDs mapped to the integer codes the array API works on."""

    tasks: pd.Index
    workers: pd.Index
    classes: list[str]
    items: np.ndarray
    worker_codes: np.ndarray
    labels: np.ndarray
    certainty: np.ndarray | None
    gold: dict[int, int]
    trust: np.ndarray | None


def read_answers(path: str | Path) -> pd.DataFrame:
    """Read and validate ANSWERS.csv; duplicates (task, worker) keep the last answer."""
    frame = _read_csv(path, ANSWER_COLUMNS, "ANSWERS")
    if "certainty" in frame.columns:
        frame["certainty"] = _normalise_certainty(frame["certainty"], Path(path).name)
    return drop_duplicate_answers(frame, Path(path).name)


def read_gold(path: str | Path) -> pd.DataFrame:
    """Read GOLD.csv; identical repeated rows collapse, conflicting ones are an error."""
    frame = _read_csv(path, GOLD_COLUMNS, "GOLD").drop_duplicates(["task", "label"])
    conflicting = frame["task"].duplicated(keep=False)
    if conflicting.any():
        task = frame.loc[conflicting, "task"].iloc[0]
        raise AggregationInputError(
            f"{Path(path).name}: task {task!r} has conflicting gold labels; keep one row per task"
        )
    return frame


def read_trust(path: str | Path) -> pd.DataFrame:
    """Read TRUST.csv; trust must be a number >= 0, one row per worker."""
    name = Path(path).name
    frame = _read_csv(path, TRUST_COLUMNS, "TRUST")
    values = pd.to_numeric(frame["trust"], errors="coerce")
    bad = values.isna() | ~np.isfinite(values) | (values < 0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise AggregationInputError(
            f"{name} line {row + 2}: trust {frame['trust'].iloc[row]!r} is not a number >= 0"
        )
    if frame["worker"].duplicated().any():
        worker = frame.loc[frame["worker"].duplicated(), "worker"].iloc[0]
        raise AggregationInputError(f"{name}: worker {worker!r} is listed more than once")
    return frame.assign(trust=values.astype(float))


def drop_duplicate_answers(frame: pd.DataFrame, source: str = "ANSWERS") -> pd.DataFrame:
    duplicated = frame.duplicated(["task", "worker"], keep="last")
    n_dropped = int(duplicated.sum())
    if n_dropped:
        first = frame.loc[duplicated].iloc[0]
        warnings.warn(
            f"{source}: {n_dropped} repeated (task, worker) answer(s); kept the last of each "
            f"(first: task={first['task']!r}, worker={first['worker']!r})",
            DuplicateAnswersWarning,
            stacklevel=2,
        )
        frame = frame.loc[~duplicated].reset_index(drop=True)
    return frame


def encode(
    answers: pd.DataFrame, gold: pd.DataFrame | None = None, trust: pd.DataFrame | None = None
) -> EncodedAnswers:
    """Map task/worker/label strings to integer codes (tasks in order of first appearance)."""
    item_codes, tasks = pd.factorize(answers["task"], sort=False)
    worker_codes, workers = pd.factorize(answers["worker"], sort=False)
    gold_rows = _answered_gold(gold, tasks)
    classes = sorted(set(answers["label"]) | set(gold_rows["label"]))
    class_index = pd.Index(classes)
    certainty = None
    if "certainty" in answers.columns:
        certainty = pd.Index(CERTAINTY_LEVELS).get_indexer(answers["certainty"]).astype(np.int64)
    gold_map = dict(
        zip(
            tasks.get_indexer(gold_rows["task"]).tolist(),
            class_index.get_indexer(gold_rows["label"]).tolist(),
            strict=True,
        )
    )
    return EncodedAnswers(
        tasks=tasks,
        workers=workers,
        classes=classes,
        items=item_codes.astype(np.int64),
        worker_codes=worker_codes.astype(np.int64),
        labels=class_index.get_indexer(answers["label"]).astype(np.int64),
        certainty=certainty,
        gold=gold_map,
        trust=_trust_array(trust, workers),
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
    if trust is not None and method != "trust":
        warnings.warn(f"TRUST is only used by --method trust; ignored for {method}", stacklevel=2)
        trust = None
    encoded = encode(answers, gold, trust)
    aggregator = get_method(method, tie_break=_tie_break_code(tie_break, encoded.classes), **params)
    if aggregator.uses_certainty and encoded.certainty is None:
        raise AggregationInputError(
            f"--method {method} needs a 'certainty' column in ANSWERS "
            f"({' / '.join(CERTAINTY_LEVELS)})"
        )
    result = aggregator.fit(
        encoded.items,
        encoded.worker_codes,
        encoded.labels,
        len(encoded.classes),
        n_items=len(encoded.tasks),
        n_workers=len(encoded.workers),
        certainty=encoded.certainty,
        gold=encoded.gold or None,
        trust=encoded.trust,
    )
    return result_frame(result, encoded)


def result_frame(result: AggregationResult, encoded: EncodedAnswers) -> pd.DataFrame:
    is_gold = np.zeros(len(encoded.tasks), dtype=bool)
    is_gold[list(encoded.gold)] = True
    frame = pd.DataFrame(
        {
            "task": encoded.tasks.astype(str),
            "label": np.asarray(encoded.classes, dtype=object)[result.labels],
            "confidence": result.confidence,
            "n_answers": np.bincount(encoded.items, minlength=len(encoded.tasks)),
            "gold": is_gold,
        }
    )
    probas = pd.DataFrame(result.proba, columns=[f"p_{c}" for c in encoded.classes])
    return pd.concat([frame, probas], axis=1)


def _read_csv(path: str | Path, required: tuple[str, ...], role: str) -> pd.DataFrame:
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise AggregationInputError(f"{role} file {str(path)!r} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        header = ",".join(required)
        raise AggregationInputError(f"{name} is empty; expected a header {header}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AggregationInputError(f"{name} is not a readable CSV: {first_line}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = ", ".join(frame.columns) or "none"
        raise AggregationInputError(
            f"{name} is missing column(s) {', '.join(missing)} (found: {found}); "
            f"{role} needs {','.join(required)}"
        )
    if frame.empty:
        raise AggregationInputError(f"{name} has a header but no rows")
    for column in required:
        values = frame[column].str.strip()
        empty = values == ""
        if empty.any():
            line = int(np.flatnonzero(empty.to_numpy())[0]) + 2
            raise AggregationInputError(f"{name} line {line}: empty {column!r}")
        frame[column] = values
    return frame


def _normalise_certainty(column: pd.Series, name: str) -> pd.Series:
    values = column.str.strip().str.lower().replace(_CERTAINTY_ALIASES)
    bad = ~values.isin(CERTAINTY_LEVELS)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise AggregationInputError(
            f"{name} line {row + 2}: certainty {column.iloc[row]!r} is not one of "
            f"{', '.join(CERTAINTY_LEVELS)}"
        )
    return values


def _answered_gold(gold: pd.DataFrame | None, tasks: pd.Index) -> pd.DataFrame:
    if gold is None:
        return pd.DataFrame({"task": [], "label": []}, dtype=str)
    return gold.loc[gold["task"].isin(tasks), ["task", "label"]]


def _trust_array(trust: pd.DataFrame | None, workers: pd.Index) -> np.ndarray | None:
    if trust is None:
        return None
    by_worker = trust.set_index("worker")["trust"]
    values: np.ndarray = by_worker.reindex(workers).to_numpy(dtype=float)
    missing = np.isnan(values)
    if missing.all():
        raise AggregationInputError("TRUST lists none of the workers in ANSWERS")
    if missing.any():
        fill = float(np.median(values[~missing]))
        warnings.warn(
            f"TRUST has no row for {int(missing.sum())} worker(s) "
            f"(first: {workers[int(np.flatnonzero(missing)[0])]!r}); gave them the median "
            f"trust {fill:.4g}",
            stacklevel=3,
        )
        values[missing] = fill
    return values


def _tie_break_code(tie_break: str | None, classes: list[str]) -> int | None:
    if tie_break is None:
        return None
    if tie_break not in classes:
        raise AggregationInputError(
            f"tie-break label {tie_break!r} is not one of the classes: {', '.join(classes)}"
        )
    return classes.index(tie_break)
