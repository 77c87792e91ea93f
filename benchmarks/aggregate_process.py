"""Whole-process time of ``cxrlabel aggregate -m ds`` against a crowd-kit process (issue 20).

Each side is a fresh Python process started from the shell, timed from launch to exit, so
interpreter start-up, imports, reading the CSV, the fit and writing the result all count:

* ours: ``cxrlabel aggregate ANSWERS.csv -m ds -o OUT.csv`` (the installed console script,
  with ``PYTHONPATH`` = this tree's ``src``);
* crowd-kit: ``python -c`` that reads the same CSV with pandas (all columns as strings, the
  last of repeated (task, worker) answers kept, as ours does), runs crowd-kit's
  ``DawidSkene().fit_predict`` and writes the labels to a CSV.

The two commands alternate (ours, crowd-kit, ours, ...) ``--repeat`` times per file, so load
on a shared machine hits both alike; the table shows the median and minimum wall time and the
ratio of the medians. Default files: four shared crowd sets from 1,700 to 217,000 answers.

    PYTHONPATH=src .venv/bin/python benchmarks/aggregate_process.py [--repeat 5] [FILE ...]
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


def wall_time(command: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
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
    args = parser.parse_args(argv)
    files = args.files or [CROWD / name / "answers.csv" for name in DEFAULT_SETS]
    print("| answers file | answers | ours median / min s | crowd-kit median / min s | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.csv"
        for answers in files:
            ours, theirs = [], []
            for _ in range(args.repeat):
                ours.append(wall_time(cxrlabel_command(answers, out)))
                theirs.append(wall_time(crowdkit_command(answers, out)))
            ratio = statistics.median(theirs) / statistics.median(ours)
            print(
                f"| {answers.parent.name} | {answer_count(answers):,} "
                f"| {statistics.median(ours):.2f} / {min(ours):.2f} "
                f"| {statistics.median(theirs):.2f} / {min(theirs):.2f} | {ratio:.1f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
