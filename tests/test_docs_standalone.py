"""Tracked files stand alone in a user's clone.

No tracked file may point at background files that only existed beside the
repository while it was written, and every docs section a file cites
(``docs/<page>.md#<anchor>``, or a Markdown link ``page.md#anchor``) must
exist as a heading of that page, slugged the same way by GitHub and by mkdocs.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each pattern is assembled from pieces so that this file does not match it.
FORBIDDEN = (
    ("the background facts file", re.compile("NPU_" + "FACTS")),
    ("a line citation of the background facts file", re.compile(r"\bFACTS" + r":\d")),
    ("the background design file", re.compile(r"\bDESIGN" + r"\.md")),
    ("a path beside the repository", re.compile(re.escape("../" + "shared"))),
    ("a path beside the repository", re.compile(re.escape("/work" + "/"))),
    ("a seed path", re.compile(r"\bseed" + "/")),
)

#: ``docs/<page>.md#<anchor>`` anywhere (code comments, sources strings, docs).
DOCS_CITATION = re.compile(r"docs/([\w-]+\.md)#([\w-]+)")
#: A Markdown link with an anchor: ``[text](page.md#anchor)`` or ``[text](#anchor)``.
MARKDOWN_LINK = re.compile(r"\]\(([^()\s#]*?\.md)?#([\w-]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def tracked_files() -> list[Path]:
    """Tracked files of this checkout (skips the test outside a git checkout)."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked files to check")
    if Path(top).resolve() != ROOT:
        pytest.skip(f"{ROOT} is not the top of its git checkout")
    names = [name for name in listed.decode().split("\0") if name]
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def read_text(path: Path) -> str | None:
    """The file as UTF-8 text, or None for a binary file."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def forbidden_references(text: str) -> list[tuple[int, str, str]]:
    """``(line number, what, matched text)`` for every forbidden reference."""
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        for what, pattern in FORBIDDEN:
            for match in pattern.finditer(line):
                hits.append((number, what, match.group(0)))
    return hits


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def mkdocs_slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) gives a heading."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def headings(text: str) -> list[str]:
    """Heading texts of a Markdown page, outside fenced code blocks."""
    found, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            found.append(match.group(2))
    return found


def citations(path: Path, text: str) -> list[tuple[int, Path, str]]:
    """``(line number, cited page, anchor)`` for every docs section ``path`` cites."""
    cited = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in DOCS_CITATION.finditer(line):
            cited.append((number, ROOT / "docs" / match.group(1), match.group(2)))
        if path.suffix == ".md":
            for match in MARKDOWN_LINK.finditer(line):
                page = (path.parent / match.group(1)).resolve() if match.group(1) else path
                cited.append((number, page, match.group(2)))
    return cited


def anchor_problem(page: Path, anchor: str, pages: dict[Path, list[str]]) -> str | None:
    """Why ``page#anchor`` does not resolve on both GitHub and mkdocs, or None if it does."""
    if page not in pages:
        return f"cites {page.relative_to(ROOT)}#{anchor}, but that page is not tracked"
    titles = pages[page]
    if any(github_slug(t) == anchor == mkdocs_slug(t) for t in titles):
        return None
    near = [t for t in titles if anchor in (github_slug(t), mkdocs_slug(t))]
    where = f"{page.relative_to(ROOT)}#{anchor}"
    if near:
        return (
            f"cites {where}: heading {near[0]!r} gets that anchor on only one of GitHub "
            f"({github_slug(near[0])}) and mkdocs ({mkdocs_slug(near[0])})"
        )
    return f"cites {where}, but no heading of that page has that anchor"


def test_no_tracked_file_refers_to_files_outside_the_repository():
    problems = []
    for path in tracked_files():
        text = read_text(path)
        if text is None:
            continue
        for number, what, matched in forbidden_references(text):
            problems.append(f"{path.relative_to(ROOT)}:{number}: {what} ({matched!r})")
    assert not problems, "cite docs/hardware-facts.md or docs/why.md instead:\n" + "\n".join(
        problems
    )


def test_every_cited_docs_section_exists():
    files = tracked_files()
    texts = {path: read_text(path) for path in files}
    pages = {
        path.resolve(): headings(text)
        for path, text in texts.items()
        if path.suffix == ".md" and text is not None
    }
    problems, checked = [], 0
    for path, text in texts.items():
        if text is None:
            continue
        for number, page, anchor in citations(path, text):
            checked += 1
            problem = anchor_problem(page.resolve(), anchor, pages)
            if problem:
                problems.append(f"{path.relative_to(ROOT)}:{number}: {problem}")
    assert checked > 50, f"only {checked} citations found: is the pattern still right?"
    assert not problems, "\n".join(problems)


def test_the_checks_catch_what_they_look_for():
    text = "\n".join(
        [
            "a seeded random generator, seed=5 and random_seed/x are fine",
            "see " + "NPU_" + "FACTS" + ".md",
            "FACTS" + ":83 says so",
            "read " + ".." + "/shared/notes",
            "the " + "seed" + "/000.txt analysis",
            "as " + "DESIGN" + ".md defines it",
        ]
    )
    assert [number for number, _, _ in forbidden_references(text)] == [2, 3, 4, 5, 6]

    assert github_slug("The seed's measurements") == "the-seeds-measurements"
    assert mkdocs_slug("The seed's measurements") == "the-seeds-measurements"
    assert github_slug("Calibration (cpu profile)") == "calibration-cpu-profile"
    # A spaced dash is where the two disagree: such a heading is not citable.
    assert github_slug("A - B") == "a---b" and mkdocs_slug("A - B") == "a-b"

    page = "# Title\n\n```python\n# not a heading\n```\n\n## Runs in flight\n"
    assert headings(page) == ["Title", "Runs in flight"]

    doc = ROOT / "docs" / "x.md"
    pages = {doc: headings(page)}
    assert anchor_problem(doc, "runs-in-flight", pages) is None
    assert "no heading" in anchor_problem(doc, "runs", pages)
    assert "only one of" in anchor_problem(doc, "a---b", {doc: ["A - B"]})
    assert "not tracked" in anchor_problem(ROOT / "docs" / "y.md", "title", pages)

    # Assembled so that the whole-repository check does not read it as a citation.
    cited = citations(doc, "see docs/" + "why.md#a, [b](other.md#b) and [c](#c)")
    assert [(page.name, anchor) for _, page, anchor in cited] == [
        ("why.md", "a"),
        ("other.md", "b"),
        ("x.md", "c"),
    ]
