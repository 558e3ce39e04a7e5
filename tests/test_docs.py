"""The documentation site: every public name has an API entry, and the strict build passes."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import npu_pipeline

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "api.md"
# A mkdocstrings entry is a line `::: identifier` (its options, if any, follow indented).
ENTRY = re.compile(r"^:::\s+(\S+)\s*$", re.MULTILINE)
DOCS_TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def api_entries() -> list[str]:
    """The identifiers of the `:::` entries of docs/api.md, in page order."""
    return ENTRY.findall(API_PAGE.read_text(encoding="utf-8"))


def test_every_public_name_has_one_api_entry() -> None:
    entries = api_entries()
    expected = {f"npu_pipeline.{name}" for name in npu_pipeline.__all__}
    missing = sorted(expected - set(entries))
    assert not missing, f"add a `::: <name>` entry to docs/api.md for: {missing}"
    repeated = sorted({entry for entry in entries if entries.count(entry) > 1})
    assert not repeated, f"docs/api.md lists these more than once: {repeated}"


def test_entry_pattern_reads_the_page_format() -> None:
    # The pattern above is what makes the first test able to fail: check that it finds an
    # entry written the way the page writes them, and ignores the same text mid-line.
    text = "## Version\n\n::: npu_pipeline.__version__\n\nsee `::: npu_pipeline.Plan` above\n"
    assert ENTRY.findall(text) == ["npu_pipeline.__version__"]


def _missing_docs_tools() -> list[str]:
    missing = []
    for module in DOCS_TOOLS:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a dotted name whose parent package is absent
            found = False
        if not found:
            missing.append(module)
    return missing


@pytest.mark.skipif(
    bool(_missing_docs_tools()),
    reason=f'docs tools not installed ({", ".join(_missing_docs_tools())}): pip install ".[docs]"',
)
def test_strict_docs_build_passes_and_renders_every_entry(tmp_path: Path) -> None:
    site = tmp_path / "site"
    # The build is what a user runs: without the test suite's environment overrides.
    env = {k: v for k, v in os.environ.items() if k != "NPU_PIPELINE_CALIBRATION"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml")]
    result = subprocess.run(
        [*command, "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # An entry can build without rendering anything (mkdocstrings skips an object it has
    # nothing to say about); every public name must have its own anchor on the page.
    page = (site / "api" / "index.html").read_text(encoding="utf-8")
    unrendered = [name for name in npu_pipeline.__all__ if f'id="npu_pipeline.{name}"' not in page]
    assert not unrendered, f"docs/api.md entries that rendered nothing: {unrendered}"
