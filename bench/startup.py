"""Start-up time of the ``scaleprompt`` commands: each command as a whole process, median of N runs.

Commands: ``--help``, ``datasets``, ``methods``, ``inspect PROMPTS``, ``predict PROMPTS`` on 3 images (for predict
also the time to its first record on stdout). ``--base DIR`` also times another checkout (e.g. a ``git worktree``
of an older commit) run with ``PYTHONPATH=DIR``; its runs alternate with this tree's so that machine drift hits
both alike. Every run is ``python -m scaleprompt.cli ...`` with this interpreter; one untimed warm-up run per
command first (warm file cache).

    .venv/bin/python bench/startup.py                                   # this tree, 5 runs each
    git worktree add /tmp/startup_base 3bfbf8b
    .venv/bin/python bench/startup.py --base /tmp/startup_base --runs 5   # before / after table (markdown)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MAKE_PROMPTS = """
import sys, torch
from PIL import Image
from scaleprompt.backbone import load_clip
from scaleprompt.methods import build, save_prompts
torch.manual_seed(0)
backbone = load_clip("sp-tiny-vit", None)
save_prompts(build("coop", backbone, ["red", "green", "blue", "yellow"], n_ctx=4), sys.argv[1])
for i, color in enumerate([(220, 30, 30), (30, 200, 30), (30, 30, 220)]):
    Image.new("RGB", (24 + i, 20), color).save(sys.argv[2 + i])
"""


def timed(argv: list[str], tree: Path) -> tuple[float, float]:
    """Seconds to the process's end and to its first line on stdout (the end when it prints nothing there).
    ``tree``: the checkout to run, first on the path (``python -m`` also puts the working directory first)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    first_line = proc.stdout.readline()
    first = time.perf_counter() - start
    proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    end = time.perf_counter() - start
    return end, first if first_line else end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command and tree (default: 5)")
    parser.add_argument("--base", type=Path, help="another checkout to time as 'before' (PYTHONPATH=BASE)")
    args = parser.parse_args()
    trees = {"after": ROOT} if args.base is None else {"before": args.base.resolve(), "after": ROOT}
    for tree in trees.values():  # (the code each run imports)
        found = subprocess.run([sys.executable, "-c", "import scaleprompt; print(scaleprompt.__file__)"],
                               cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
        if not Path(found).is_relative_to(tree):
            raise SystemExit(f"{tree}: python imports scaleprompt from {found}")
    with tempfile.TemporaryDirectory() as tmp:
        prompts, images = Path(tmp) / "prompts.safetensors", [str(Path(tmp) / f"{i}.png") for i in range(3)]
        subprocess.run([sys.executable, "-c", MAKE_PROMPTS, str(prompts), *images], cwd=ROOT, check=True)
        commands = {
            "--help": ["--help"],
            "datasets": ["datasets"],
            "methods": ["methods"],
            "inspect": ["inspect", str(prompts)],
            "predict (3 images)": ["predict", str(prompts), *images],
        }
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for command, rest in commands.items():
            argv = [sys.executable, "-m", "scaleprompt.cli", *rest]
            for tree in trees:
                timed(argv, trees[tree])  # warm-up
            for _ in range(args.runs):
                for tree in trees:
                    times.setdefault((command, tree), []).append(timed(argv, trees[tree]))
    head = " | ".join(f"{tree} (s)" for tree in trees)
    print(f"| command | {head} |")
    print("|---|" + "---:|" * len(trees))
    for command in commands:
        cells = [statistics.median(end for end, _ in times[command, tree]) for tree in trees]
        print(f"| `{command}` | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
        if command.startswith("predict"):
            cells = [statistics.median(first for _, first in times[command, tree]) for tree in trees]
            print("| `predict`, first record | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    print(f"\nmedian of {args.runs} runs, whole process (python -m scaleprompt.cli), {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
