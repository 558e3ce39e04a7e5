"""The wheel holds every package of the source tree (.ci/run installs it non-editable)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_wheel():
    # tomllib is 3.11+ and the project supports 3.10: the one line is read as a list literal.
    line = re.search(r"^packages = (\[.*\])$", (ROOT / "pyproject.toml").read_text(), re.M)
    listed = set(ast.literal_eval(line.group(1)))
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "npu_pipeline").rglob("__init__.py")
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert "npu_pipeline.kernels" in listed
