"""The suite's own scheduling (tests/conftest.py): under `-n 2` each file's tests run on one worker (module-scoped
shared runs made once) and the files that start Ray share one group. pytest 9 silently ignored xdist's own
`xdist_group` marks, so this is checked on a real xdist run, not on the marks."""

from __future__ import annotations

import collections
import re
import subprocess
import sys

import pytest
from engine_utils import ROOT

from conftest import group_of


def test_the_ray_files_share_a_group_and_every_other_file_is_its_own():
    assert group_of("tests/test_search.py::test_x[a]") == group_of("tests/test_trackers.py::test_y") == "ray"
    assert group_of("tests/test_two_nodes.py::test_z") == "test_two_nodes.py"
    assert group_of("tests/test_images.py::test_a") == "test_images.py"


@pytest.mark.slow  # (a pytest run with two xdist workers: seconds)
def test_each_file_runs_on_one_xdist_worker():
    files = [
        "tests/test_layers.py",
        "tests/test_published.py",
        "tests/test_protocols.py",
    ]  # (light ones: seconds)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-v", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    workers = collections.defaultdict(set)
    for worker, path in re.findall(r"^\[(gw\d)\].*? PASSED (tests/[\w.]+)::", done.stdout, re.MULTILINE):
        workers[path].add(worker)
    assert set(workers) == set(files), done.stdout[-3000:]
    assert all(len(w) == 1 for w in workers.values()), dict(workers)
