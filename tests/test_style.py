"""The code base stays ruff formatted, ruff clean and mypy clean (part of the test command, so CI enforces it).

The tools and their settings: pyproject.toml ([tool.ruff], [tool.ruff.format], [tool.mypy]); their versions:
constraints.txt. Fix locally with `.venv/bin/ruff format . && .venv/bin/ruff check --fix .`, then `.venv/bin/mypy`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: install the dev extras (scripts/setup.sh does)")
    return path


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_ruff_clean():
    result = _run(_tool("ruff"), "check", str(ROOT))
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_formatted():
    result = _run(_tool("ruff"), "format", "--check", str(ROOT))
    assert result.returncode == 0, result.stdout + result.stderr + "\nrun `.venv/bin/ruff format .` to fix"


def test_mypy_clean():
    """The level (pyproject [tool.mypy]): default checks + check_untyped_defs and more, on scaleprompt/, with
    per-module relaxations. About 15 s from a cold cache on 2 cores, under 1 s warm (.mypy_cache)."""
    result = _run(_tool("mypy"), "--config-file", str(ROOT / "pyproject.toml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_markdown_heading_is_left_empty():
    """Every heading of the docs has something under it (a heading promising a table with nothing below it was a
    user's complaint)."""
    empty = []
    for path in [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "bench").rglob("*.md")),
    ]:
        lines = path.read_text().splitlines()
        in_code = False
        heads = []
        for i, line in enumerate(lines):
            if line.startswith("```"):
                in_code = not in_code
            elif not in_code and line.startswith("#"):
                heads.append(i)
        for start, end in zip(heads, [*heads[1:], len(lines)], strict=True):
            deeper = end < len(lines) and lines[end].split()[0].count("#") > lines[start].split()[0].count(
                "#"
            )
            if not deeper and not any(line.strip() for line in lines[start + 1 : end]):
                empty.append(f"{path.relative_to(ROOT)}:{start + 1} {lines[start]}")
    assert not empty, "headings with nothing under them:\n" + "\n".join(empty)
