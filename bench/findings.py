"""The papers' findings in miniature (docs/findings.md, pre-registered): every run, then the findings table.

    .venv/bin/python bench/findings.py                         # everything: claims 1-3, 3 seeds
    .venv/bin/python bench/findings.py --parts b2n             # claim 1 only
    .venv/bin/python bench/findings.py --quick --runs /tmp/q   # smoke: one world, one seed, two steps

Each run is the normal engine (``scaleprompt.train.main``: the ``Trainer``, DeepSpeed ZeRO-0 on CPU) from
``configs/microworld/<method>.yaml`` plus the pre-registered overrides, in a pool of ``--workers`` processes (one
run at a time each, torch threads = cores / workers). A run whose ``results.json`` exists is skipped, so the bench
resumes where it stopped. Outputs: ``<out>/findings.md`` (the claims table + every measured cell) and
``<out>/findings_*.csv`` / PNG. Not a test: it asserts nothing; the verdict rules are those of docs/findings.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context, get_start_method, set_start_method
from pathlib import Path
from statistics import mean, stdev

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("bench.findings")

B2N_WORLDS = ["MicroWorldNovelShapes", "MicroWorldNovelColours"]
B2N_METHODS = ["zsclip", "coop", "cocoop", "maple", "provp", "provp_ref"]
VARIANCE_WORLDS = [f"MicroVar{t}-{v}" for t in ("Shape", "Colour", "Both") for v in ("Tight", "Loose")]
VARIANCE_METHODS = ["zsclip", "coop", "vpt_deep", "upt"]
STABILITY_WORLD = "MicroWorldClutter"
STABILITY_METHODS = ["vpt_deep", "provp"]
STABILITY_LRS = ["0.002", "0.01", "0.05", "0.25"]
COLLAPSE_POINTS = 5.0
COMMON = [
    "eval.every_epochs=0",
    "eval.zero_shot_baseline=false",
    "train.report_to=none",
    "train.log_every_steps=0",
]


@dataclass(frozen=True)
class Run:
    part: str
    world: str
    method: str
    label: str  # the row label: method, or method + variant
    seed: int
    overrides: tuple[str, ...] = ()

    def folder(self, runs: Path) -> Path:
        return (
            runs
            / self.part
            / self.world
            / self.label.replace(" ", "_").replace("(", "").replace(")", "")
            / (f"seed{self.seed}")
        )


@dataclass
class Plan:
    runs: list[Run] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        self.runs.append(Run(*args, **kwargs))


def plan_runs(parts: Sequence[str], seeds: Sequence[int], quick: bool) -> list[Run]:
    plan = Plan()
    if quick:  # the smoke version: the pipeline, not the claim
        for method in ("zsclip", "coop"):
            plan.add("b2n", "MicroWorldNovelShapes", method, method, 1, ("train.max_steps=2",))
        return plan.runs
    if "b2n" in parts:
        for world in B2N_WORLDS:
            for method in B2N_METHODS:
                for seed in seeds if method != "zsclip" else seeds[:1]:
                    plan.add("b2n", world, method, method, seed)
            for seed in seeds:
                plan.add("b2n", world, "coop", "coop (40 epochs)", seed, ("optim.epochs=40",))
    if "variance" in parts:
        for world in VARIANCE_WORLDS:
            for method in VARIANCE_METHODS:
                for seed in seeds if method != "zsclip" else seeds[:1]:
                    plan.add("variance", world, method, method, seed,
                             ("eval.setting=fewshot", "optim.epochs=40", "optim.warmup_epochs=4"))  # fmt: skip
    if "stability" in parts:
        plan.add("stability", STABILITY_WORLD, "zsclip", "zsclip", seeds[0])
        for method in STABILITY_METHODS:
            for lr in STABILITY_LRS:
                for seed in seeds:
                    plan.add("stability", STABILITY_WORLD, method, f"{method} lr {lr}", seed,
                             ("method.args.n_ctx=8", f"optim.lr={lr}", "train.nonfinite=stop"))  # fmt: skip
    return plan.runs


def _argv(run: Run, runs: Path, cache: Path) -> list[str]:
    return ["--config", str(ROOT / "configs" / "microworld" / f"{run.method}.yaml"), f"data.dataset={run.world}",
            f"train.seed={run.seed}", f"train.output_dir={run.folder(runs)}", f"data.cache_dir={cache}",
            *COMMON, *run.overrides]  # fmt: skip


def _init_worker(threads: int, start_method: str) -> None:
    # a run's DataLoader workers start as in a launched train.py (this platform's default), not as this spawned
    # worker would by inheritance (spawn: every loader's worker importing torch again, ~5 s of CPU each)
    set_start_method(start_method, force=True)
    # torch is imported by the run, not here: the pool starts a replacement for every worker that ends its one run,
    # also when no run is left for it, and each would pay torch's import (~5 s of CPU) for nothing
    os.environ["OMP_NUM_THREADS"] = str(threads)  # (before torch is imported: one thread count)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # (the console: warnings; each run's log: all)


def _execute(argv: list[str], log: str) -> tuple[int, float]:
    """One run in this (fresh) worker process, the engine in-process; its log goes to ``log``."""
    from scaleprompt.train import main

    start = time.time()
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        code = main(argv)
    except BaseException as exc:  # noqa: BLE001 - recorded, the bench goes on
        logging.getLogger("bench.findings").error("%s: %r", argv, exc)
        code = 1
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return code, time.time() - start


def execute_all(plan: list[Run], runs: Path, workers: int) -> dict[Run, tuple[int, float]]:
    todo = [r for r in plan if not (r.folder(runs) / "results.json").is_file() and not _failed(r, runs)]
    logger.info("%d runs planned, %d to do, %d workers", len(plan), len(todo), workers)
    threads = max(1, (os.cpu_count() or 1) // workers)
    done: dict[Run, tuple[int, float]] = {}
    start = time.time()
    # zero-shot and short runs first would leave the long ones for the end; longest first balances the pool
    todo.sort(key=lambda r: (r.method == "zsclip", r.part != "b2n"))
    # one run per process: DeepSpeed keeps its process group in module state, so a second run in the same process
    # would meet the first one's destroyed group
    # (no more processes than runs: each started worker imports Python's start-up and this file)
    with ProcessPoolExecutor(max(1, min(workers, len(todo))), mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads, get_start_method()), max_tasks_per_child=1) as pool:  # fmt: skip
        futures = {}
        for run in todo:
            run.folder(runs).parent.mkdir(parents=True, exist_ok=True)
            log = str(run.folder(runs)) + ".log"
            futures[pool.submit(_execute, _argv(run, runs, runs / "shards"), log)] = run
        for future in as_completed(futures):
            run = futures[future]
            code, seconds = future.result()
            done[run] = (code, seconds)
            if code != 0:
                Path(str(run.folder(runs)) + ".failed").write_text(f"exit {code}\n")
            logger.info("%-9s %-24s %-22s seed %d: exit %d, %.0f s (%d/%d, %.1f min)", run.part, run.world,
                        run.label, run.seed, code, seconds, len(done), len(todo), (time.time() - start) / 60)  # fmt: skip
    return done


def _failed(run: Run, runs: Path) -> bool:
    return Path(str(run.folder(runs)) + ".failed").is_file()


# --- reading the runs ---------------------------------------------------------------------------------------------
def read_result(run: Run, runs: Path) -> dict | None:
    path = run.folder(runs) / "results.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    last = data["results"]["last"]
    if "base" in last:
        return {"base": last["base"]["top1"], "novel": last["novel"]["top1"], "hm": last["hm"],
                "images": (last["base"]["images"], last["novel"]["images"])}  # fmt: skip
    return {"test": last["test"]["top1"], "images": (last["test"]["images"],)}


@dataclass
class Cell:
    values: list[float]
    digits: int = 2

    @property
    def mean(self) -> float:
        return mean(self.values)

    @property
    def std(self) -> float:
        return stdev(self.values) if len(self.values) > 1 else 0.0

    def se2(self) -> float:
        return self.std**2 / len(self.values) if len(self.values) > 1 else 0.0

    def __str__(self) -> str:
        d = self.digits
        return f"{self.mean:.{d}f} ± {self.std:.{d}f}" if len(self.values) > 1 else f"{self.mean:.{d}f}"


def cells(plan: list[Run], runs: Path, part: str, world: str, metric: str) -> dict[str, Cell]:
    out: dict[str, list[float]] = {}
    for run in plan:
        if run.part == part and run.world == world:
            result = read_result(run, runs)
            if result is not None:
                out.setdefault(run.label, []).append(result[metric])
    return {label: Cell(v) for label, v in out.items()}


def greater(a: Cell, b: Cell) -> str:
    """'margin' (a > b by more than one standard error), 'mean' (a > b within it) or 'no'."""
    diff = a.mean - b.mean
    if diff <= 0:
        return "no"
    return "margin" if diff > math.sqrt(a.se2() + b.se2()) else "mean"


def verdict(parts: Sequence[str], main: bool = True) -> str:
    """yes = every part 'margin'; no = the main part (the first, when ``main``) reversed, or every part reversed;
    partly otherwise (docs/findings.md)."""
    if all(p == "margin" for p in parts):
        return "yes"
    if (main and parts[0] == "no") or all(p == "no" for p in parts):
        return "no"
    return "partly"


# --- claim 1 ------------------------------------------------------------------------------------------------------
def claim1(plan: list[Run], runs: Path) -> tuple[list[list[str]], str]:
    rows: list[list[str]] = []
    detail = io.StringIO()
    per: dict[str, dict[str, str]] = {k: {} for k in ("1a", "1b", "1c", "1d")}
    measured: dict[str, dict[str, str]] = {k: {} for k in per}
    for world in B2N_WORLDS:
        base, novel, hm = (cells(plan, runs, "b2n", world, m) for m in ("base", "novel", "hm"))
        if not base:
            continue
        detail.write(f"\n#### {world} (base-to-novel, 16 shots, last epoch, mean ± std over seeds)\n\n")
        detail.write(
            "| method | base | novel | HM | base − novel | seeds |\n|:---|---:|---:|---:|---:|---:|\n"
        )
        for label in base:
            gap = Cell([b - n for b, n in zip(base[label].values, novel[label].values, strict=True)])
            detail.write(f"| {label} | {base[label]} | {novel[label]} | {hm[label]} | {gap} | "
                         f"{len(base[label].values)} |\n")  # fmt: skip
        gap = {k: Cell([b - n for b, n in zip(base[k].values, novel[k].values, strict=True)]) for k in base}
        if {"zsclip", "coop"} <= set(base):
            per["1a"][world] = verdict([greater(novel["zsclip"], novel["coop"]),  # (main: novel falls)
                                        greater(base["coop"], base["zsclip"])])  # fmt: skip
            measured["1a"][world] = (f"CoOp {base['coop']} / {novel['coop']} vs zero-shot {base['zsclip']} / "
                                     f"{novel['zsclip']} (base / novel)")  # fmt: skip
        if {"coop", "cocoop"} <= set(base):
            per["1b"][world] = verdict([greater(gap["coop"], gap["cocoop"]),
                                        greater(novel["cocoop"], novel["coop"])])  # fmt: skip
            measured["1b"][world] = (f"gap CoCoOp {gap['cocoop']} vs CoOp {gap['coop']}; novel CoCoOp "
                                     f"{novel['cocoop']} vs CoOp {novel['coop']}")  # fmt: skip
        if {"provp", "provp_ref"} <= set(base):
            per["1c"][world] = verdict([greater(novel["provp_ref"], novel["provp"])])
            measured["1c"][world] = f"novel ProVP-Ref {novel['provp_ref']} vs ProVP {novel['provp']}"
        if {"provp_ref", "maple", "cocoop", "coop"} <= set(base):
            per["1d"][world] = verdict([greater(hm["provp_ref"], hm["cocoop"]), greater(hm["maple"], hm["cocoop"]),
                                        greater(hm["cocoop"], hm["coop"])], main=False)  # fmt: skip
            measured["1d"][world] = (f"HM ProVP-Ref {hm['provp_ref']}, MaPLe {hm['maple']}, CoCoOp "
                                     f"{hm['cocoop']}, CoOp {hm['coop']}")  # fmt: skip
    claims = {
        "1a": ("CoOp's novel accuracy falls below zero-shot while its base accuracy rises",
               "CoCoOp Table 1 / Fig. 1 (CoOp 82.69 / 63.22 vs zero-shot 69.34 / 74.22)"),
        "1b": ("CoCoOp narrows CoOp's base-novel gap and beats it on novel classes",
               "CoCoOp Table 1 (80.47 / 71.69)"),
        "1c": ("ProVP-Ref's novel accuracy is above ProVP's (the re-formation loss)",
               "ProVP-Ref, ablation of the re-formation loss"),
        "1d": ("HM ranking: ProVP-Ref and MaPLe above CoCoOp above CoOp",
               "MaPLe Table 1; ProVP-Ref's table (78.76, as quoted)"),
    }  # fmt: skip
    for key, (claim, source) in claims.items():
        if not per[key]:
            continue
        text = "; ".join(f"{w}: {measured[key][w]}" for w in per[key])
        verdicts = ", ".join(f"{w.replace('MicroWorld', '')}: {v}" for w, v in per[key].items())
        rows.append([f"{key} {claim}", source, text, verdicts])
    return rows, detail.getvalue()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- claim 2 ------------------------------------------------------------------------------------------------------
def claim2(plan: list[Run], runs: Path, out: Path) -> tuple[list[list[str]], str]:
    folders = sorted({str(r.folder(runs).parent.parent) for r in plan if r.part == "variance"})
    if not folders or not any((Path(f) / "coop").is_dir() for f in folders):
        return [], ""
    vout = out / "findings_variance"
    cmd = [sys.executable, "-m", "scaleprompt.cli", "analyze", "variance", "--datasets", ",".join(VARIANCE_WORLDS),
           "--model", "sp-micro-clip", "--pretrained", "microworld", "--cache-dir", str(runs / "shards"),
           "--results", *folders, "--methods", "coop,vpt_deep,upt", "--out", str(vout)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        logger.error("analyze variance failed:\n%s", proc.stderr[-3000:])
        return [
            ["2 UPT Fig. 1", "UPT Fig. 1 (d), (e)", f"analyze variance failed: {proc.stderr[-300:]}", "—"]
        ], ""
    fits = {(r["method"], r["statistic"]): r for r in _read_csv(vout / "variance_fits.csv")}
    gains, stats = _read_csv(vout / "variance_gains.csv"), _read_csv(vout / "variance.csv")
    detail = io.StringIO()
    detail.write("\n#### UPT's Figure 1 in miniature (few-shot, 16 shots, 8 classes, gain over zero-shot, "
                 "mean ± std over seeds)\n\n| dataset | intra-class visual var. | inter-class text var. | "
                 "zero-shot | CoOp gain | VPT-deep gain | UPT gain |\n|:---|---:|---:|---:|---:|---:|---:|\n")  # fmt: skip
    by = {(g["dataset"], g["method"]): g for g in gains}
    for s in stats:
        d = s["dataset"]
        cols = [f"{float(by[(d, m)]['gain_mean']):+.2f} ± {float(by[(d, m)]['gain_std']):.2f}"
                if (d, m) in by else "—" for m in ("coop", "vpt_deep", "upt")]  # fmt: skip
        zs = by.get((d, "coop"), {}).get("zero_shot", "—")
        detail.write(f"| {d} | {float(s['intra_visual_variance']):.4f} | {float(s['inter_text_variance']):.4f} | "
                     f"{zs} | {' | '.join(cols)} |\n")  # fmt: skip
    rows = []
    for key, method, stat, sign, claim in (
        ("2a", "coop", "intra_visual_variance", -1, "CoOp's gain falls as intra-class visual variance grows"),
        ("2b", "vpt_deep", "inter_text_variance", +1, "VPT's gain rises with inter-class text variance"),
    ):
        fit = fits.get((method, stat))
        if fit is None:
            continue
        slope = float(fit["slope"])
        seeds = [float(v) for k, v in fit.items() if k.startswith("slope_seed") and v not in ("", None)]
        ok_mean = slope * sign > 0
        ok_seeds = bool(seeds) and all(s * sign > 0 for s in seeds)
        v = "yes" if ok_mean and ok_seeds else "partly" if ok_mean else "no"
        rows.append([f"{key} {claim}", "UPT Fig. 1 (" + ("d" if key == "2a" else "e") + ")",
                     f"slope {slope:+.1f} (r = {float(fit['pearson_r']):+.2f}, {fit['n_datasets']} datasets); "
                     f"per seed {', '.join(f'{s:+.1f}' for s in seeds)}", v])  # fmt: skip
    # 2c: UPT against the better unimodal method per dataset
    acc = {(g["dataset"], g["method"]): float(g["accuracy_mean"]) for g in gains}
    datasets = [
        s["dataset"] for s in stats if all((s["dataset"], m) in acc for m in ("coop", "vpt_deep", "upt"))
    ]
    if datasets:
        upt = mean(acc[(d, "upt")] for d in datasets)
        best = mean(max(acc[(d, "coop")], acc[(d, "vpt_deep")]) for d in datasets)
        coop, vpt = (mean(acc[(d, m)] for d in datasets) for m in ("coop", "vpt_deep"))
        wins = sum(acc[(d, "upt")] >= max(acc[(d, "coop")], acc[(d, "vpt_deep")]) for d in datasets)
        v = "yes" if upt >= best else "partly" if upt > max(coop, vpt) else "no"
        rows.append(["2c UPT does well on both kinds of dataset", "UPT Fig. 1 / Table 1",
                     f"average UPT {upt:.2f} vs per-dataset best unimodal {best:.2f} (CoOp {coop:.2f}, VPT-deep "
                     f"{vpt:.2f}); UPT ≥ the better unimodal on {wins} of {len(datasets)}", v])  # fmt: skip
    return rows, detail.getvalue()


# --- claim 3 ------------------------------------------------------------------------------------------------------
def claim3(plan: list[Run], runs: Path) -> tuple[list[list[str]], str]:
    mine = [r for r in plan if r.part == "stability"]
    zs = next((read_result(r, runs) for r in mine if r.method == "zsclip"), None)
    if not zs:
        return [], ""
    floor = zs["base"] - COLLAPSE_POINTS
    detail = io.StringIO()
    detail.write(f"\n#### Visual-prompt stability ({STABILITY_WORLD}, base-to-novel, 16 shots, 8 prompt tokens; "
                 f"base top-1 per seed; zero-shot base {zs['base']:.2f}, collapse below {floor:.2f} or non-finite)"
                 "\n\n| method | lr | base top-1 per seed | mean ± std | collapsed |\n|:---|---:|:---|---:|---:|\n")  # fmt: skip
    summary: dict[str, dict[str, list]] = {}
    for method in STABILITY_METHODS:
        s = summary.setdefault(method, {"stds": [], "values": [], "collapsed": [], "n": []})
        for lr in STABILITY_LRS:
            values, collapsed, shown = [], 0, []
            for run in mine:
                if run.method != method or run.label != f"{method} lr {lr}":
                    continue
                result = read_result(run, runs)
                if result is None and _failed(run, runs):
                    collapsed += 1
                    shown.append("non-finite/failed")
                elif result is not None:
                    values.append(result["base"])
                    collapsed += result["base"] < floor
                    shown.append(f"{result['base']:.2f}")
            if not shown:
                continue
            cell = Cell(values) if values else None
            s["stds"].append(cell.std if cell and len(values) > 1 else 0.0)
            s["values"].extend(values)
            s["collapsed"].append(collapsed)
            s["n"].append(len(shown))
            detail.write(f"| {method} | {lr} | {', '.join(shown)} | {cell if cell else '—'} | "
                         f"{collapsed}/{len(shown)} |\n")  # fmt: skip
    if not all(summary[m]["n"] for m in STABILITY_METHODS):
        return [], detail.getvalue()

    def frac(m: str) -> float:
        return sum(summary[m]["collapsed"]) / sum(summary[m]["n"])

    def spread(m: str) -> tuple[float, float]:
        v = summary[m]["values"]
        return mean(summary[m]["stds"]), (max(v) - min(v)) if v else float("nan")

    a = frac("vpt_deep") > frac("provp")
    (sv, rv), (sp, rp) = spread("vpt_deep"), spread("provp")
    b = sp < sv and rp < rv
    v = "yes" if a and b else "partly" if a or b else "no"
    rows = [["3 VPT-deep collapses more often and varies more than ProVP", "ProVP-Ref (motivation of progressive "
             "prompts)", f"collapsed VPT-deep {sum(summary['vpt_deep']['collapsed'])}/{sum(summary['vpt_deep']['n'])}"
             f", ProVP {sum(summary['provp']['collapsed'])}/{sum(summary['provp']['n'])}; mean std over seeds "
             f"VPT-deep {sv:.2f}, ProVP {sp:.2f}; range VPT-deep {rv:.2f}, ProVP {rp:.2f}", v]]  # fmt: skip
    return rows, detail.getvalue()


# --- claim 4 ------------------------------------------------------------------------------------------------------
DEVIATION_TSNE_POINTS = 400  # t-SNE of seed 1 only, at most this many images per panel (seeded draw)


def _deviation(run: Run, runs: Path) -> dict | None:
    """``scaleprompt analyze deviation`` of the run's prompt file (kept in ``<run>/deviation``)."""
    folder = run.folder(runs)
    out = folder / "deviation"
    if not (out / "deviation.json").is_file():
        if not (folder / "prompts.safetensors").is_file():
            return None
        tsne = ["--tsne", "--max-points", str(DEVIATION_TSNE_POINTS)] if run.seed == 1 else ["--no-tsne"]
        cmd = [sys.executable, "-m", "scaleprompt.cli", "analyze", "deviation", str(folder / "prompts.safetensors"),
               "--out", str(out), *tsne]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            logger.error("analyze deviation %s failed:\n%s", folder, proc.stderr[-3000:])
            return None
    return json.loads((out / "deviation.json").read_text())


def claim4(plan: list[Run], runs: Path, out: Path) -> tuple[list[list[str]], str]:
    mine = [r for r in plan if r.part == "b2n" and r.method in ("provp", "provp_ref") and r.label == r.method]
    cos: dict[tuple[str, str, str], list[float]] = {}
    with ThreadPoolExecutor(2) as pool:  # (each a subprocess: two at a time on the two cores)
        results = list(pool.map(lambda r: _deviation(r, runs), mine))
    for run, result in zip(mine, results, strict=True):
        if result is None:
            continue
        for key in ("base", "novel"):
            cos.setdefault((run.world, run.method, key), []).append(result["sets"][key]["cosine_mean"])
    if not cos:
        return [], ""
    detail = io.StringIO()
    detail.write("\n#### Deviation from the frozen features (`scaleprompt analyze deviation`: mean cosine of each "
                 "test image's prompted and frozen features, mean ± std over seeds)\n\n| world | method | base | "
                 "novel |\n|:---|:---|---:|---:|\n")  # fmt: skip
    parts: list[str] = []
    measured = []
    for world in B2N_WORLDS:
        cells_ = {(m, k): Cell(cos[(world, m, k)], digits=4) for m in ("provp", "provp_ref") for k in ("base", "novel")
                  if (world, m, k) in cos}  # fmt: skip
        for m in ("provp", "provp_ref"):
            if (m, "base") in cells_:
                detail.write(f"| {world} | {m} | {cells_[(m, 'base')]} | {cells_[(m, 'novel')]} |\n")
        if len(cells_) == 4:
            parts += [greater(cells_[("provp_ref", "novel")], cells_[("provp", "novel")]),
                      greater(cells_[("provp_ref", "base")], cells_[("provp", "base")])]  # fmt: skip
            measured.append(f"{world}: cosine ProVP-Ref {cells_[('provp_ref', 'base')]} / "
                            f"{cells_[('provp_ref', 'novel')]} vs ProVP {cells_[('provp', 'base')]} / "
                            f"{cells_[('provp', 'novel')]} (base / novel)")  # fmt: skip
    if not parts:
        return [], detail.getvalue()
    copied = []
    for run in mine:  # the seed-1 figures beside the table
        figure = run.folder(runs) / "deviation" / "deviation_tsne.png"
        if run.seed == 1 and figure.is_file():
            target = out / f"findings_tsne_{run.world}_{run.method}.png"
            shutil.copyfile(figure, target)
            copied.append(target.name)
    if copied:
        detail.write("\nt-SNE of prompted vs frozen features (seed 1, 400 images per panel): "
                     + ", ".join(f"`{name}`" for name in copied) + "\n")  # fmt: skip
    return [["4 the re-formation loss keeps prompted features close to the frozen ones",
             "ProVP-Ref, deviation analysis (t-SNE) and the loss's motivation", "; ".join(measured),
             verdict(parts)]], detail.getvalue()  # fmt: skip


def attention_figures(runs: Path, out: Path) -> str:
    """UPT's / ProVP's qualitative figure: ``scaleprompt analyze attention`` of ProVP-Ref (seed 1, NovelShapes) on
    the first test image of the first base class and of the first novel class."""
    prompts = runs / "b2n" / "MicroWorldNovelShapes" / "provp_ref" / "seed1" / "prompts.safetensors"
    if not prompts.is_file():
        return ""
    from scaleprompt.data.datasets import load_dataset

    test = load_dataset("MicroWorldNovelShapes").test
    images = [next(d for d in test if d.label == label).path for label in (0, 32)]
    folder = runs / "attention"
    cmd = [sys.executable, "-m", "scaleprompt.cli", "analyze", "attention", str(prompts), *map(str, images),
           "--out", str(folder)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        logger.error("analyze attention failed:\n%s", proc.stderr[-3000:])
        return ""
    names = []
    for image, half in zip(images, ("base", "novel"), strict=True):
        target = out / f"findings_attention_{half}.png"
        shutil.copyfile(folder / f"{Path(image).stem}.attention.png", target)
        names.append(f"`{target.name}` ({Path(image).parent.name.replace('_', ' ')}, {half})")
    return ("\n#### Attention (`scaleprompt analyze attention`, ProVP-Ref seed 1 on MicroWorldNovelShapes, last block)"
            "\n\n" + ", ".join(names) + "\n")  # fmt: skip


def write_table(plan: list[Run], runs: Path, out: Path, minutes: float | None, quick: bool) -> str:
    rows1, detail1 = claim1(plan, runs)
    rows2, detail2 = claim2(plan, runs, out)
    rows3, detail3 = claim3(plan, runs)
    out.mkdir(parents=True, exist_ok=True)
    rows4, detail4 = claim4(plan, runs, out)
    rows, details = (
        rows1 + rows2 + rows3 + rows4,
        [detail1, detail2, detail3, detail4, attention_figures(runs, out)],
    )
    text = io.StringIO()
    text.write("### The papers' findings in miniature (pre-registered in docs/findings.md)\n\n")
    text.write("| claim | source | measured (mean ± std over seeds) | reproduced |\n|:---|:---|:---|:---|\n")
    for row in rows:
        text.write("| " + " | ".join(row) + " |\n")
    text.write("\nBackbone sp-micro-clip (pretrained: microworld); every run `scaleprompt/train.py`'s engine; "
               "test top-1 (%) of the last epoch; verdict rules in docs/findings.md.\n")  # fmt: skip
    if quick:
        text.write("\n**Quick smoke run: one seed, two training steps. Not a measurement of any claim.**\n")
    if minutes is not None:
        text.write(f"\nThis invocation: {minutes:.1f} min of runs ({os.cpu_count()} CPU cores).\n")
    text.write("".join(details))
    out.mkdir(parents=True, exist_ok=True)
    (out / "findings.md").write_text(text.getvalue())
    with open(out / "findings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["claim", "source", "measured", "reproduced"])
        w.writerows(rows)
    return text.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--parts", default="b2n,variance,stability", help="comma-separated: b2n, variance, stability"
    )
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "findings")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--quick", action="store_true", help="smoke run: one world, one seed, two steps")
    ap.add_argument("--table-only", action="store_true", help="write the table from the finished runs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - {"b2n", "variance", "stability"})
    if unknown:
        ap.error(f"unknown parts {unknown}")
    plan = plan_runs(parts, [int(s) for s in args.seeds.split(",")], args.quick)
    minutes = None
    if not args.table_only:
        start = time.time()
        execute_all(plan, args.runs, args.workers)
        minutes = (time.time() - start) / 60
    logger.info("\n%s", write_table(plan, args.runs, args.out, minutes, args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
