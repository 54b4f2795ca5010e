"""The docs hold together: README.md stays short, and every relative link in it and in docs/
reaches a file of the repository (and, with a #fragment, a heading of that file).

Links are Markdown's inline ones, `[text](target)`, outside fenced code blocks. A heading's
anchor is made as GitHub makes it: lower case, punctuation dropped, spaces as hyphens, a
repeated heading numbered (`-1`, `-2`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = sorted(
    [README, *(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "README.md"],
    key=lambda path: str(path),
)
README_MAX_LINES = 250

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(path: Path) -> str:
    """The file without its fenced code blocks (a link or heading in them is not one)."""
    return FENCE.sub("", path.read_text())


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in HEADING.findall(prose(path)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        numbered, count = slug, 0
        while numbered in found:
            count += 1
            numbered = f"{slug}-{count}"
        found.add(numbered)
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(path))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_the_readme_stays_under_250_lines() -> None:
    lines = README.read_text().count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move detail into docs/"


def test_the_docs_exist_and_link_somewhere() -> None:
    assert len(DOCS) > 2
    assert relative_links(README), "README.md links into docs/"


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_its_heading(path: Path) -> None:
    broken = []
    for target in relative_links(path):
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.is_relative_to(ROOT) or not linked.exists():
            broken.append(f"{target}: no such file in the repository")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading #{fragment} in {linked.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_doc_points_outside_the_repository(path: Path) -> None:
    text = path.read_text()
    assert "DESIGN.md" not in text
    assert "../shared" not in text


def test_no_source_file_points_outside_the_repository() -> None:
    """The code's comments name the vendors' references, not copies outside the repo."""
    outside = ("DESIGN.md", "STYLE.md", "../shared", "vendor-apis/")
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for name in outside
        if name in path.read_text()
    ]
    assert not found
