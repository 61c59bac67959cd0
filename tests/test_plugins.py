"""Plug-ins without forking: register_method / register_dataset in a process, and an installed package's entry
points (``scaleprompt.methods``, ``scaleprompt.datasets``) seen by every process. The example plug-in
(examples/plugin, installed by pip: the ``plugin_site`` fixture) is also trained by a 2-worker Ray trial
(tests/test_search.py, the dashboard sweep) and by a 2-rank deepspeed launch (tests/test_eval.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_utils import ROOT, env

from scaleprompt.config import ConfigError
from scaleprompt.data import datasets
from scaleprompt.data.datasets import DatasetError
from scaleprompt.methods import registry


@pytest.fixture
def fresh_registries(monkeypatch):
    """The registries as a new process has them: built-ins only, entry points not loaded yet."""
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    monkeypatch.setattr(registry, "_plugins", None)
    monkeypatch.setattr(datasets, "DATASETS", dict(datasets.DATASETS))
    monkeypatch.setattr(datasets, "_plugins", None)


def fake_distribution(site: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """An installed distribution ``name`` in the folder ``site``: its dist-info (METADATA, entry_points.txt), as
    pip writes it, and the ``modules`` (file name -> source)."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    for file, source in modules.items():
        (site / file).write_text(source)


@pytest.mark.slow  # (quick-loop budget: the plug-in's pip install)
def test_the_installed_plugin_registers_its_method_and_dataset_in_this_process(
    plugin_site, fresh_registries, monkeypatch, backbone2, images
):
    monkeypatch.syspath_prepend(str(plugin_site))
    assert "vpt_shallow" in registry.list_methods() and "Swatches" in datasets.list_datasets()
    assert datasets.get_dataset("swatches").name == "Swatches"
    # the plug-in's method is a method like the built-in ones: VPT-shallow = VPT-deep with prompts at block 0 only
    shallow = registry.build("vpt_shallow", backbone2, ["red", "green", "blue"], n_ctx=3)
    deep = registry.build("vpt_deep", backbone2, ["red", "green", "blue"], n_ctx=3, depth=1)
    with torch.no_grad():
        deep.prompts.copy_(shallow.prompts)
    torch.testing.assert_close(shallow.logits(images), deep.logits(images), rtol=0, atol=0)
    assert [n for n, _ in shallow.named_parameters() if _.requires_grad] == ["prompts"]
    with pytest.raises(ConfigError, match="n_ctx"):
        registry.make_config("vpt_shallow", n_ctx=0)


def test_broken_and_clashing_plugins_are_named_and_the_others_still_load(
    tmp_path, fresh_registries, monkeypatch, caplog
):
    fake_distribution(
        tmp_path,
        "broken-plugin",
        "[scaleprompt.methods]\nghost = no_such_module:Ghost\ncoop2 = clash_module:Clash\n"
        "[scaleprompt.datasets]\nnot_a_spec = clash_module:NOT_A_SPEC\n",
        {
            "clash_module.py": "from scaleprompt.methods.coop import CoOp\n\n\nclass Clash(CoOp):\n    pass\n\n\n"
            "NOT_A_SPEC = 3\n"
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level("WARNING", logger="scaleprompt.plugins"):
        assert "coop" in registry.list_methods() and "FashionMNIST" in datasets.list_datasets()
    said = [r.getMessage() for r in caplog.records]
    assert any("ghost = no_such_module:Ghost (broken-plugin 1.0) could not be loaded" in m for m in said), (
        said
    )
    assert any("coop2 = clash_module:Clash" in m and "'coop' is already registered" in m for m in said), said
    assert any("not_a_spec" in m and "names a int, not a DatasetSpec" in m for m in said), said
    assert registry.method_class("coop").__module__ == "scaleprompt.methods.coop"  # (the built-in stays)
    with pytest.raises(
        ConfigError,
        match=r"unknown method .ghost.*plug-ins that failed to load: .*ghost = no_such_module:Ghost",
    ):
        registry.method_class("ghost")
    with pytest.raises(DatasetError, match=r"unknown dataset 'x'.*failed to load: not_a_spec = clash_module"):
        datasets.get_dataset("x")


def test_register_method_checks_what_it_registers(fresh_registries):
    from scaleprompt.methods.coop import CoOp

    with pytest.raises(TypeError, match="not a PromptMethod subclass"):
        registry.register_method(int)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'coop' is already registered"):
        registry.register_method(type("Other", (CoOp,), {}))
    mine = type("Mine", (CoOp,), {"name": "my_coop"})
    assert registry.register_method(mine) is mine and registry.method_class("my_coop") is mine
    assert registry.register_method(mine) is mine  # (the same class again: nothing changes)


@pytest.mark.slow  # (quick-loop budget: the plug-in's pip install)
def test_the_command_line_lists_the_installed_plugins(plugin_site, tmp_path):
    code = "from scaleprompt.cli import main; main(['methods']); main(['datasets'])"
    run_env = {**env(tmp_path), "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugin_site)])}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith("vpt_shallow") and "VPT-shallow" in line for line in lines), lines
    assert any(line.split()[:1] == ["n_ctx"] for line in lines)
    assert any(line.startswith("Swatches") and "swatches" in line for line in lines), lines
