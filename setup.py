"""Build hook: the recipe folders travel inside the wheel without moving in the repository.

``configs/``, ``ds_configs/`` and ``tune/spaces/`` stay at the top of the repository (the commands and the docs
name them there). Building a wheel copies them to ``scaleprompt/packaged/`` under the same relative paths, where
:mod:`scaleprompt.recipes` finds them through importlib.resources (``--config provp_ref/base2new`` from anywhere).
An editable install copies nothing: the resolver reads the repository's own folders. Everything else about the
build is in pyproject.toml; MANIFEST.in puts the folders in an sdist.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# every file of these folders, at the same path under TARGET (the folders of scaleprompt.recipes.KINDS)
SHIPPED = ("configs", "ds_configs", "tune/spaces")
TARGET = "scaleprompt/packaged"  # scaleprompt.recipes.PACKAGED


def _skipped(file: Path, folder: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in file.relative_to(folder).parts)


class BuildPyWithRecipes(build_py):
    """``build_py`` + a copy of the recipe folders into the build tree (a fresh copy: no recipe deleted from the
    repository survives in a reused ``build/``)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # (the resolver reads the repository's folders)
            return
        target = Path(self.build_lib, TARGET)
        shutil.rmtree(target, ignore_errors=True)
        for folder in SHIPPED:
            source = ROOT / folder
            files = [f for f in sorted(source.rglob("*")) if f.is_file() and not _skipped(f, source)]
            if not files:
                raise SystemExit(f"setup.py: no recipe files under {source} (an sdist without MANIFEST.in?)")
            for file in files:
                out = target / folder / file.relative_to(source)
                self.mkpath(str(out.parent))
                self.copy_file(str(file), str(out))


setup(cmdclass={"build_py": BuildPyWithRecipes})
