"""``bench/train_speed.py --against REV``: this checkout's training step against the same step at git revision REV,
measured side by side in one run.

REV is exported with ``git archive`` into a temporary folder. Two worker processes (``bench/speed_worker.py``)
import ``scaleprompt`` from REV and from this checkout respectively; each builds the same random backbone (the
driver checks a checksum of the weights) and the same method, prompts, images and labels (seeded), so both sides
do the same work and their first losses agree. The driver asks one side, then the other, for one timed call,
alternating which goes first every round; only one process computes at a time. Per item: ``--against-warmup``
untimed calls per side, then ``--against-rounds`` rounds; the medians and their ratio (this checkout / REV) are
reported.

Items (the issue-14 harness: ViT-B/16 random init, CPU fp32, batch 8, forward + loss + backward + SGD step):

* ``five``: every method in its official configuration, 5 class names;
* ``hundred``: the methods that learn text (CoOp, CoCoOp, IVLP, MaPLe, UPT) at 100 class names; CoCoOp at batch
  ``--cocoop-batch-100`` (it encodes batch x classes prompts per step);
* ``zeroshot``: the zero-shot classifier of 1000 class names x ``--zs-templates`` templates (no grad).

Class names are ImageNet's (open_clip's list), templates CLIP's ImageNet templates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

logger = logging.getLogger("bench.train_speed")
ROOT = Path(__file__).resolve().parents[1]
SETS = ("five", "hundred", "zeroshot")


@dataclass
class Case:
    label: str
    item: dict[str, Any]  # what the workers build (see speed_worker.Worker.build)
    times: dict[str, list[float]] = field(default_factory=lambda: {"old": [], "new": []})
    values: dict[str, float] = field(default_factory=dict)  # first loss (or feature sum) per side
    error: str = ""  # why the item could not be measured (the other items still are)

    def median(self, side: str) -> float:
        return statistics.median(self.times[side])

    def spread(self, side: str) -> str:
        t = self.times[side]
        return f"{100 * (max(t) - min(t)) / statistics.median(t):.0f}%"


def step(label: str, method: str, classes: int, batch: int = 8, **overrides: Any) -> Case:
    item = {"kind": "step", "method": method, "classes": classes, "batch": batch, "overrides": overrides}
    return Case(label, item)


def cases(args: argparse.Namespace) -> list[Case]:
    """The items of ``--against-sets``, restricted to ``--methods``."""
    five = [
        step("CoOp (N 16)", "coop", 5),
        step("CoCoOp (N 4, 'a photo of a')", "cocoop", 5),
        step("VPT-deep, UPT layout (4 x 12)", "vpt_deep", 5, layout="upt"),
        step("VPT-deep, MaPLe layout (8 x 12)", "vpt_deep", 5, layout="maple"),
        step("IVLP (2+2, depth 12)", "ivlp", 5),
        step("MaPLe (N 2, depth 9)", "maple", 5),
        step("ProVP-Ref (N 16)", "provp_ref", 5, n_ctx=16),
        step("ProVP-Ref (N 50)", "provp_ref", 5, n_ctx=50),
        step("UPT (n 4, per-token)", "upt", 5, variant="per_token"),
    ]
    hundred = [
        step("CoOp (N 16)", "coop", 100),
        step(f"CoCoOp (N 4), batch {args.cocoop_batch_100}", "cocoop", 100, batch=args.cocoop_batch_100),
        step("IVLP (2+2, depth 12)", "ivlp", 100),
        step("MaPLe (N 2, depth 9)", "maple", 100),
        step("UPT (n 4, per-token)", "upt", 100, variant="per_token"),
    ]
    zeroshot = [
        Case(
            f"zero-shot classifier, {args.zs_templates} templates",
            {"kind": "zeroshot", "method": "zsclip", "classes": 1000, "templates": args.zs_templates},
        )
    ]
    chosen = {"five": five, "hundred": hundred, "zeroshot": zeroshot}
    return [c for s in args.against_sets for c in chosen[s] if c.item["method"] in args.methods]


class WorkerError(RuntimeError):
    """A worker could not run a request (the item is reported as failed; a dead worker ends the benchmark)."""


class Side:
    """A worker process importing scaleprompt from ``root``."""

    def __init__(self, name: str, root: Path, args: argparse.Namespace, log: Path) -> None:
        self.name, self.root = name, root
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        env["PYTHONPATH"] = str(root)
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "speed_worker.py")],
            cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_file, text=True,
        )  # fmt: skip
        hello = {"op": "hello", "root": str(root), "backbone": args.against_backbone, "seed": args.seed}
        self.hello = self.ask({**hello, "threads": args.threads})

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        stdin: IO[str] = self.proc.stdin  # type: ignore[assignment]
        stdout: IO[str] = self.proc.stdout  # type: ignore[assignment]
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            tail = self.log.read_text()[-3000:]
            raise SystemExit(f"the {self.name} worker ({self.root}) died; its log {self.log} ends:\n{tail}")
        answer = json.loads(line)
        if "error" in answer:
            raise SystemExit(
                f"the {self.name} worker ({self.root}) failed: {answer['error']} (log: {self.log})"
            )
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(SystemExit):
                self.ask({"op": "quit"})
            self.proc.wait(timeout=60)
        self._log_file.close()


def export(rev: str, dest: Path) -> str:
    """``git archive`` of ``rev`` into ``dest``; returns the full commit id."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True, text=True
    )
    if sha.returncode != 0:
        raise SystemExit(f"--against {rev}: not a commit of {ROOT}: {sha.stderr.strip()}")
    archive = dest.parent / "rev.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", "--format=tar", sha.stdout.strip()], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return sha.stdout.strip()


def this_checkout() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return f"{head[:10]}{' + uncommitted changes' if dirty else ''}"


def measure(case: Case, sides: dict[str, Side], warmup: int, rounds: int) -> None:
    for name, side in sides.items():
        t0 = time.perf_counter()
        for i in range(warmup):
            answer = side.ask({"op": "time", "item": case.item})
            if i == 0:
                case.values[name] = answer["value"]
        logger.info("%s, %s: built and warmed up in %.1f s", case.label, name, time.perf_counter() - t0)
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            answer = sides[name].ask({"op": "time", "item": case.item})
            case.times[name].append(answer["seconds"])
            case.values.setdefault(name, answer["value"])
        logger.info(
            "%s [%d classes], round %d/%d: old %.2f s, new %.2f s (1-min load average %.2f)",
            case.label, case.item["classes"], r + 1, rounds, case.times["old"][-1], case.times["new"][-1],
            os.getloadavg()[0],
        )  # fmt: skip


def table(done: list[Case], head: str) -> str:
    lines = [
        head,
        f"{'item':<38}{'classes':>8}{'batch':>6}{'old s':>9}{'new s':>9}{'new/old':>9}{'spread':>13}"
        f"  first loss old / new",
    ]
    for c in done:
        if c.error or not c.times["old"] or not c.times["new"]:
            lines.append(f"{c.label:<38}{c.item['classes']:>8}  failed: {c.error}")
            continue
        old, new = c.median("old"), c.median("new")
        batch = c.item.get("batch", "-")
        spread = f"{c.spread('old')}/{c.spread('new')}"
        values = f"{c.values['old']:.6g} / {c.values['new']:.6g}"
        lines.append(
            f"{c.label:<38}{c.item['classes']:>8}{batch:>6}{old:>9.2f}{new:>9.2f}{new / old:>9.2f}{spread:>13}"
            f"  {values}"
        )
    lines.append(
        "old s / new s: medians of the timed rounds; spread: (max - min) / median per side; first loss: the loss "
        "of the first step (zero-shot: the sum of the class features), the same work on both sides"
    )
    return "\n".join(lines)


def run_against(args: argparse.Namespace) -> str:
    chosen = cases(args)
    if not chosen:
        raise SystemExit("--against: no item left after --against-sets and --methods")
    with tempfile.TemporaryDirectory(prefix="scaleprompt-against-") as tmp:
        old_root = Path(tmp) / "rev"
        old_root.mkdir()
        sha = export(args.against, old_root)
        logger.info("exported %s (%s) to %s", args.against, sha[:10], old_root)
        sides: dict[str, Side] = {}
        try:
            sides["old"] = Side("old", old_root, args, Path(tmp) / "old.log")
            sides["new"] = Side("new", ROOT, args, Path(tmp) / "new.log")
            sums = {name: side.hello["checksum"] for name, side in sides.items()}
            if abs(sums["old"] - sums["new"]) > 1e-9 * abs(sums["new"]):
                raise SystemExit(f"the two sides built different backbone weights (checksums {sums})")
            load0 = os.getloadavg()
            for case in chosen:
                try:
                    measure(case, sides, args.against_warmup, args.against_rounds)
                except WorkerError as exc:
                    case.error = str(exc)
                    logger.error("%s: %s", case.label, exc)
            load1 = os.getloadavg()
        finally:
            for side in sides.values():
                side.close()
    head = (
        f"this checkout ({this_checkout()}) vs {args.against} ({sha[:10]}): {args.against_backbone} random init, "
        f"CPU fp32, torch {torch.__version__}, {args.threads} threads per side (one side computes at a time), "
        f"median of {args.against_rounds} alternating rounds after {args.against_warmup} warm-up; "
        f"1/5/15-min load average {'/'.join(f'{v:.2f}' for v in load0)} at the start, "
        f"{'/'.join(f'{v:.2f}' for v in load1)} at the end"
    )
    return table(chosen, head)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--against", metavar="REV",
        help="time this checkout against git revision REV side by side (instead of parts 1 and 2)",
    )  # fmt: skip
    ap.add_argument(
        "--against-sets", type=lambda v: [s.strip() for s in v.split(",") if s.strip()], default=list(SETS),
        help=f"which items (comma-separated, default all): {', '.join(SETS)}",
    )  # fmt: skip
    ap.add_argument("--against-backbone", default="ViT-B-16", help="random-init backbone (default ViT-B-16)")
    ap.add_argument(
        "--against-warmup", type=int, default=1, help="untimed calls per item and side (default 1)"
    )
    ap.add_argument("--against-rounds", type=int, default=3, help="timed rounds per item (default 3)")
    ap.add_argument(
        "--cocoop-batch-100", type=int, default=2, help="CoCoOp's batch at 100 classes (default 2)"
    )
    ap.add_argument("--zs-templates", type=int, default=2, help="templates of the zero-shot item (default 2)")


def check_arguments(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    bad = [s for s in args.against_sets if s not in SETS]
    if bad:
        ap.error(f"--against-sets: unknown {bad}; choose from {', '.join(SETS)}")
    if min(args.against_warmup + 1, args.against_rounds, args.cocoop_batch_100, args.zs_templates) < 1:
        ap.error(
            "--against-rounds, --cocoop-batch-100 and --zs-templates must be >= 1, --against-warmup >= 0"
        )
