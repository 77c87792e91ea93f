"""House rules that are about size, not imports (imports: the contracts in pyproject.toml, run by
`lint-imports`): no module in src over 600 lines, migrations aside (issue 22)."""

from __future__ import annotations

from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrlabel"
MAX_LINES = 600
MODULES = sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_600_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, (
        f"{path.relative_to(SRC)} has {lines} lines (> {MAX_LINES}): split it by job"
    )
