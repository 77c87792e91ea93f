"""Whole-process time of ``cxrlabel aggregate -m ds`` against a crowd-kit process (issue 20).

Each side is a fresh Python process started from the shell, timed from launch to exit, so
interpreter start-up, imports, reading the CSV, the fit and writing the result all count:

* ours: ``cxrlabel aggregate ANSWERS.csv -m ds -o OUT.csv`` (the installed console script,
  with ``PYTHONPATH`` = this tree's ``src``);
* crowd-kit: ``python -c`` that reads the same CSV with pandas (all columns as strings, the
  last of repeated (task, worker) answers kept, as ours does), runs crowd-kit's
  ``DawidSkene().fit_predict`` and writes the labels to a CSV.

The commands alternate (ours, [baseline,] crowd-kit, ours, ...) ``--repeat`` times per file,
so load on a shared machine hits all alike; the table shows the median and minimum wall time
and crowd-kit's median over each of ours. Default files: four shared crowd sets from 1,700 to
217,000 answers.

    PYTHONPATH=src .venv/bin/python benchmarks/aggregate_process.py [--repeat 5] [FILE ...]

``--baseline-src OTHER/src`` adds another checkout's ``cxrlabel`` (e.g. a baseline commit
extracted with ``git archive COMMIT src | tar -x -C DIR``) to the same rotation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CROWD = Path(os.environ.get("CXRLABEL_SHARED_DATA", "/work/shared/data")) / "crowd"
DEFAULT_SETS = (
    "act_cf_weather_sentiment",
    "zheng_d_sentiment",
    "zheng_s4_relevance",
    "crowdscale2013_fact_eval",
)

CROWDKIT = """
import sys
import pandas as pd
from crowdkit.aggregation import DawidSkene
answers = pd.read_csv(sys.argv[1], dtype=str, keep_default_na=False)
answers = answers.drop_duplicates(["task", "worker"], keep="last")
labels = DawidSkene().fit_predict(answers[["task", "worker", "label"]])
labels.to_csv(sys.argv[2])
"""


def cxrlabel_command(answers: Path, out: Path) -> list[str]:
    script = shutil.which("cxrlabel", path=str(Path(sys.executable).parent))
    if script is None:
        raise SystemExit("the cxrlabel console script is not installed next to this python")
    return [script, "aggregate", str(answers), "-m", "ds", "-o", str(out)]


def crowdkit_command(answers: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", CROWDKIT, str(answers), str(out)]


def wall_time(command: list[str], src: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{proc.stderr[-2000:]}")
    return seconds


def answer_count(answers: Path) -> int:
    with answers.open() as handle:
        return sum(1 for _ in handle) - 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--baseline-src", type=Path, help="another checkout's src, timed in the same rotation"
    )
    args = parser.parse_args(argv)
    files = args.files or [CROWD / name / "answers.csv" for name in DEFAULT_SETS]
    trees = {"ours": REPO / "src"}
    if args.baseline_src:
        trees["baseline"] = args.baseline_src
    headers = [f"{name} median / min s" for name in [*trees, "crowd-kit"]]
    ratios = [f"crowd-kit / {name}" for name in trees]
    print("| answers file | answers | " + " | ".join(headers + ratios) + " |")
    print("| --- | ---: | " + " | ".join(["---:"] * (len(headers) + len(ratios))) + " |")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.csv"
        for answers in files:
            times: dict[str, list[float]] = {name: [] for name in [*trees, "crowd-kit"]}
            for _ in range(args.repeat):
                for name, src in trees.items():
                    times[name].append(wall_time(cxrlabel_command(answers, out), src))
                times["crowd-kit"].append(wall_time(crowdkit_command(answers, out), REPO / "src"))
            medians = {name: statistics.median(t) for name, t in times.items()}
            cells = [f"{medians[n]:.2f} / {min(t):.2f}" for n, t in times.items()]
            cells += [f"{medians['crowd-kit'] / medians[n]:.1f}x" for n in trees]
            row = [answers.parent.name, f"{answer_count(answers):,}", *cells]
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
