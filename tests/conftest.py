"""Shared fixtures: tiny open_clip backbones (no downloads), loopback-only services."""

from __future__ import annotations

import os

# Every service a test starts listens on loopback only (Ray, gloo and the process-group rendezvous are kept on 127.0.0.1).
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
# a DataLoader worker that gives no batch for a minute is stuck (CPython 3.11.7's fork deadlock, gh-112275): the
# loader starts it again (a first batch) or the run fails, instead of a test waiting for its launch timeout
os.environ.setdefault("SCALEPROMPT_LOADER_TIMEOUT", "60")

# The xdist workers share the machine's cores: each gets its share as its thread count, set before torch is
# imported (the OpenMP threads of two workers on 2 cores spin against each other: the quick subset took 66-71 s
# with torch's default, 51-53 s with one thread per worker; AMD EPYC AVX-512, 2026-12-07). Processes the tests
# launch inherit it (engine_utils.env sets 1 for them anyway). One process (`-n 0`): torch's default.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _workers))

# Line + branch coverage of the package in every test process (the xdist controller and each worker), started
# before anything imports scaleprompt: SCALEPROMPT_TEST_COVERAGE=<data file> (README "Tests"; then
# `coverage combine` and `coverage report`). Processes the tests launch (deepspeed ranks, Ray workers) are not measured.
if os.environ.get("SCALEPROMPT_TEST_COVERAGE"):
    import atexit

    import coverage

    _coverage = coverage.Coverage(
        data_file=os.environ["SCALEPROMPT_TEST_COVERAGE"],
        data_suffix=True,
        branch=True,
        source=["scaleprompt"],
    )
    _coverage.start()
    atexit.register(lambda: (_coverage.stop(), _coverage.save()))

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):  # (also if something imported torch before this file)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
from scaleprompt.backbone import load_clip  # noqa: E402

CLASSNAMES = ["cat", "dog", "golden_retriever", "airplane", "sea turtle"]

# The suite runs on 2 pytest-xdist workers (`-n 2 --dist loadgroup --no-loadscope-reorder`, README "Tests").
# Each file's tests stay on ONE worker (its module- and session-scoped runs are made once), and the files that start
# a local Ray cluster with ray.init share one group: their clusters never run side by side (a second ray.init on
# the machine may join the first's cluster). test_two_nodes.py's Ray lives in network namespaces with temp folders
# of its own, and the killed-driver sweep stops only its own cluster, so that file is a group of its own. The
# groups are made by FileGroups below: xdist's own `xdist_group` marks rename node ids, which pytest 9 no longer
# reads (with them every test was its own group).
RAY_FILES = {"test_search.py", "test_trackers.py"}

# The longest groups go out first (longest-processing-time first: the workers then end close together; xdist's own
# order, by number of tests, would start the Ray group, 38 tests and a third of the suite's time, last). Seconds of
# each group in one process (AMD EPYC AVX2, 2 cores, 2026-12-07); a file not listed follows in collection order.
LONGEST_FIRST = {
    "ray": 410,
    "test_reliability.py": 186,
    "test_launch.py": 109,
    "test_signals.py": 101,
    "test_microworld.py": 87,
    "test_two_nodes.py": 85,
    "test_eval.py": 52,
    "test_accumulation.py": 30,
    "test_plan.py": 30,
    "test_zero3.py": 23,
    "test_startup.py": 22,
    "test_findings.py": 20,  # (46 before its pool stopped spawning DataLoader workers; AVX-512 machine)
    "test_remote_shards.py": 12,  # (24 before its two runs moved in-process; AVX-512 machine)
}


def group_of(nodeid: str) -> str:
    """The xdist group of a test: ``ray`` for the files that start Ray, else its file's name."""
    name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return "ray" if name in RAY_FILES else name


@pytest.hookimpl(trylast=True)  # (after pytest's own fixture-scope ordering; every worker sorts alike)
def pytest_collection_modifyitems(config, items):
    # (a stable sort: each file keeps its tests' order; serial runs take the same order)
    items.sort(key=lambda item: -LONGEST_FIRST.get(group_of(item.nodeid), 0))


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup``: the groups of :func:`group_of`, handed out in collection order (longest first)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return FileGroups(config, log)


@pytest.fixture(scope="session")
def backbone12():
    """12-block tiny CLIP (vision width 48, text width 32): every published default depth fits."""
    torch.manual_seed(0)
    return load_clip("sp-tiny-vit-12")


@pytest.fixture(scope="session")
def clip12(backbone12):
    """The open_clip model of ``backbone12``."""
    return backbone12.model


@pytest.fixture(scope="session")
def backbone2():
    """2-block tiny CLIP (vision width 96, text width 64, context 16)."""
    torch.manual_seed(1)
    return load_clip("sp-tiny-vit")


@pytest.fixture(scope="session")
def clip2(backbone2):
    """The open_clip model of ``backbone2``."""
    return backbone2.model


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(123)
    return torch.randn(4, 3, 32, 32, generator=g)


@pytest.fixture
def labels():
    return torch.tensor([0, 1, 2, 4])


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory):
    """The example plug-in package (examples/plugin: the vpt_shallow method, the Swatches dataset) installed by pip
    into a folder of its own, as ``pip install`` puts a package into site-packages (its dist-info carries the entry
    points): put it on PYTHONPATH (or sys.path) and every process sees the plug-ins."""
    site = tmp_path_factory.mktemp("plugin-site")
    # (built from a copy: the build writes build/ and an egg-info beside its sources, and each xdist worker builds)
    source = shutil.copytree(
        Path(__file__).resolve().parents[1] / "examples" / "plugin",
        tmp_path_factory.mktemp("plugin-src") / "plugin",
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--target", str(site), str(source)],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert list(site.glob("scaleprompt_vpt_shallow-*.dist-info/entry_points.txt")), list(site.iterdir())
    return site
