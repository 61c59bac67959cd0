"""Training speed: one training step of every prompt method vs one frozen forward, and the real training
engine on 1 vs 2 processes.

Part 1 (in this process, CPU fp32, random-init backbones, random images): per backbone (``sp-tiny-vit`` at
32 px, ``ViT-B-16`` at 224 px) the time of one *frozen forward* (``clip.encode_image`` under no_grad + the cached
zero-shot text features -> logits) and of one *training step* of each method::

    method.train(); out = method.loss(x, y); out.loss.backward(); optimizer.step(); optimizer.zero_grad()

with a torch SGD (momentum 0.9) over ``method.trainable_parameters()``. zsclip has no training step: its row is
its own no-grad forward (``method.logits``). Every item gets its warm-up iterations, then the timed iterations run
in rounds (one iteration of every item per round) so that drift of the machine hits all items alike; the median
is reported. The ratio train step / frozen forward is taken at the same batch size.

On ``sp-tiny-vit`` CoOp gets ``n_ctx=4`` (its 16 context tokens do not fit the 16-token text context) and MaPLe
``prompt_depth=2`` (the towers have 2 blocks). On ViT-B-16 CoCoOp runs at ``--cocoop-vit-batch`` (default 2):
it encodes B x C text sequences per step.

Part 2 (subprocesses): ``scaleprompt/train.py`` with the same recipe (``--config`` + overrides, same ``--ds``)
under plain python (1 process) and under the deepspeed launcher with 2 processes (gloo, file rendezvous,
loopback only), ``--engine-repeats`` times each, alternating; ``timing.images_per_second`` is read from each
run's ``results.json``; the median and the best run are reported (outside load only ever slows a run
down). ``OMP_NUM_THREADS`` is removed from the launched processes' environment, so the engine gives each rank
cores // ranks threads.

    .venv/bin/python bench/train_speed.py                                   # everything, about 8 minutes
    .venv/bin/python bench/train_speed.py --backbones sp-tiny-vit --no-engine
    .venv/bin/python bench/train_speed.py --backbones ViT-B-16 --methods coop,provp_ref --vit-iters 2

Part 3 (``--against REV``, instead of parts 1 and 2): this checkout's step against the same step at git revision
REV, side by side in one run (see ``bench/speed_against.py``)::

    .venv/bin/python bench/train_speed.py --against 02da0ae                 # every item, about 16 minutes
    .venv/bin/python bench/train_speed.py --against 02da0ae --against-sets five --methods vpt_deep

Not a test: it logs numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from speed_against import add_arguments, check_arguments, run_against
from speed_worker import sgd_step

from scaleprompt.backbone import load_clip
from scaleprompt.losses import cosine_logits
from scaleprompt.methods.registry import build, list_methods, method_class

logger = logging.getLogger("bench.train_speed")

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("sp-tiny-vit", "ViT-B-16")
CLASSNAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    "apple", "bicycle", "bridge", "castle", "cloud", "flower", "lamp", "mountain", "rocket", "tiger",
)  # fmt: skip
# Config fields that count blocks. A default deeper than the tower (MaPLe's prompt_depth=9 on the 2-block tiny
# backbone) is lowered to the tower's depth; None (= every block) needs no override.
DEPTH_FIELDS = ("depth", "prompt_depth", "text_depth", "vision_depth")
# The tiny text tower holds 16 tokens: CoOp's 16 context tokens + a class name do not fit.
TINY_OVERRIDES = {"coop": {"n_ctx": 4}}


# --- part 1: frozen forward vs training step -------------------------------------------------------------------
@dataclass
class Item:
    """One timed thing: a frozen forward at some batch size, or a method's step (or zsclip's forward)."""

    name: str
    kind: str  # "frozen" | "step" | "forward"
    batch: int
    run: Callable[[], None]
    trainable: int = 0
    times: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.times)

    @property
    def spread(self) -> str:
        """(max - min) / median of the timed iterations, in percent: how noisy the median is."""
        return f"{100 * (max(self.times) - min(self.times)) / statistics.median(self.times):.0f}%"


def method_overrides(name: str, blocks: int, tiny: bool) -> dict[str, int]:
    """Lower every depth default of method ``name`` that exceeds the tower's ``blocks``; on the tiny backbone
    add :data:`TINY_OVERRIDES`."""
    defaults = method_class(name).describe_config()
    overrides = {k: blocks for k in DEPTH_FIELDS if isinstance(defaults.get(k), int) and defaults[k] > blocks}
    return {**overrides, **(TINY_OVERRIDES.get(name, {}) if tiny else {})}


def make_batch(
    gen: torch.Generator, batch: int, size: int, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(batch, 3, size, size, generator=gen)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return images, labels


def frozen_forward(clip: torch.nn.Module, text: torch.Tensor, images: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            cosine_logits(clip.encode_image(images), text, clip.logit_scale)

    return run


def method_forward(method: torch.nn.Module, images: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        method.eval()
        with torch.no_grad():
            method.logits(images)

    return run


def time_items(items: list[Item], warmup: int, iters: int, label: str) -> None:
    """``warmup`` untimed calls of every item, then ``iters`` rounds of one timed call of every item."""
    t0 = time.perf_counter()
    for item in items:
        for _ in range(warmup):
            item.run()
    logger.info("%s: warm-up (%d per item) done in %.1f s", label, warmup, time.perf_counter() - t0)
    for r in range(iters):
        t0 = time.perf_counter()
        for item in items:
            start = time.perf_counter()
            item.run()
            item.times.append(time.perf_counter() - start)
        logger.info(
            "%s: round %d/%d done in %.1f s (1-min load average %.2f, this process included)",
            label, r + 1, iters, time.perf_counter() - t0, os.getloadavg()[0],
        )  # fmt: skip


def bench_backbone(args: argparse.Namespace, backbone: str) -> str:
    tiny = backbone == "sp-tiny-vit"
    batch = args.tiny_batch if tiny else args.vit_batch
    warmup, iters = (args.tiny_warmup, args.tiny_iters) if tiny else (args.vit_warmup, args.vit_iters)
    t0 = time.perf_counter()
    loaded = load_clip(backbone, None)
    clip, info = loaded.model, loaded.info
    size, blocks = info.image_size, min(info.vision_layers, info.text_layers)
    logger.info(
        "%s: built in %.1f s (random init), %d px, %d vision / %d text blocks",
        backbone, time.perf_counter() - t0, size, info.vision_layers, info.text_layers,
    )  # fmt: skip
    classnames = list(CLASSNAMES[: args.classes])
    gen = torch.Generator().manual_seed(args.seed)
    batches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def data(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        if b not in batches:
            batches[b] = make_batch(gen, b, size, len(classnames))
        return batches[b]

    zs = build("zsclip", loaded, classnames)
    text = zs.text_features()  # cached [C, E]: the zero-shot classifier of the frozen forward
    items: list[Item] = []
    notes: list[str] = []
    for name in args.methods:
        b = batch
        if name == "cocoop" and not tiny:
            if args.cocoop_vit_batch <= 0:
                notes.append("cocoop skipped (--cocoop-vit-batch 0): it runs B x C text sequences per step")
                logger.info("%s: %s", backbone, notes[-1])
                continue
            b = args.cocoop_vit_batch
            if b != batch:
                notes.append(f"cocoop at batch {b} (B x C = {b * len(classnames)} text sequences per step)")
        images, labels = data(b)
        if name == "zsclip":
            items.append(Item(name, "forward", b, method_forward(zs, images)))
            continue
        overrides = method_overrides(name, blocks, tiny)
        if overrides:
            logger.info("%s: %s with overrides %s (%d blocks per tower)", backbone, name, overrides, blocks)
            notes.append(f"{name} with {', '.join(f'{k}={v}' for k, v in overrides.items())}")
        method = build(name, loaded, classnames, **overrides)
        trainable = sum(p.numel() for p in method.trainable_parameters())
        items.append(Item(name, "step", b, sgd_step(method, images, labels, args.lr), trainable))
    frozen = {
        b: Item(f"frozen forward b{b}", "frozen", b, frozen_forward(clip, text, data(b)[0]))
        for b in sorted({item.batch for item in items} | {batch})
    }
    time_items([*frozen.values(), *items], warmup, iters, backbone)

    head = (
        f"{backbone} ({size} px, {info.vision_layers} blocks, random init), CPU fp32, {len(classnames)} classes, "
        f"threads={torch.get_num_threads()}, median of {iters} (after {warmup} warm-up)"
    )
    lines = [
        head,
        f"{'method':<12}{'batch':>6}{'trainable':>11}{'step ms':>10}{'img/s':>9}{'fwd ms':>9}{'fwd img/s':>11}"
        f"{'step/fwd':>10}{'spread':>8}",
    ]
    for b, ref in frozen.items():
        ms = ref.median_ms
        lines.append(
            f"{'(frozen)':<12}{b:>6}{'-':>11}{'-':>10}{'-':>9}{ms:>9.1f}{1000 * b / ms:>11.1f}{'1.00':>10}{ref.spread:>8}"
        )
    for item in items:
        ref_ms = frozen[item.batch].median_ms
        ms = item.median_ms
        if item.kind == "forward":  # zsclip: its own no-grad forward, no training step
            lines.append(
                f"{item.name:<12}{item.batch:>6}{0:>11}{'-':>10}{'-':>9}{ms:>9.1f}{1000 * item.batch / ms:>11.1f}"
                f"{ms / ref_ms:>9.2f}*{item.spread:>8}"
            )
            continue
        lines.append(
            f"{item.name:<12}{item.batch:>6}{item.trainable:>11}{ms:>10.1f}{1000 * item.batch / ms:>9.1f}"
            f"{ref_ms:>9.1f}{1000 * item.batch / ref_ms:>11.1f}{ms / ref_ms:>10.2f}{item.spread:>8}"
        )
    if any(item.kind == "forward" for item in items):
        lines.append(
            "* zsclip: its own forward (method.logits, no grad) / the frozen forward; no training step"
        )
    lines.append("spread: (max - min) / median of the timed iterations of the row's own timing")
    lines.extend(f"note: {n}" for n in notes)
    return "\n".join(lines)


# --- part 2: the training engine on 1 vs 2 processes -------------------------------------------------------------
@dataclass
class EngineRun:
    label: str
    processes: int
    wall: float = float("nan")
    images_per_second: float = float("nan")
    train_seconds: float = float("nan")
    world_size: int = 0
    error: str = ""


def engine_env(tmp: Path) -> dict[str, str]:
    """Loopback-only rendezvous; OMP_NUM_THREADS unset, so the engine gives each rank cores // local ranks."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(
        SCALEPROMPT_INIT_METHOD=f"file://{tmp}/rdzv", GLOO_SOCKET_IFNAME="lo", DS_ACCELERATOR="cpu",
        PYTHONPATH=str(ROOT),
    )  # fmt: skip
    return env


def run_engine(args: argparse.Namespace, workdir: Path, processes: int, repeat: int) -> EngineRun:
    label = "python (1 process)" if processes == 1 else f"deepspeed --num_gpus {processes}"
    run = EngineRun(label, processes)
    tmp = workdir / f"engine-{processes}proc-{repeat}"
    if tmp.exists():
        raise SystemExit(f"{tmp} exists: pass an empty --workdir")
    tmp.mkdir(parents=True)
    out = tmp / "out"
    recipe = [
        "--ds", args.ds, "--config", args.engine_config, f"train.output_dir={out}", f"data.cache_dir={tmp / 'cache'}",
        f"data.root={tmp / 'data'}", f"optim.epochs={args.engine_epochs}", "train.report_to=none",
        *args.engine_overrides,
    ]  # fmt: skip
    if processes == 1:
        cmd = [sys.executable, "scaleprompt/train.py", *recipe]
    else:
        launcher = str(Path(sys.executable).parent / "deepspeed")
        cmd = [launcher, "--num_gpus", str(processes), "scaleprompt/train.py", *recipe]
    logger.info("engine: %s", " ".join(cmd))
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=engine_env(tmp), capture_output=True, text=True, timeout=args.engine_timeout
        )
    except subprocess.TimeoutExpired:
        run.error = f"timed out after {args.engine_timeout} s"
        logger.error("engine %s: %s", label, run.error)
        return run
    run.wall = time.perf_counter() - start
    (tmp / "stdout.log").write_text(proc.stdout)
    (tmp / "stderr.log").write_text(proc.stderr)
    if proc.returncode != 0 or not (out / "results.json").is_file():
        run.error = f"exit code {proc.returncode}"
        logger.error("engine %s failed (%d):\n%s", label, proc.returncode, proc.stderr[-4000:])
        return run
    results = json.loads((out / "results.json").read_text())
    run.images_per_second = results["timing"]["images_per_second"]
    run.train_seconds = results["timing"]["train_seconds"]
    run.world_size = results["world_size"]
    logger.info(
        "engine %s: %.1f images/s (fit %.1f s, wall %.1f s, world size %d)",
        label, run.images_per_second, run.train_seconds, run.wall, run.world_size,
    )  # fmt: skip
    return run


def bench_engine(args: argparse.Namespace, workdir: Path) -> str:
    """``--engine-repeats`` rounds of (1 process, 2 processes), alternating so that drift hits both alike."""
    runs: dict[int, list[EngineRun]] = {1: [], 2: []}
    for r in range(args.engine_repeats):
        for processes in runs:
            runs[processes].append(run_engine(args, workdir, processes, r))
    cores = os.cpu_count() or 1
    lines = [
        f"training engine: scaleprompt/train.py --ds {args.ds} --config {args.engine_config} "
        f"optim.epochs={args.engine_epochs} {' '.join(args.engine_overrides)}".rstrip(),
        f"{cores} cores; torch threads per process = cores // processes (the engine's default); "
        f"median and best of {args.engine_repeats} runs each",
        f"{'launch':<24}{'world':>6}{'threads':>8}{'images/s':>10}{'best':>8}{'fit s':>8}{'wall s':>8}"
        "  images/s of each run",
    ]
    rates: dict[int, float] = {}
    best: dict[int, float] = {}
    for processes, done in runs.items():
        ok = [run for run in done if not run.error]
        if not ok:
            lines.append(f"{done[0].label:<24}  failed: {'; '.join(run.error for run in done)}")
            continue
        rates[processes] = statistics.median(run.images_per_second for run in ok)
        best[processes] = max(run.images_per_second for run in ok)
        fit = statistics.median(run.train_seconds for run in ok)
        wall = statistics.median(run.wall for run in ok)
        each = ", ".join(f"{run.images_per_second:.1f}" if not run.error else "failed" for run in done)
        threads = max(1, cores // processes)
        lines.append(
            f"{ok[0].label:<24}{ok[0].world_size:>6}{threads:>8}{rates[processes]:>10.1f}{best[processes]:>8.1f}"
            f"{fit:>8.1f}{wall:>8.1f}"
            f"  {each}"
        )
    if len(rates) == 2:
        lines.append(
            f"ratio 2-proc / 1-proc images/s: {rates[2] / rates[1]:.2f} (medians), {best[2] / best[1]:.2f} (best runs)"
        )
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------------------------
def csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", type=csv, default=list_methods(), help="comma-separated (default: all)")
    ap.add_argument("--backbones", type=csv, default=list(BACKBONES), help="comma-separated (default: both)")
    ap.add_argument("--classes", type=int, default=10, help="class names (default 10)")
    ap.add_argument("--tiny-batch", type=int, default=32, help="batch size on sp-tiny-vit (default 32)")
    ap.add_argument("--vit-batch", type=int, default=8, help="batch size on ViT-B-16 (default 8)")
    ap.add_argument(
        "--cocoop-vit-batch", type=int, default=2, help="cocoop's batch on ViT-B-16 (default 2; 0 = skip it)"
    )
    ap.add_argument("--tiny-warmup", type=int, default=5)
    ap.add_argument("--tiny-iters", type=int, default=30, help="timed iterations on sp-tiny-vit (default 30)")
    ap.add_argument("--vit-warmup", type=int, default=1)
    ap.add_argument("--vit-iters", type=int, default=3, help="timed iterations on ViT-B-16 (default 3)")
    ap.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate of the timed steps")
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-engine", dest="engine", action="store_false", help="skip part 2 (1 vs 2 processes)")
    ap.add_argument("--engine-config", default="configs/demo.yaml", help="recipe of part 2 (default demo)")
    ap.add_argument("--engine-epochs", type=int, default=10, help="optim.epochs of part 2 (default 10)")
    ap.add_argument("--engine-repeats", type=int, default=3, help="runs per process count (default 3)")
    ap.add_argument("--ds", default="ds_configs/zero2.json", help="DeepSpeed JSON of both engine runs")
    ap.add_argument("--engine-timeout", type=int, default=900, help="seconds per engine run (default 900)")
    ap.add_argument("--engine-overrides", nargs="*", default=[], help="more key=value overrides for part 2")
    ap.add_argument("--workdir", type=Path, help="keep the engine runs here (default: a temp dir, removed)")
    add_arguments(ap)
    args = ap.parse_args(argv)
    check_arguments(ap, args)
    unknown = [m for m in args.methods if m not in list_methods()]
    if unknown:
        ap.error(f"unknown methods {unknown}; registered: {', '.join(list_methods())}")
    bad = [b for b in args.backbones if b not in BACKBONES]
    if bad:
        ap.error(f"unknown backbones {bad}; choose from {', '.join(BACKBONES)}")
    if not 1 <= args.classes <= len(CLASSNAMES):
        ap.error(f"--classes must be in 1..{len(CLASSNAMES)}")
    if (
        min(
            args.tiny_batch,
            args.vit_batch,
            args.tiny_iters,
            args.vit_iters,
            args.threads,
            args.engine_repeats,
        )
        < 1
    ):
        ap.error("batch sizes, iterations, --threads and --engine-repeats must be >= 1")
    if min(args.tiny_warmup, args.vit_warmup, args.cocoop_vit_batch) < 0:
        ap.error("warm-up iterations and --cocoop-vit-batch must be >= 0")
    return args


def run(args: argparse.Namespace, workdir: Path) -> None:
    tables = []
    for backbone in args.backbones:
        tables.append(bench_backbone(args, backbone))
        logger.info("results %s\n%s", backbone, tables[-1])
    if args.engine:
        tables.append(bench_engine(args, workdir))
        logger.info("results engine\n%s", tables[-1])
    logger.info("all results\n%s", "\n\n".join(tables))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logger.info(
        "torch %s, torch threads %d (--threads), %d cores, methods %s, backbones %s",
        torch.__version__, torch.get_num_threads(), os.cpu_count() or 1, ",".join(args.methods),
        ",".join(args.backbones),
    )  # fmt: skip
    start = time.perf_counter()
    if args.against:
        logger.info("results against %s\n%s", args.against, run_against(args))
    elif args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="scaleprompt-train-speed-") as tmp:
            run(args, Path(tmp))
    logger.info("total %.1f s", time.perf_counter() - start)


if __name__ == "__main__":
    main()
