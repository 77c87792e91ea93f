"""Start-up time of the ``cxrlabel`` command line, against a baseline commit in the same run.

The baseline is checked out into a temporary git worktree and both trees are timed with the same
interpreter (``PYTHONPATH`` = the tree's ``src``), interleaved, each command ``--repeat`` times;
the table shows the median wall time of a fresh process and how many modules it loaded.

Commands timed: ``--version``, ``--help`` and ``aggregate`` (Dawid-Skene) on a crowd answers
file (default: the shared ``act_zencrowd_in`` set, 20,000 answers).

Usage::

    python benchmarks/cli_startup.py [--baseline ac09999] [--repeat 5] [--answers FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ANSWERS = (
    Path(os.environ.get("CXRLABEL_SHARED_DATA", "/work/shared/data"))
    / "crowd"
    / "act_zencrowd_in"
    / "answers.csv"
)

# Runs the CLI entry point in a fresh interpreter, then reports what it imported.
PROBE = """
import sys
sys.argv = ["cxrlabel", *sys.argv[1:]]
from cxrlabel.cli import main
try:
    main()
except SystemExit:
    pass
heavy = [m for m in ("scipy", "pandas", "sqlalchemy", "fastapi", "torch") if m in sys.modules]
print("PROBE", len(sys.modules), ",".join(heavy) or "-", file=sys.stderr)
"""


def commands(answers: Path, out_dir: Path) -> dict[str, list[str]]:
    return {
        "--version": ["--version"],
        "--help": ["--help"],
        f"aggregate -m ds {answers.parent.name}": [
            "aggregate",
            str(answers),
            "-m",
            "ds",
            "-o",
            str(out_dir / "out.csv"),
        ],
    }


def time_once(src: Path, args: list[str]) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    probe = [line for line in proc.stderr.splitlines() if line.startswith("PROBE ")]
    if not probe:
        raise SystemExit(f"{src}: {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    _, n_modules, heavy = probe[-1].split(" ", 2)
    return seconds, int(n_modules), heavy


def baseline_tree(commit: str, where: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(where), commit],
        check=True,
    )
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="ac09999", help="Commit to compare against.")
    parser.add_argument("--repeat", type=int, default=5, help="Runs per command and tree.")
    parser.add_argument(
        "--answers",
        type=Path,
        default=DEFAULT_ANSWERS,
        help="Crowd answers CSV (task,worker,label) for the aggregate row.",
    )
    args = parser.parse_args()
    if not args.answers.is_file():
        raise SystemExit(f"answers file not found: {args.answers} (pass --answers)")

    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        tmp_dir = Path(tmp)
        base = baseline_tree(args.baseline, tmp_dir / "baseline")
        try:
            trees = {f"baseline {args.baseline}": base / "src", "this tree": REPO / "src"}
            results: dict[tuple[str, str], list[tuple[float, int, str]]] = {}
            for _ in range(args.repeat):
                for label, cmd in commands(args.answers, tmp_dir).items():
                    for tree, src in trees.items():  # interleaved: load drifts hit both alike
                        results.setdefault((label, tree), []).append(time_once(src, cmd))
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False
            )
    print_table(results, list(trees), args.repeat)


def print_table(results: dict, trees: list[str], repeat: int) -> None:
    print(f"cxrlabel start-up, median of {repeat} fresh processes ({sys.executable})")
    print(f"{'command':34} {'tree':18} {'median s':>9} {'min s':>7} {'modules':>8}  heavy imports")
    labels = dict.fromkeys(label for label, _ in results)
    for label in labels:
        medians = {}
        for tree in trees:
            runs = results[(label, tree)]
            times = [t for t, _, _ in runs]
            medians[tree] = statistics.median(times)
            _, n_modules, heavy = runs[-1]
            print(
                f"{label:34} {tree:18} {medians[tree]:9.2f} {min(times):7.2f} "
                f"{n_modules:8d}  {heavy}"
            )
        base, new = (medians[t] for t in trees)
        print(f"{'':34} {'speed-up':18} {base / new:8.1f}x")


if __name__ == "__main__":
    main()
