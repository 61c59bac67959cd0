"""The papers' base-to-novel table in miniature, on the micro-world: every registered method x 3 seeds.

Each run is ``scaleprompt/train.py --config configs/microworld/<method>.yaml`` (the normal engine, one process,
DeepSpeed on CPU) on a shifted micro-world dataset (default ``MicroWorldClutter``; 16 shots of the 32 base
classes; 50 test images per class, base and novel), with ``train.seed`` = each seed. Finished runs are kept
under ``--runs`` and skipped when the bench is started again. The table is built from the runs' results.json by
``scaleprompt.report`` (mean ± sample std over seeds) and written as markdown + CSV, with a PNG bar
chart of Base / Novel / HM per method and the zero-shot HM as a dashed line (the bars of ``scaleprompt plot``,
:func:`scaleprompt.report.figures.bars_figure`).

    .venv/bin/python bench/microworld_table.py                       # 9 methods x 3 seeds, about 30-40 minutes
    .venv/bin/python bench/microworld_table.py --methods coop,provp_ref --seeds 1 --datasets MicroWorldSketch
    .venv/bin/python bench/microworld_table.py --runs runs/bench_crop008 --tag _crop008 \
        --overrides data.train_crop_min_scale=0.08            # the papers' crop instead of the recipes' 0.5

Not a test: it logs the table and asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scaleprompt.methods.registry import list_methods  # noqa: E402
from scaleprompt.report.aggregate import aggregate  # noqa: E402
from scaleprompt.report.figures import bars_figure, figure_groups  # noqa: E402
from scaleprompt.report.load import load_runs  # noqa: E402
from scaleprompt.report.render import to_csv, to_markdown  # noqa: E402
from scaleprompt.report.tables import base2new_tables  # noqa: E402

logger = logging.getLogger("bench.microworld_table")


def run_one(method: str, dataset: str, seed: int, runs: Path, cache: Path, overrides: list[str]) -> float:
    """Train + test one (method, dataset, seed); returns seconds (0 when an earlier bench finished it)."""
    out = runs / dataset / method / f"seed{seed}"
    if (out / "results.json").is_file():
        return 0.0
    cmd = [sys.executable, "scaleprompt/train.py", "--config", f"configs/microworld/{method}.yaml",
           f"data.dataset={dataset}", f"train.seed={seed}", f"train.output_dir={out}", f"data.cache_dir={cache}",
           *overrides]  # fmt: skip
    env = {
        **os.environ,
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
        "GLOO_SOCKET_IFNAME": "lo",
    }
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return time.time() - start


def write_outputs(runs: Path, out: Path, selection: str, tag: str = "") -> str:
    loaded = load_runs([runs])
    rows = aggregate(loaded, selection=selection, metric="top1")
    tables = base2new_tables(rows)
    markdown, csv = to_markdown(tables), to_csv(tables)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"microworld_table{tag}.md").write_text(markdown)
    (out / f"microworld_table{tag}.csv").write_text(csv)
    by_source = {run.source: run for run in loaded}
    for group in figure_groups(rows):  # (the figures of `scaleprompt plot`, one per dataset)
        bars_figure(
            group, out / f"microworld_{group.dataset}{tag}", by_source, ("png",), caption=False,
            title=f"{group.dataset}: base-to-novel, 16 shots, sp-micro-clip, {selection} epoch",
        )  # fmt: skip
    return markdown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(list_methods()))
    ap.add_argument("--datasets", default="MicroWorldClutter")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_microworld")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--selection", default="last", choices=["last", "best_val"])
    ap.add_argument("--overrides", nargs="*", default=[], help="key=value for every run (use another --runs)")
    ap.add_argument("--tag", default="", help="suffix of the output files, e.g. _crop008")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    methods, datasets = args.methods.split(","), args.datasets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(methods) - set(list_methods()))
    if unknown:
        ap.error(f"unknown methods {unknown}; registered: {list_methods()}")
    start = time.time()
    for dataset in datasets:
        for method in methods:
            for seed in seeds:
                seconds = run_one(method, dataset, seed, args.runs, args.runs / "shards", args.overrides)
                logger.info("%s %s seed %d: %.0f s (total %.1f min)", dataset, method, seed, seconds,
                            (time.time() - start) / 60)  # fmt: skip
    markdown = write_outputs(args.runs, args.out, args.selection, args.tag)
    logger.info("%d runs in %.1f min\n%s", len(methods) * len(datasets) * len(seeds), (time.time() - start) / 60,
                markdown)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
