"""The stage table as a Mermaid flowchart (`posttrain dag --mermaid`), for the README: drawn from
the table, it cannot go stale."""

from __future__ import annotations

from posttrain.dag.stage import Stage


def mermaid(table: list[Stage]) -> str:
    """An edge wherever a stage reads another stage's output, less the edges a longer path already
    implies (every evaluation reads the prepared data, which the picture shows once)."""
    owner = {out: s.name for s in table for out in s.outs}
    edges = {s.name: [owner[d] for d in dict.fromkeys(s.deps) if d in owner and owner[d] != s.name] for s in table}
    lines = ["flowchart LR"]
    for s in table:
        for parent in edges[s.name]:
            if not any(_reaches(edges, other, parent) for other in edges[s.name] if other != parent):
                lines.append(f"    {parent} --> {s.name}")
    return "\n".join(lines) + "\n"


def _reaches(edges: dict[str, list[str]], start: str, target: str) -> bool:
    """Whether `target` is an ancestor of `start` (edges map a stage to the stages it reads)."""
    todo, seen = [start], set()
    while todo:
        node = todo.pop()
        if node == target:
            return True
        if node not in seen:
            seen.add(node)
            todo += edges[node]
    return False
