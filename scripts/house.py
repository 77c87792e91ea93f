"""Draw cxrlabel as a house: rooms (top-level packages and modules), arrows (imports between
rooms, imports inside functions included) and cycles (rooms that import each other, directly or
round a loop). Prints Markdown; exits 1 when there is a cycle.

    PYTHONPATH=src python scripts/house.py            # this checkout
    PYTHONPATH=/other/checkout/src python scripts/house.py

Uses grimp (installed with import-linter, the `dev` extra), which reads every import statement
of every module, so an import tucked into a function still counts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

ROOT = "cxrlabel"


def room(module: str) -> str:
    """``cxrlabel.quality.store`` -> ``quality``; ``cxrlabel.cli`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(package)"


def arrows(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = room(module), room(imported)
            if a != b and b != "(package)":
                out.setdefault(a, set()).add(b)
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one room (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def lines_per_room(graph: grimp.ImportGraph) -> dict[str, int]:
    import importlib.util

    sizes: dict[str, int] = {}
    for module in graph.modules:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            n = len(Path(spec.origin).read_text(encoding="utf-8").splitlines())
            sizes[room(module)] = sizes.get(room(module), 0) + n
    return sizes


def main() -> int:
    graph = grimp.build_graph(ROOT, cache_dir=None)
    edges = arrows(graph)
    sizes = lines_per_room(graph)
    loops = cycles(edges)
    print("| room | lines | imports (arrows out) |")
    print("| --- | ---: | --- |")
    for name in sorted(sizes):
        print(f"| `{name}` | {sizes[name]:,} | {', '.join(sorted(edges.get(name, ()))) or '-'} |")
    print()
    print(f"rooms: {len(sizes)}, arrows: {sum(len(v) for v in edges.values())}, "
          f"cycles: {len(loops)}")
    for group in loops:
        pairs = [f"{a} -> {b}" for a in group for b in group if b in edges.get(a, ())]
        print(f"- cycle {' / '.join(group)}: {'; '.join(pairs)}")
    return 1 if loops else 0


if __name__ == "__main__":
    sys.exit(main())
