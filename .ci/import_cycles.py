"""Fail on any import cycle between our modules, including imports inside function bodies.

grimp (import-linter's graph library) reads every import statement of every module,
wherever it sits; imports under `if TYPE_CHECKING:` are left out (they never run).
Each strongly connected component of more than one module is a cycle.

KNOWN lists the cycles that exist today and are being removed; a known cycle that is
gone also fails this check, so the list only ever shrinks.

    .venv/bin/python .ci/import_cycles.py
"""

from __future__ import annotations

import sys

import grimp

PACKAGES = ("itsproxy.proxy", "itsproxy.strategies")

# Cycles tolerated while being removed (none now: keep it that way).
KNOWN: list[set[str]] = []


def cycles(graph: grimp.ImportGraph) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph.find_modules_directly_imported_by(module)):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def chain(graph: grimp.ImportGraph, component: set[str]) -> str:
    """One concrete loop through the component, for the error message."""
    start = min(component)
    for other in sorted(graph.find_modules_directly_imported_by(start) & component):
        back = graph.find_shortest_chain(importer=other, imported=start)
        if back:
            return " -> ".join((start, *back))
    return ", ".join(sorted(component))


def main() -> int:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None, exclude_type_checking_imports=True)
    found = cycles(graph)
    new = [c for c in found if c not in KNOWN]
    gone = [c for c in KNOWN if c not in found]
    for component in new:
        print(f"import cycle: {chain(graph, component)}", file=sys.stderr)
    for component in gone:
        print(f"known cycle no longer exists, remove it from KNOWN: {sorted(component)}", file=sys.stderr)
    if new or gone:
        return 1
    print(f"no import cycles among {len(graph.modules)} modules ({len(KNOWN)} known, being removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
