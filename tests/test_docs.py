"""The documentation site and the package's metadata files: the docs build (mkdocs, strict: a broken link or
heading anchor fails), every page is built and listed in the nav, CITATION.cff and CHANGELOG.md agree with the one
version source (pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _nav_pages(nav: object) -> list[str]:
    """The page files named anywhere in mkdocs.yml's ``nav`` (``nav``: its parsed value)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def test_the_docs_site_builds_strict_with_every_page(tmp_path):
    site = tmp_path / "site"
    # NO_MKDOCS_2_WARNING: the theme's banner about MkDocs 2.0 (not a build warning) stays out of the output
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
        + ["--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode != 0 and "No module named mkdocs" in result.stderr:
        pytest.fail("mkdocs is not installed: install the dev extras (scripts/setup.sh does)")
    assert result.returncode == 0, result.stdout + result.stderr
    pages = sorted(DOCS.glob("*.md"))
    assert pages
    missing = [
        p.name
        for p in pages
        if not (site / ("index.html" if p.stem == "index" else f"{p.stem}/index.html")).is_file()
    ]
    assert not missing, f"pages not built: {missing}"


def test_the_nav_lists_every_page_and_only_pages_that_exist():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs" and config["strict"] is True
    assert config["theme"]["name"] == "material"
    listed = _nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice in the nav"
    assert not [p for p in listed if not (DOCS / p).is_file()], "the nav names pages that do not exist"
    unlisted = sorted(p.name for p in DOCS.glob("*.md") if p.name not in listed)
    assert not unlisted, f"docs pages missing from mkdocs.yml's nav: {unlisted}"


def test_citation_cff_is_valid_yaml_with_the_project_version():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["title"] == "scaleprompt" and cff["type"] == "software" and cff["license"] == "MIT"
    assert str(cff["version"]) == _version()
    assert cff["message"] and cff["authors"]
    titles = {ref["title"] for ref in cff["references"]}
    assert titles == {
        "Progressive Visual Prompt Learning with Contrastive Feature Re-formation",
        "Unified Vision and Language Prompt Learning",
    }
    for ref in cff["references"]:
        assert ref["type"] and ref["authors"] and isinstance(ref["year"], int), ref["title"]


def test_the_changelog_has_unreleased_and_the_current_version():
    headings = [line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## ")]
    assert headings[0] == "## [Unreleased]"
    assert any(h.startswith(f"## [{_version()}] - ") for h in headings), headings
