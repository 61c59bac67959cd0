"""Where a training step's time goes: torch.profiler over one step of each method, in the configurations of
``bench/train_speed.py --against`` (ViT-B/16 random init, CPU fp32, batch 8).

Per item: the step time (median of ``--iters`` after one warm-up), then the ``--top`` operators by self CPU time
with their share of the profiled step, and the share of the dense matmuls (oneDNN linear, addmm, mm, bmm) and of
attention. What is left after the matmuls is what a faster step could still remove.

    .venv/bin/python bench/profile_step.py                                  # the 5-class items, about 2 minutes
    .venv/bin/python bench/profile_step.py --sets hundred --methods coop,maple --top 8

Not a test: it logs numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from speed_against import SETS, cases
from speed_worker import sgd_step
from torch.profiler import ProfilerActivity, profile

from scaleprompt.backbone import load_clip
from scaleprompt.methods.registry import build, list_methods

logger = logging.getLogger("bench.profile_step")
MATMUL = ("mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::bmm")
ATTENTION = "scaled_dot_product"


def profile_item(loaded, case, iters: int, top: int) -> str:  # noqa: ANN001 - a Backbone and a speed_against.Case
    item = case.item
    names = list(IMAGENET_CLASSNAMES[: item["classes"]])
    torch.manual_seed(0)
    if item["kind"] == "zeroshot":
        method = build("zsclip", loaded, names)
        templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES[: item["templates"]]]  # open_clip: callables

        def run() -> None:
            method.template_features(templates)

    else:
        method = build(item["method"], loaded, names, **item["overrides"])
        size = loaded.info.image_size
        images = torch.randn(item["batch"], 3, size, size)
        labels = torch.randint(0, item["classes"], (item["batch"],))
        run = sgd_step(method, images, labels)

    run()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    matmul = sum(e.self_cpu_time_total for e in rows if e.key in MATMUL)
    attention = sum(e.self_cpu_time_total for e in rows if ATTENTION in e.key)
    lines = [
        f"{case.label} [{item['classes']} classes, batch {item.get('batch', '-')}]: step {statistics.median(times):.2f} s "
        f"(median of {iters}); profiled {total / 1e6:.2f} s: matmuls {100 * matmul / total:.0f}%, attention "
        f"{100 * attention / total:.0f}%, the rest {100 * (total - matmul - attention) / total:.0f}%"
    ]
    for e in rows[:top]:
        lines.append(
            f"    {e.key[:56]:<56}{e.self_cpu_time_total / 1e3:>9.1f} ms{100 * e.self_cpu_time_total / total:>6.1f}%"
            f"{e.count:>6} calls"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="five", help=f"comma-separated, of {', '.join(SETS)} (default five)")
    ap.add_argument("--methods", default=",".join(list_methods()), help="comma-separated (default: all)")
    ap.add_argument("--iters", type=int, default=2, help="timed steps before the profiled one (default 2)")
    ap.add_argument("--top", type=int, default=6, help="operators listed per item (default 6)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cocoop-batch-100", type=int, default=2)
    ap.add_argument("--zs-templates", type=int, default=2)
    args = ap.parse_args(argv)
    args.against_sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    torch.set_num_threads(args.threads)
    loaded = load_clip("ViT-B-16", None)
    reports = [profile_item(loaded, case, args.iters, args.top) for case in cases(args)]
    logger.info("torch %s, %d threads\n%s", torch.__version__, torch.get_num_threads(), "\n".join(reports))


if __name__ == "__main__":
    main()
