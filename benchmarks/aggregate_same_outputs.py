"""Check that ``cxrlabel aggregate`` writes the same results as a baseline tree (issue 20).

For speed work on the aggregation path: on every shared crowd set, run this tree's and the
baseline's ``cxrlabel aggregate ANSWERS.csv`` with ``-m ds``, ``-m ds --gold GOLD.csv``,
``-m glad`` and ``-m mv`` (fresh processes, the installed console script with ``PYTHONPATH`` =
each tree's ``src``) and compare the two OUT.csv files: same header and rows, every column
but the probabilities equal (labels included), the probabilities (``confidence``, ``p_*``)
within ``--tolerance``. Prints one line per difference and a summary; exits 1 if any.

    PYTHONPATH=src .venv/bin/python benchmarks/aggregate_same_outputs.py --baseline-src BASE/src

(BASE from ``git archive COMMIT src | tar -x -C BASE``.)
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CROWD = Path(os.environ.get("CXRLABEL_SHARED_DATA", "/work/shared/data")) / "crowd"
RUNS = {"ds": ["-m", "ds"], "ds+gold": ["-m", "ds", "--gold"], "glad": ["-m", "glad"], "mv": []}


def run(src: Path, answers: Path, options: list[str], out: Path) -> None:
    script = shutil.which("cxrlabel", path=str(Path(sys.executable).parent))
    if script is None:
        raise SystemExit("the cxrlabel console script is not installed next to this python")
    if options[-1:] == ["--gold"]:
        options = [*options, str(answers.parent / "gold.csv")]
    command = [script, "aggregate", str(answers), *options, "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")


def differences(ours: Path, theirs: Path, tolerance: float) -> tuple[list[str], float]:
    """What differs between two OUT.csv files, and the largest probability difference."""
    rows_ours = list(csv.reader(ours.open(newline="")))
    rows_theirs = list(csv.reader(theirs.open(newline="")))
    if rows_ours[0] != rows_theirs[0] or len(rows_ours) != len(rows_theirs):
        return ["header or row count"], 0.0
    header = rows_ours[0]
    numeric = [i for i, name in enumerate(header) if name == "confidence" or name[:2] == "p_"]
    exact = [i for i in range(len(header)) if i not in numeric]
    found: list[str] = []
    worst = 0.0
    for row_ours, row_theirs in zip(rows_ours[1:], rows_theirs[1:], strict=True):
        if [row_ours[i] for i in exact] != [row_theirs[i] for i in exact]:
            found.append(f"task {row_theirs[0]}: {row_theirs} -> {row_ours}")
            continue
        worst = max([worst, *(abs(float(row_ours[i]) - float(row_theirs[i])) for i in numeric)])
    if worst > tolerance:
        found.append(f"probabilities differ by {worst:.3g}")
    return found, worst


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--crowd", type=Path, default=CROWD)
    args = parser.parse_args(argv)
    sets = sorted(path.parent for path in args.crowd.glob("*/answers.csv"))
    n_compared = n_identical = 0
    worst = 0.0
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = Path(tmp) / "ours.csv", Path(tmp) / "theirs.csv"
        for folder in sets:
            for name, options in RUNS.items():
                run(REPO / "src", folder / "answers.csv", options, ours)
                run(args.baseline_src, folder / "answers.csv", options, theirs)
                found, difference = differences(ours, theirs, args.tolerance)
                n_compared += 1
                n_identical += ours.read_bytes() == theirs.read_bytes()
                worst = max(worst, difference)
                problems += [f"{folder.name} {name}: {line}" for line in found[:3]]
    print(*problems, sep="\n")
    print(
        f"{n_compared} OUT.csv files ({len(sets)} sets x {', '.join(RUNS)}): "
        f"{n_identical} byte-identical, largest probability difference {worst:.3g}, "
        f"{len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
