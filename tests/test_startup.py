"""Start-up: what only describes methods (``import scaleprompt.methods``, ``scaleprompt methods``) does not import
open_clip or torchvision (~1.5 s of a ~3 s start); open_clip still knows scaleprompt's models whoever imports it.

Behaviour, not timing: each check runs a fresh interpreter and reads its ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("open_clip", "torchvision")
OWN_MODELS = ("sp-tiny-vit", "sp-tiny-vit-12", "sp-micro-clip")


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (the repository first on the path); its stdout."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


_HEAVY_LOADED = f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"


@pytest.mark.parametrize(  # (``import scaleprompt.methods`` alone: the first line of the last case)
    "code",
    [
        "import scaleprompt.backbone, scaleprompt.encoders, scaleprompt.methods.prompts",
        "from scaleprompt.methods import METHODS, make_config; [make_config(n) for n in METHODS]",
    ],
)
@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_describing_methods_imports_neither_open_clip_nor_torchvision(code):
    assert json.loads(_python(f"import json, sys\n{code}\n{_HEAVY_LOADED}")) == []


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_scaleprompt_methods_lists_every_method_and_field_without_open_clip():
    """The command's whole output (on stderr, through logging), then what it imported."""
    code = (
        "import contextlib, io, json, sys\n"
        "from scaleprompt.cli import main\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        "    code = main(['methods'])\n"
        "print(json.dumps([code, err.getvalue()]))\n"
        f"{_HEAVY_LOADED}"
    )
    first, loaded = _python(code).splitlines()
    code, listing = json.loads(first)
    assert code == 0 and json.loads(loaded) == []
    from scaleprompt.methods import METHODS

    lines = listing.splitlines()
    heads = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert heads == list(METHODS)
    fields = {line.split("=")[0].strip() for line in lines if line.startswith(" ")}
    for cls in METHODS.values():
        for field, default in cls.describe_config().items():
            assert field in fields
            assert any(
                line.split("=")[0].strip() == field and line.endswith(f"= {default!r}") for line in lines
            )


COMMAND_STACK = ("torch", "numpy", "omegaconf", "open_clip", "torchvision", "deepspeed", "ray", "matplotlib")


def test_scaleprompt_help_lists_every_command_and_imports_none_of_the_stack():
    """The whole parser (every command's, sub-parsers included) is built for any ``scaleprompt ...``: it imports
    nothing of what running a command needs, and ``--help`` lists each command with its help line."""
    code = (
        "import json, sys\n"
        "from scaleprompt.cli import build_parser\n"
        "print(json.dumps(build_parser().format_help()))\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({COMMAND_STACK!r}))))"
    )
    text, loaded = _python(code).splitlines()
    assert json.loads(loaded) == []
    listing = "".join(json.loads(text).split())  # (argparse wraps the help lines, also at hyphens)
    from scaleprompt.commands import COMMANDS

    for command in COMMANDS:
        assert command.NAME + "".join(command.HELP.split()) in listing, command.NAME


def _imported(importtime_log: str) -> set[str]:
    """The top-level names of the modules a ``python -X importtime`` run imported (its stderr)."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in importtime_log.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.slow
def test_the_launched_files_need_no_path_edits_and_shadow_nothing(tmp_path):
    """``python scaleprompt/train.py`` puts ``scaleprompt/`` first on ``sys.path``: ``scaleprompt`` still comes from
    the installed package, and no module of that folder is imported under a top-level name (run up to the data,
    with torch, DeepSpeed and open_clip imported). ``python -m scaleprompt.train`` is the same command."""
    for shim in ("scaleprompt/train.py", "scaleprompt/evaluate.py", "tune/ablation.py"):
        text = (ROOT / shim).read_text()
        assert "sys.path." not in text and "sys.path[" not in text, shim
    missing = tmp_path / "no-such-folder"
    out = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "scaleprompt/train.py",
            "model.name=sp-tiny-vit",
            "model.pretrained=null",
            f"data.dataset=folder:{missing}",
            f"train.output_dir={tmp_path / 'out'}",
            "train.report_to=none",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert out.returncode == 2 and errors[-1] == f"train.py: error: dataset folder not found: {missing}", (
        errors
    )
    imported = _imported(out.stderr)
    assert {"torch", "deepspeed", "open_clip"} <= imported
    folder = ROOT / "scaleprompt"
    ours = {p.stem for p in folder.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert not imported & ours, f"imported as top-level modules from {folder}: {sorted(imported & ours)}"
    for module, usage in (
        ("scaleprompt.train", "usage: train.py "),
        ("scaleprompt.evaluate", "usage: evaluate.py "),
    ):
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and done.stdout.startswith(usage), done.stderr[-2000:]


KNOWN = (
    "open_clip = import_open_clip()\n"
    f"print(json.dumps([n in open_clip.list_models() for n in {OWN_MODELS!r}]))\n"
    "print(open_clip.get_model_config('sp-micro-clip')['text_cfg']['context_length'])"
)


def _knows_own_models(lines: list[str]) -> bool:
    known, context = lines
    return json.loads(known) == [True] * len(OWN_MODELS) and int(context) > 0


@pytest.mark.slow
def test_open_clip_knows_scaleprompts_models_when_imported_first():
    """``import_open_clip`` hands open_clip the registered configs when open_clip was imported before
    scaleprompt.backbone (imported after it: the next test)."""
    code = f"import json, open_clip\nfrom scaleprompt.backbone import import_open_clip\n{KNOWN}"
    assert _knows_own_models(_python(code).splitlines())


@pytest.mark.slow
def test_a_model_registered_before_open_clip_is_imported_loads():
    """A model registered before open_clip is imported loads; open_clip, imported after scaleprompt.backbone,
    knows scaleprompt's models."""
    code = (
        "import json, sys\n"
        "from scaleprompt.backbone import import_open_clip, load_clip, register_model, MODEL_CONFIG_DIR\n"
        "import shutil, tempfile, pathlib\n"
        "path = pathlib.Path(tempfile.mkdtemp()) / 'my-startup-clip.json'\n"
        "shutil.copy(MODEL_CONFIG_DIR / 'sp-tiny-vit.json', path)\n"
        "register_model('my-startup-clip', path)\n"
        "assert 'open_clip' not in sys.modules\n"
        "print(load_clip('my-startup-clip').info.vision_layers)\n"
        f"{KNOWN}"
    )
    layers, *known = _python(code).splitlines()
    assert layers == "2" and _knows_own_models(known)


def test_a_config_open_clip_cannot_use_is_an_error_at_registration(tmp_path):
    from scaleprompt.backbone import BackboneError, register_model

    bad = tmp_path / "not-json.json"
    bad.write_text("{")
    with pytest.raises(BackboneError, match="cannot read config"):
        register_model("not-json", bad)
    partial = tmp_path / "no-towers.json"
    partial.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(BackboneError, match="lacks vision_cfg, text_cfg"):
        register_model("no-towers", partial)
