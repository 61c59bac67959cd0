"""Scale on CPU ranks: large random-init open_clip backbones trained for a few real steps under every ZeRO stage.

Each combination of backbone x method x ZeRO stage x precision x activation checkpointing is one launch of
``bench/scale_worker.py`` through the deepspeed launcher (``--world`` processes, gloo, file rendezvous, loopback
only; ``--world 1`` runs plain python). The worker builds the backbone with ``pretrained=None`` (nothing is
downloaded), wraps the method in the real ``PromptedModel`` with the chosen ``ds_configs/*.json`` and runs
``--steps`` training steps on a synthetic global batch that depends only on the seed and the step (so every stage
sees the same batch). Per combination the table shows, for the worst rank:

* ``peak RSS`` over the whole run, and its parts: ``build`` (backbone + method, before DeepSpeed), ``steps``
  (the training steps, peak reset before them) and ``held`` (resident right after the engine was made);
* ``backbone held``: bytes of the FROZEN backbone's parameters a rank holds between steps, as a fraction of the
  whole backbone (ZeRO-3 partitions it: about 1/world plus the small parameters kept whole below
  ``stage3_param_persistence_threshold``);
* ``s/step``: median of the steps after the first (after the first two with ``--steps`` >= 4);
* ``max |dp|``: the largest difference of the prompts after the steps from those of the first run (``ref``) of the
  same backbone x method x precision x class count: the first stage in ``--zero`` with checkpointing off, or the
  run without ``text_chunk`` (the math must not depend on the stage, on checkpointing or on chunking).

``--classes`` sets the class count; ``--class-scaling`` adds a table of a learned-text method at 100 and 1000 classes
with and without ``model.text_chunk``::

    .venv/bin/python bench/scale.py --models ViT-L-14 --methods provp_ref --zero 2,3,3off --precision fp32
    .venv/bin/python bench/scale.py --models ViT-H-14 --methods provp_ref,upt,coop --zero 2,3 --grad-ckpt off,on
    .venv/bin/python bench/scale.py --no-matrix --class-scaling --scaling-model ViT-B-16

Not a test: it logs numbers and asserts nothing. Runs are slow on 2 cores (ViT-H-14: minutes per combination).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger("scale")
DS = {"0": None, "1": "zero1", "2": "zero2", "3": "zero3", "3off": "zero3_offload"}
GB = 1024**3


@dataclass
class Combo:
    model: str
    method: str
    zero: str
    precision: str
    ckpt: bool
    classes: int
    text_chunk: int = 0
    method_args: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        ck = "ckpt" if self.ckpt else "-"
        chunk = f" chunk {self.text_chunk}" if self.text_chunk else ""
        zero = f"zero{self.zero}" if self.zero in DS else Path(self.zero).stem
        return f"{self.model} {self.method} {zero} {self.precision} {ck} {self.classes} cls{chunk}"


@dataclass
class Result:
    combo: Combo
    wall: float = float("nan")
    ranks: list[dict[str, Any]] = field(default_factory=list)
    prompts: dict[str, Any] | None = None
    error: str = ""


def env_for(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    # glibc gives freed large blocks back to the OS only when they were mmap'ed; a fixed 1 MB threshold (not the
    # dynamic one, which climbs to 32 MB after the first frees) makes the resident set follow the live tensors
    env.update(MALLOC_MMAP_THRESHOLD_="1048576", MALLOC_TRIM_THRESHOLD_="1048576",
               SCALEPROMPT_INIT_METHOD=f"file://{tmp}/rdzv", GLOO_SOCKET_IFNAME="lo", DS_ACCELERATOR="cpu",
               PYTHONPATH=str(ROOT))  # fmt: skip
    return env


def ds_path(zero: str) -> str:
    """A stage name of ``DS`` -> its ds_configs JSON; anything else is a DeepSpeed JSON path."""
    return str(ROOT / "ds_configs" / f"{DS[zero]}.json") if zero in DS else zero


def run_combo(combo: Combo, args: argparse.Namespace, workdir: Path, index: int, world: int) -> Result:
    result = Result(combo)
    out = workdir / f"{index:03d}"
    out.mkdir(parents=True)
    (out / "combo.json").write_text(json.dumps({**asdict(combo), "world": args.world}))
    worker = [
        "bench/scale_worker.py", "--model", combo.model, "--method", combo.method, "--precision", combo.precision,
        "--classes", str(combo.classes), "--text-chunk", str(combo.text_chunk), "--micro", str(args.micro),
        "--steps", str(args.steps), "--out", str(out),
        *(["--grad-checkpointing"] if combo.ckpt else []),
        *(["--ds", ds_path(combo.zero)] if DS.get(combo.zero, combo.zero) else []),
        *(a for kv in combo.method_args for a in ("--method-arg", kv)),
    ]  # fmt: skip
    if world == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(world), *worker]
    logger.info("%s: %s", combo.label, " ".join(cmd))
    start = time.perf_counter()
    with (out / "log.txt").open("w") as log:  # (its own session: a timeout kills the launcher AND its ranks)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env_for(out), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            result.error = f"timed out after {args.timeout} s"
            return result
    result.wall = time.perf_counter() - start
    output = (out / "log.txt").read_text()
    files = sorted(out.glob("rank*.json"))
    if proc.returncode != 0 or len(files) != world:
        tail = [line for line in output.splitlines() if "Error" in line or "error" in line]
        result.error = f"exit {proc.returncode}: {(tail or ['see ' + str(out / 'log.txt')])[-1][:200]}"
        return result
    result.ranks = [json.loads(f.read_text()) for f in files]
    from safetensors.torch import load_file

    result.prompts = load_file(str(out / "prompts.safetensors"))
    return result


def max_diff(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float:
    if a is None or b is None or a.keys() != b.keys():
        return float("nan")
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def reference_for(result: Result, done: list[Result]) -> Result | None:
    """The first successful run of the same backbone x method x precision x class count x method args."""
    key = lambda c: (c.model, c.method, c.precision, c.classes, c.method_args)  # noqa: E731
    return next((r for r in done if not r.error and key(r.combo) == key(result.combo)), None)


def table(results: list[Result]) -> str:
    head = (
        f"{'combination':<48}{'peak RSS':>10}{'build':>8}{'steps':>8}{'held':>8}{'backbone held':>18}"
        f"{'s/step':>8}{'max |dp|':>10}"
    )
    lines = [
        "per rank (the worst rank), GiB; backbone held = frozen parameter bytes on a rank between steps",
        head,
    ]
    for r in results:
        if r.error:
            lines.append(f"{r.combo.label:<48}  FAILED: {r.error}")
            continue
        rss = [x["rss"] for x in r.ranks]
        peak = max(max(x.values()) for x in rss)
        held = max(x["backbone_bytes_after_steps"] for x in r.ranks)
        total = r.ranks[0]["backbone_total_bytes"]
        warm = (
            2 if len(r.ranks[0]["step_seconds"]) >= 4 else 1
        )  # (ZeRO-3 traces its fetch order in step 0..1)
        steps = [statistics.median(x["step_seconds"][warm:] or x["step_seconds"]) for x in r.ranks]
        ref = reference_for(r, results)
        diff = "ref" if ref is r or ref is None else f"{max_diff(r.prompts, ref.prompts):.1e}"
        lines.append(
            f"{r.combo.label:<48}{peak / GB:>10.2f}{max(x['build'] for x in rss) / GB:>8.2f}"
            f"{max(x['steps'] for x in rss) / GB:>8.2f}{max(x['after_engine'] for x in rss) / GB:>8.2f}"
            f"{f'{held / GB:.2f} ({held / total:.0%})':>18}"
            f"{max(steps):>8.2f}{diff:>10}"
        )
    return "\n".join(lines)


def csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=csv, default=["ViT-L-14"])
    ap.add_argument("--methods", type=csv, default=["provp_ref", "upt", "coop"])
    ap.add_argument(
        "--zero",
        type=csv,
        default=["2", "3", "3off"],
        help="stages 0,1,2,3,3off (3 + CPU offload), or DeepSpeed JSON paths",
    )
    ap.add_argument("--precision", type=csv, default=["fp32", "bf16"])
    ap.add_argument("--grad-ckpt", type=csv, default=["off", "on"])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--method-arg", action="append", default=[], help="method=key=value, e.g. coop=n_ctx=4")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--micro", type=int, default=1, help="images per rank and step")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-matrix", action="store_true", help="skip the stage matrix")
    ap.add_argument("--class-scaling", action="store_true")
    ap.add_argument("--scaling-model", default="ViT-B-16")
    ap.add_argument("--scaling-methods", type=csv, default=["coop"])
    ap.add_argument("--scaling-chunk", type=int, default=100)
    ap.add_argument("--scaling-zero", default="0")
    ap.add_argument("--scaling-world", type=int, default=1, help="processes of the class-scaling runs")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    unknown = [z for z in args.zero if z not in DS and not Path(z).is_file()]
    if unknown:
        ap.error(f"unknown --zero {unknown}; choose from {list(DS)}")
    return args


def method_args(args: argparse.Namespace, method: str) -> tuple[str, ...]:
    return tuple(kv.split("=", 1)[1] for kv in args.method_arg if kv.split("=", 1)[0] == method)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    combos = [] if args.no_matrix else [
        Combo(m, meth, z, p, ck == "on", args.classes, method_args=method_args(args, meth))
        for m, meth, p, ck, z in itertools.product(args.models, args.methods, args.precision, args.grad_ckpt, args.zero)
    ]  # fmt: skip
    if args.class_scaling:
        combos += [
            Combo(args.scaling_model, meth, args.scaling_zero, "fp32", False, classes, chunk,
                  method_args(args, meth))
            for meth in args.scaling_methods for classes in (100, 1000) for chunk in (0, args.scaling_chunk)
        ]  # fmt: skip
    scaling_from = len(combos) - (len(args.scaling_methods) * 4 if args.class_scaling else 0)
    results: list[Result] = []
    for i, combo in enumerate(combos):
        results.append(
            run_combo(combo, args, workdir, i, args.world if i < scaling_from else args.scaling_world)
        )
        r = results[-1]
        logger.info("%s: %s", combo.label, r.error or f"done in {r.wall:.0f} s")
        (workdir / "scale.txt").write_text(table(results) + "\n")
    cores = os.cpu_count() or 1
    text = table(results)
    logger.info("%d cores, world %d, micro batch %d, %d steps, torch threads per rank %d\n%s", cores, args.world,
                args.micro, args.steps, max(1, cores // args.world), text)  # fmt: skip
    logger.info("raw per-rank records in %s", workdir)


if __name__ == "__main__":
    main()
