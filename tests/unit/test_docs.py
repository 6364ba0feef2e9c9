"""The documentation holds together: a short README that describes what exists now, links that
resolve, and no page under docs/ that nothing links to.

Dated findings and figures belong in docs/experiments/ and benchmarks/RESULTS.md; the README
keeps no dates or commit hashes, because they go stale with the next commit.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DOCS_MAP = DOCS / "README.md"
EXPERIMENTS = DOCS / "experiments"
EXPERIMENTS_INDEX = EXPERIMENTS / "README.md"
README_MAX_LINES = 250

DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
# A commit hash as people paste them: 7 to 40 hex digits, with at least one digit and one letter
# (so plain numbers such as 30532122624 and words such as "defaced" do not count).
HEX = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)   # http:, https:, mailto:, ...


def doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def link_targets(page: Path) -> list[str]:
    """The relative link targets of a Markdown page (code blocks and code spans left out)."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not EXTERNAL.match(t) and not t.startswith("#")]


def resolve(page: Path, target: str) -> Path:
    path = target.split("#", 1)[0].split("?", 1)[0]
    return (page.parent / path).resolve()


def linked_pages(page: Path) -> set[Path]:
    return {resolve(page, t) for t in link_targets(page)}


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move reference material to "
        "docs/ (docs/stages/<stage>.md, docs/cluster.md, ...) and findings to docs/experiments/")


def test_readme_has_no_dates_or_commit_hashes():
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        assert not DATE.search(line), (
            f"README.md:{number} has a date ({DATE.search(line).group()}): dated findings go to "
            f"docs/experiments/, figures to benchmarks/RESULTS.md\n  {line}")
        assert not HEX.search(line), (
            f"README.md:{number} has what looks like a commit hash ({HEX.search(line).group()}): "
            f"the README describes the current code\n  {line}")


@pytest.mark.parametrize("page", [README, *doc_pages()], ids=lambda p: rel(p))
def test_relative_links_resolve(page):
    missing = sorted({t for t in link_targets(page) if not resolve(page, t).exists()})
    assert not missing, f"{rel(page)} links to files that do not exist: {missing}"


def test_every_docs_page_is_linked_from_the_readme_or_the_docs_map():
    assert DOCS_MAP.exists(), "docs/README.md, the map of every docs page, is missing"
    linked = linked_pages(README) | linked_pages(DOCS_MAP)
    orphans = [rel(p) for p in doc_pages()
               if p != DOCS_MAP and not p.is_relative_to(EXPERIMENTS) and p.resolve() not in linked]
    assert not orphans, f"pages neither README.md nor docs/README.md links to: {orphans}"


def test_every_experiment_page_is_reachable_from_its_index():
    pages = [p for p in doc_pages() if p.is_relative_to(EXPERIMENTS)]
    assert len(pages) > 1, "docs/experiments/ holds no dated write-ups besides its index"
    assert EXPERIMENTS_INDEX.exists(), "docs/experiments/README.md, the index of the experiments, is missing"
    assert EXPERIMENTS_INDEX.resolve() in linked_pages(README) | linked_pages(DOCS_MAP), (
        "neither README.md nor docs/README.md links to docs/experiments/README.md")
    reached, todo = {EXPERIMENTS_INDEX.resolve()}, [EXPERIMENTS_INDEX]
    while todo:
        for target in linked_pages(todo.pop()):
            if target not in reached and target.suffix == ".md" and target.is_relative_to(EXPERIMENTS.resolve()):
                reached.add(target)
                if target.exists():
                    todo.append(target)
    unreached = [rel(p) for p in pages if p.resolve() not in reached]
    assert not unreached, f"experiment pages docs/experiments/README.md does not lead to: {unreached}"


def test_the_readme_links_the_demo_report_and_every_stage_page():
    linked = linked_pages(README)
    expected = [DOCS / "results" / "demo.md", DOCS / "params.md", DOCS_MAP,
                *(DOCS / "stages" / f"{s}.md" for s in
                  ("base", "demo-data", "data", "sft", "reward", "rl", "distill", "evaluate", "export"))]
    missing = [rel(p) for p in expected if p.resolve() not in linked]
    assert not missing, f"README.md does not link to {missing}"
