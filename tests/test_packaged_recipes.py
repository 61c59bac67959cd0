"""Recipes travel with the package: configs/, ds_configs/ and tune/spaces/ resolve by name from anywhere
(scaleprompt/recipes.py), here from the source tree and (slow) from a real wheel built by setup.py's hook."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from scaleprompt.config import ConfigError
from scaleprompt.engine.config import load_ds_config, load_run_config
from scaleprompt.recipes import KINDS, list_recipes, packaged_name, resolve_recipe
from scaleprompt.search.space import load_space

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {kind: ROOT / spec.folder for kind, spec in KINDS.items()}


def repo_names(kind: str) -> dict[str, Path]:
    """The repository's files of one kind by packaged name (folder and suffix dropped)."""
    folder, suffix = FOLDERS[kind], KINDS[kind].suffix
    return {str(p.relative_to(folder))[: -len(suffix)]: p for p in sorted(folder.rglob(f"*{suffix}"))}


def shipped_files() -> list[str]:
    """Every file of the three folders, relative to the repository (what the wheel must carry)."""
    return sorted(
        str(p.relative_to(ROOT))
        for folder in FOLDERS.values()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    )


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory with no configs/ folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


FORMS = [
    ("config", "provp_ref/base2new", "configs/provp_ref/base2new.yaml"),
    ("config", "provp_ref/base2new.yaml", "configs/provp_ref/base2new.yaml"),
    ("config", "configs/provp_ref/base2new.yaml", "configs/provp_ref/base2new.yaml"),
    ("config", "./configs/provp_ref/base2new", "configs/provp_ref/base2new.yaml"),
    ("config", "demo", "configs/demo.yaml"),
    ("config", "microworld/upt.yaml", "configs/microworld/upt.yaml"),
    ("ds", "zero2", "ds_configs/zero2.json"),
    ("ds", "zero2.json", "ds_configs/zero2.json"),
    ("ds", "ds_configs/zero2.json", "ds_configs/zero2.json"),
    ("ds", "zero3_offload", "ds_configs/zero3_offload.json"),
    ("space", "provp_ref", "tune/spaces/provp_ref.yaml"),
    ("space", "provp_ref.yaml", "tune/spaces/provp_ref.yaml"),
    ("space", "tune/spaces/provp_ref.yaml", "tune/spaces/provp_ref.yaml"),
    ("space", "tune/spaces/upt_core", "tune/spaces/upt_core.yaml"),
]


@pytest.mark.parametrize("kind,name,repo_file", FORMS, ids=[f"{k}:{n}" for k, n, _ in FORMS])
def test_name_forms_resolve_to_the_packaged_file(elsewhere, kind, name, repo_file, caplog):
    with caplog.at_level(logging.INFO, logger="scaleprompt.recipes"):
        path = resolve_recipe(name, kind)
    assert path.is_absolute() and path.samefile(ROOT / repo_file)
    assert f"using the packaged file {path}" in caplog.text  # (which file was used is logged)


def test_an_existing_path_wins(elsewhere, caplog):
    local = elsewhere / "configs" / "provp_ref" / "base2new.yaml"
    local.parent.mkdir(parents=True)
    local.write_text("optim:\n  lr: 0.123\n")
    (elsewhere / "zero2.json").write_text('{"zero_optimization": {"stage": 1}}')
    (elsewhere / "provp_ref.yaml").write_text("params:\n  optim.lr: {type: float, low: 0.1, high: 0.2}\n")
    with caplog.at_level(logging.INFO, logger="scaleprompt.recipes"):
        assert resolve_recipe("configs/provp_ref/base2new.yaml", "config") == Path(
            "configs/provp_ref/base2new.yaml"
        )
        assert load_run_config("configs/provp_ref/base2new.yaml").optim.lr == 0.123
        assert load_ds_config("zero2.json")["zero_optimization"]["stage"] == 1
        assert list(load_space("provp_ref.yaml").params) == ["optim.lr"]
    assert "packaged" not in caplog.text
    # a name that is not a path (no such file "provp_ref/base2new", "zero2") is the packaged one
    assert load_run_config("provp_ref/base2new").optim.lr != 0.123
    assert load_ds_config("zero2")["zero_optimization"]["stage"] == 2


def test_loaders_take_names(elsewhere):
    cfg = load_run_config("provp_ref/base2new", ["optim.lr=0.05"])
    assert (cfg.method.name, cfg.eval.setting, cfg.optim.lr) == ("provp_ref", "base2new", 0.05)
    assert load_ds_config("zero3")["zero_optimization"]["stage"] == 3
    space = load_space("provp_ref")
    assert space.name == "provp_ref" and "method.args.depth" in space.params


@pytest.mark.parametrize(
    "kind,name,expected",
    [
        ("config", "configs/provp_ref/base2new.yaml", "provp_ref/base2new"),
        ("config", "./provp_ref/base2new", "provp_ref/base2new"),
        ("config", "configs", "configs"),  # (a bare folder name is a name)
        ("config", "x.json", "x.json"),  # (another kind's suffix stays)
        ("ds", "ds_configs/zero2.json", "zero2"),
        ("space", "tune/spaces/upt.yaml", "upt"),
        ("space", "spaces/upt.yaml", "spaces/upt"),
        ("config", "/abs/configs/demo.yaml", None),  # an absolute path is only a path
        ("config", "../configs/demo.yaml", None),  # so is one going up
        ("config", "", None),
    ],
)
def test_packaged_name(kind, name, expected):
    assert packaged_name(name, kind) == expected


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda: load_run_config("provp_ref/base2nw"),
            "recipe not found: provp_ref/base2nw (no such file, no packaged configs/provp_ref/base2nw.yaml); "
            "did you mean provp_ref/base2new",
        ),
        (
            lambda: load_ds_config("zero4"),
            "--ds: DeepSpeed config not found: zero4 (no such file, no packaged ds_configs/zero4.json); "
            "did you mean zero3",
        ),
        (lambda: load_space("provp_rf"), "search space not found: provp_rf (no such file, no packaged "),
        (
            lambda: load_space("nothing_like_it"),
            "; packaged: methods, provp_ref, provp_ref_core, upt, upt_core",
        ),
        (
            lambda: resolve_recipe("xyzzy", "config"),
            "packaged, listed by scaleprompt.recipes.list_recipes('config')",
        ),
        (
            lambda: load_run_config("/no/such/recipe.yaml"),
            "recipe not found: /no/such/recipe.yaml (no such file)",
        ),
    ],
)
def test_unknown_names_are_one_line_errors_with_suggestions(elsewhere, call, message):
    with pytest.raises(ConfigError) as info:
        call()
    text = str(info.value)
    assert message in text and "\n" not in text


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown recipe kind 'recipe'"):
        resolve_recipe("demo", "recipe")


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_packaged_name_is_the_repository_file(elsewhere, kind):
    files = repo_names(kind)
    assert list_recipes(kind) == sorted(files) and files
    for name, repo_file in files.items():
        assert resolve_recipe(name, kind).read_bytes() == repo_file.read_bytes()


def test_the_documented_names_exist():
    assert {"provp_ref/base2new", "demo", "microworld/provp_ref"} <= set(list_recipes("config"))
    assert {"zero1", "zero2", "zero3", "zero3_offload"} <= set(list_recipes("ds"))
    assert {"provp_ref", "upt", "methods"} <= set(list_recipes("space"))


# Run in a fresh interpreter whose scaleprompt is the installed wheel (PYTHONPATH), from a folder without configs/.
WHEEL_PROBE = textwrap.dedent(
    """
    import hashlib, json, sys
    import scaleprompt
    from scaleprompt.recipes import list_recipes, resolve_recipe
    out = {"package": scaleprompt.__file__, "files": {}}
    for kind in ("config", "ds", "space"):
        paths = {name: resolve_recipe(name, kind) for name in list_recipes(kind)}
        out["files"][kind] = {n: [str(p), hashlib.sha256(p.read_bytes()).hexdigest()] for n, p in paths.items()}
    if sys.argv[1] == "load":
        from scaleprompt.engine.config import load_ds_config, load_run_config
        from scaleprompt.search.space import load_space
        cfg = load_run_config("provp_ref/base2new", ["optim.lr=0.05"])
        out["loaded"] = {
            "config": [cfg.method.name, cfg.eval.setting, cfg.optim.lr],
            "ds": load_ds_config("zero2")["zero_optimization"]["stage"],
            "space": sorted(load_space("provp_ref").params),
            "paths": [str(resolve_recipe(n, k)) for n, k in
                      [("provp_ref/base2new", "config"), ("zero2", "ds"), ("provp_ref", "space")]],
        }
    print(json.dumps(out))
    """
)


def _probe(pythonpath: Path, cwd: Path, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    result = subprocess.run(
        [sys.executable, "-c", WHEEL_PROBE, mode],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def _check_probe(out: dict, inside: Path) -> None:
    """Every packaged name of the install resolved, inside ``inside``, to a file equal in bytes to the repository's
    (the sha256 taken in the probe: a zipped install's extracted copies are gone after it)."""
    for kind in KINDS:
        files = repo_names(kind)
        assert sorted(out["files"][kind]) == sorted(files), kind
        for name, (path, digest) in out["files"][kind].items():
            assert digest == hashlib.sha256(files[name].read_bytes()).hexdigest(), (kind, name)
            where = Path(path)
            assert where.is_relative_to(inside) and not where.is_relative_to(ROOT), (kind, name, path)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_real_wheel_carries_and_resolves_the_recipes(tmp_path):
    """pip builds a wheel of (a copy of) this tree offline, installs it into a throwaway target; a fresh interpreter
    with only that install resolves and loads every kind by name from a folder without configs/. The wheel is also
    importable as a zip: the names resolve to extracted copies."""
    source = tmp_path / "src"  # (a copy: the build writes build/ and *.egg-info, not into the shared tree)
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "bench", "docs"
        ),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    wheels = tmp_path / "wheels"
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)])
    (wheel,) = wheels.glob("scaleprompt-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {f"scaleprompt/packaged/{rel}" for rel in shipped_files()} <= names
    extra = {n for n in names if n.startswith("scaleprompt/packaged/")} - {
        f"scaleprompt/packaged/{rel}" for rel in shipped_files()
    }
    assert not extra, f"stale or unexpected packaged files: {sorted(extra)}"
    # typed for users' type checkers (PEP 561), the license beside the metadata
    assert "scaleprompt/py.typed" in names
    assert any(n.split("/")[0].endswith(".dist-info") and n.endswith("/LICENSE") for n in names), sorted(
        names
    )[-8:]

    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)])
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()

    out = _probe(site, cwd, "load")
    assert Path(out["package"]).is_relative_to(site)  # (not the editable install of the repository)
    _check_probe(out, site / "scaleprompt" / "packaged")
    assert out["loaded"]["config"] == ["provp_ref", "base2new", 0.05]
    assert out["loaded"]["ds"] == 2 and "method.args.depth" in out["loaded"]["space"]
    packaged = site / "scaleprompt" / "packaged"
    assert out["loaded"]["paths"] == [
        str(packaged / "configs/provp_ref/base2new.yaml"),
        str(packaged / "ds_configs/zero2.json"),
        str(packaged / "tune/spaces/provp_ref.yaml"),
    ]

    zipped = _probe(wheel, cwd, "names")  # scaleprompt imported from the .whl itself (zipimport)
    assert Path(zipped["package"]).is_relative_to(wheel)
    _check_probe(zipped, Path(tempfile.gettempdir()))  # (importlib.resources.as_file's copies)
