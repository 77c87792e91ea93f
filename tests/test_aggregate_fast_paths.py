"""The fast paths of `cxrlabel aggregate` (issue 20) give what the plain ones give.

Each test runs the fast code and the straightforward code it replaced or stands in for
(``scipy.sparse`` products, NumPy's axis reductions, the ``csv`` module's writer,
de-duplicating the strings before encoding) on the same input and compares.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from cxrlabel.aggregate import DawidSkene, csvfiles, get_method
from cxrlabel.aggregate.base import (
    IncidenceMatrix,
    Judgments,
    column_sum,
    row_max,
    row_sum,
    softmax_rows,
)
from cxrlabel.aggregate.dawid_skene import confusion_counts, e_step


def random_judgments(seed: int, n_classes: int = 3) -> Judgments:
    """Random answers with repeated (item, worker) pairs and items nobody answered."""
    rng = np.random.default_rng(seed)
    n_answers = 500
    return Judgments.build(
        rng.integers(0, 60, n_answers),
        rng.integers(0, 9, n_answers),
        rng.integers(0, n_classes, n_answers),
        n_classes,
        n_items=64,
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_incidence_products_equal_scipy(weighted: bool) -> None:
    judgments = random_judgments(0)
    weights = np.random.default_rng(1).random(judgments.n_answers) if weighted else None
    ours = judgments.answer_incidence(weights)
    theirs = judgments.worker_label_matrix(weights)
    rng = np.random.default_rng(2)
    left = rng.random((theirs.shape[1], 4))
    right = rng.random((theirs.shape[0], 3))
    np.testing.assert_allclose(ours @ left, theirs @ left, rtol=1e-13)
    np.testing.assert_allclose(ours.T @ right, theirs.T @ right, rtol=1e-13)
    assert ours.shape == theirs.shape and ours.T.shape == theirs.T.shape


def test_ds_steps_equal_with_either_answer_matrix() -> None:
    judgments = random_judgments(3)
    rng = np.random.default_rng(4)
    confusion = rng.random((judgments.n_workers, 3, 3)) + 0.1
    confusion /= confusion.sum(axis=2, keepdims=True)
    prior = np.array([0.5, 0.3, 0.2])
    posterior = rng.dirichlet(np.ones(3), judgments.n_items)
    sparse = judgments.worker_label_matrix()
    np.testing.assert_allclose(
        e_step(judgments.answer_incidence(), prior, confusion),
        e_step(sparse, prior, confusion),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        confusion_counts(judgments.answer_incidence().T, posterior, judgments.n_workers),
        confusion_counts(sparse.T.tocsr(), posterior, judgments.n_workers),
        rtol=1e-12,
    )


def test_ds_is_the_same_with_or_without_scipy_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """DS multiplies with scipy.sparse when it is loaded, else with IncidenceMatrix."""
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 3, 300)
    items = np.repeat(np.arange(300), 4)
    workers = rng.integers(0, 12, items.size)
    right = rng.random(items.size) < 0.45 + 0.04 * workers
    labels = np.where(right, truth[items], rng.integers(0, 3, items.size))
    gold = {int(i): int(truth[i]) for i in range(0, 300, 25)}
    judgments = Judgments.build(items, workers, labels, 3, gold=gold)
    assert isinstance(judgments.answer_matrices()[0], sp.csr_matrix)
    with_scipy = DawidSkene().fit_judgments(judgments)
    monkeypatch.delitem(sys.modules, "scipy.sparse")
    assert all(isinstance(m, IncidenceMatrix) for m in judgments.answer_matrices())
    without = DawidSkene().fit_judgments(judgments)
    assert with_scipy.n_iter == without.n_iter > 2
    np.testing.assert_array_equal(with_scipy.labels, without.labels)
    np.testing.assert_allclose(with_scipy.proba, without.proba, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_columns", [1, 3, 40])
def test_row_and_column_reductions_equal_numpy(n_columns: int) -> None:
    matrix = np.random.default_rng(n_columns).normal(size=(50, n_columns))
    np.testing.assert_array_equal(row_max(matrix), matrix.max(axis=1))
    np.testing.assert_allclose(row_sum(matrix), matrix.sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(column_sum(matrix), matrix.sum(axis=0), rtol=1e-13)
    logs = matrix.copy()
    expected = np.exp(matrix - matrix.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax_rows(matrix), expected, rtol=1e-13)
    np.testing.assert_array_equal(matrix, logs)  # not in place unless asked
    np.testing.assert_allclose(softmax_rows(logs, in_place=True), expected, rtol=1e-13)


ANSWERS_WITH_REPEATS = (
    "task,worker,label\n"
    "t1,w1,A\n"  # replaced below: t1 then first appears after t2 among the kept rows
    "t2,w2,B\n"
    "t2,w1,C\n"  # C only here: it is replaced, so C is no longer a class
    "t1,w1,B\n"
    "t3,w3,A\n"
    "t2,w1,A\n"
    "t1,w2,B\n"
)


@pytest.mark.parametrize(
    ("answers", "tasks", "classes"),
    [
        (ANSWERS_WITH_REPEATS, ["t2", "t1", "t3"], ["A", "B"]),
        # the repeated answer is not the first of its task or worker: no renumbering
        ("task,worker,label\nt3,w1,A\nt1,w2,B\nt1,w3,B\nt1,w2,A\n", ["t3", "t1"], ["A", "B"]),
    ],
)
def test_encoding_with_drop_repeated_equals_dropping_first(
    tmp_path: Path, answers: str, tasks: list[str], classes: list[str]
) -> None:
    path = tmp_path / "answers.csv"
    path.write_text(answers)
    gold = {"task": ["t3", "t9"], "label": ["A", "Z"]}  # t9: nobody answered it
    with pytest.warns(csvfiles.DuplicateAnswersWarning) as plain_warning:
        plain = csvfiles.encode(csvfiles.read_answers(path), gold)
    with pytest.warns(csvfiles.DuplicateAnswersWarning) as fast_warning:
        fast = csvfiles.encode(
            csvfiles.read_answer_table(path), gold, drop_repeated=True, source=path.name
        )
    assert str(fast_warning[0].message) == str(plain_warning[0].message)
    assert "repeated (task, worker)" in str(fast_warning[0].message)
    assert fast.classes == plain.classes == classes
    assert fast.tasks.tolist() == plain.tasks.tolist() == tasks
    assert fast.workers.tolist() == plain.workers.tolist()
    for name in ("items", "worker_codes", "labels"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(plain, name))
    assert fast.gold == plain.gold == {tasks.index("t3"): 0}


def test_encoding_without_repeats_is_unchanged_by_drop_repeated(tmp_path: Path) -> None:
    path = tmp_path / "answers.csv"
    path.write_text("task,worker,label,certainty\nb,w1,Y,probably\na,w2,X,\nb,w2,X,cant_tell\n")
    columns = csvfiles.read_answer_table(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = csvfiles.encode(columns, drop_repeated=True)
    plain = csvfiles.encode(columns)
    assert fast.classes == plain.classes == ["X", "Y"]
    for name in ("tasks", "workers", "items", "worker_codes", "labels", "certainty"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(plain, name))


def csv_module_text(path: Path) -> str:
    """OUT.csv as the csv module writes :func:`csvfiles.result_columns` (the old writer)."""
    result, encoded = csvfiles.fit_columns(csvfiles.read_answers(path), "ds")
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csvfiles.result_header(encoded.classes))
    writer.writerows(zip(*csvfiles.result_columns(result, encoded), strict=True))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "answers",
    [
        "task,worker,label\nx1,w1,A\nx1,w2,B\nx2,w1,B\nx2,w2,B\nx3,w3,A\n",
        'task,worker,label\n"x,1",w1,A\n"x,1",w2,B\nx2,w1,B\n',  # a comma: quoted
        'task,worker,label\n"say ""hi""",w1,A\nx2,w1,B\n',  # a quote: doubled
        "task,worker,label\nx1,w1,a b\nx1,w2,B\n",  # a space in a label
    ],
)
def test_writer_equals_the_csv_module(tmp_path: Path, answers: str) -> None:
    path = tmp_path / "answers.csv"
    path.write_text(answers)
    result, encoded = csvfiles.fit_columns(csvfiles.read_answers(path), "ds")
    out = tmp_path / "out.csv"
    csvfiles.write_result(out, result, encoded)
    assert out.read_text() == csv_module_text(path)


def test_writer_equals_the_csv_module_on_a_real_crowd_set(tmp_path: Path) -> None:
    """Many-digit probabilities, hundreds of tasks (skipped without the shared data)."""
    root = Path(os.environ.get("CXRLABEL_SHARED_DATA", "../shared/data"))
    path = root / "crowd" / "act_cf_weather_sentiment" / "answers.csv"
    if not path.is_file():
        pytest.skip(f"shared crowd data not found at {path} (set CXRLABEL_SHARED_DATA)")
    result, encoded = csvfiles.fit_columns(csvfiles.read_answers(path), "ds")
    out = tmp_path / "out.csv"
    csvfiles.write_result(out, result, encoded)
    assert out.read_text() == csv_module_text(path)
    ds = get_method("ds").fit(
        encoded.items, encoded.worker_codes, encoded.labels, len(encoded.classes)
    )
    assert ds.n_iter > 1  # a real EM run, not a one-step fixture
