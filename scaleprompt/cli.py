"""Console script ``scaleprompt``.

* ``scaleprompt methods``: the registered methods and their config fields with defaults.
* ``scaleprompt check [--model sp-tiny-vit-12]``: builds every method on a (tiny, offline) backbone, runs one
  SGD step on random images, saves and reloads the prompts, and prints a table.
* ``scaleprompt inspect FILE``: the method, config, classes and backbone stored in a prompt file, and whether its
  tensor checksum is verified.
* ``scaleprompt predict PROMPTS INPUT... [--output FILE]``: classify images (files, folders, globs) with trained
  prompts, one JSON line / CSV row per image.
* ``scaleprompt convert --method NAME --official FILE --classnames a,b,c --out prompts.safetensors [key=value ...]``:
  an official release's checkpoint as a prompt file (docs/porting.md).
* ``scaleprompt results RUNS... [--selection best_val] [--published]``: paper-style tables (markdown + CSV) from
  runs; ``--published`` lays the papers' published averages beside them.
* ``scaleprompt analyze variance|deviation|attention ...``: the papers' analyses (UPT's variance statistics and
  figure, ProVP's feature deviation and t-SNE, prompt-token attention maps); see docs/findings.md.
* ``scaleprompt train --config RECIPE [key=value ...]``: training in this process (= ``scaleprompt/train.py``).
* ``scaleprompt eval PROMPTS [--dataset D --setting S --targets T...] [key=value ...]``: a prompt file tested as
  training tests its prompts, results in the ``results.json`` schema (= ``scaleprompt/evaluate.py``).
* ``scaleprompt tune --space FILE --config RECIPE ... [key=value ...]``: an ablation sweep (= ``tune/ablation.py``).
* ``scaleprompt shards --dataset NAME --root DIR --out DIR [--shots K --seed S --subset base]``: write a dataset
  (after a protocol) as WebDataset shards + manifest; ``scaleprompt datasets`` lists the registered datasets.
* ``scaleprompt recipes [--kind config|ds|space]``: the packaged recipes, DeepSpeed configs and search spaces, each
  usable by name from any folder (``--config provp_ref/base2new``, ``--ds zero2``, ``--space provp_ref``).
* ``scaleprompt plan --model ViT-H-14 --method provp_ref --batch 32 --gpus 8 --zero 3 --precision bf16``: per-GPU
  memory of a training run (weights, prompts, activations counted on the real model), and the largest micro-batch
  that fits (``scaleprompt/plan.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("scaleprompt")

CHECK_CLASSES = ["cat", "dog", "golden retriever", "airplane", "sea turtle"]


def cmd_methods(_: argparse.Namespace) -> int:
    import sys

    from scaleprompt.methods import METHODS

    for name, cls in METHODS.items():
        doc = (
            sys.modules[cls.__module__].__doc__ or cls.__dict__.get("__doc__") or ""
        )  # one module per method
        logger.info("%-10s %s", name, next(iter(doc.strip().splitlines()), ""))
        for field, default in cls.describe_config().items():
            logger.info("    %-16s = %r", field, default)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import torch

    from scaleprompt.backbone import load_clip
    from scaleprompt.methods import build, list_methods, load_prompts, save_prompts

    torch.manual_seed(args.seed)
    backbone = load_clip(args.model, args.pretrained)
    size = backbone.info.image_size
    images = torch.randn(args.batch_size, 3, size, size)
    labels = torch.arange(args.batch_size) % len(CHECK_CLASSES)
    logger.info(
        "%-10s %10s %10s %10s %8s  %s", "method", "trainable", "loss", "step ms", "reload", "loss parts"
    )
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods or list_methods():
            method = build(name, backbone, CHECK_CLASSES)
            params = method.trainable_parameters()
            opt = torch.optim.SGD(params, lr=1e-3) if params else None
            start = time.perf_counter()
            out = method.train().loss(images, labels)
            if opt is not None:
                out.loss.backward()
                opt.step()
            step_ms = 1000 * (time.perf_counter() - start)
            path = save_prompts(method.eval(), Path(tmp) / f"{name}.safetensors")
            with torch.no_grad():
                same = torch.equal(load_prompts(path, backbone).eval().logits(images), method.logits(images))
            failures += not same
            parts = " ".join(f"{k}={v.item():.4f}" for k, v in out.parts.items())
            n = sum(p.numel() for p in params)
            logger.info("%-10s %10d %10.4f %10.1f %8s  %s", name, n, out.loss.item(), step_ms, same, parts)
    return 1 if failures else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """The metadata (JSON entries decoded, the others as strings), whether the tensor checksum is verified, the
    tensors' shapes and their counts of values that are not finite. A damaged file or bad metadata is one line
    (exit 2)."""
    # (no torch: answers at once)
    from scaleprompt.promptfile import CHECKSUM_ENTRY, decode_metadata, read_prompt_bytes

    raw = read_prompt_bytes(args.file)  # (verifies the checksum: a mismatch is an error naming the file)
    report = decode_metadata(raw.meta, raw.path)
    report["checksum"] = (
        f"verified ({CHECKSUM_ENTRY})"
        if raw.checksum == "verified"
        else f"absent (the file records no {CHECKSUM_ENTRY}: its tensors cannot be verified)"
    )
    report["tensors"] = {k: v["shape"] for k, v in raw.table().items()}
    report["non_finite_values"] = raw.non_finite()  # (eval, predict and load_prompts refuse such a file)
    logger.info("%s", json.dumps(report, indent=2))
    if report["non_finite_values"]:
        logger.warning("%s holds values that are not finite: eval and predict refuse it", args.file)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from typing import get_args

    from scaleprompt.recipes import KINDS, RecipeKind, list_recipes

    kinds: list[RecipeKind] = [args.kind] if args.kind else list(get_args(RecipeKind))
    for kind in kinds:
        names = list_recipes(kind)
        logger.info("%s (%s): %d", KINDS[kind].what, {"config": "--config", "ds": "--ds", "space": "--space"}[kind],
                    len(names))  # fmt: skip
        for name in names:
            logger.info("    %s", name)
    return 0


def cmd_datasets(_: argparse.Namespace) -> int:
    from scaleprompt.data.datasets import DATASETS

    for name, spec in DATASETS.items():
        logger.info(
            "%-20s aliases: %-40s%s", name, ", ".join(spec.aliases), " (evaluation only)" * spec.eval_only
        )
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from scaleprompt.data import Protocol, load_dataset, write_shards

    dataset = load_dataset(args.dataset, args.root)
    protocol = None if args.shots is None else Protocol(shots=args.shots, seed=args.seed, subset=args.subset)
    manifest = write_shards(
        dataset, args.out, protocol, splits=tuple(args.splits), shard_size=args.shard_size,
        min_shards=args.min_shards, processes=args.processes, max_image_size=args.max_image_size,
        overwrite=args.overwrite, allow_fewer_shots=args.allow_fewer_shots,
    )  # fmt: skip
    for split, info in manifest["splits"].items():
        logger.info("%-5s %7d images in %4d shards", split, info["count"], len(info["shards"]))
    logger.info("%d classes; manifest: %s", len(manifest["classnames"]), Path(args.out) / "manifest.json")
    return 0


PREDICT_HELP = """Classify images with saved prompts: one record per image, its path and top-k classes with their
probabilities, as JSON lines ({"path": ..., "top": [{"class": ..., "prob": ...}, ...]}) or CSV rows
(path,class_1,prob_1,...,class_k,prob_k). The records go to --output or stdout, logs and the progress bar to
stderr. Inputs: image files, folders (searched recursively for .bmp .gif .jpeg .jpg .png .tif .tiff .webp, any
case; hidden files skipped) and glob patterns (quote them; ** spans folders), in the order given, each folder's
and pattern's images sorted, duplicates once. Images are read one batch at a time.

  scaleprompt predict prompts.safetensors photos/ 'more/**/*.jpg' cat.png > predictions.jsonl
  scaleprompt predict prompts.safetensors photos/ --output predictions.csv --top-k 5 --skip-bad"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_predict(args: argparse.Namespace) -> int:
    """Records (JSON lines or CSV) to ``--output`` or stdout; logs and the progress bar to stderr."""
    from scaleprompt.methods.convert import read_classnames
    from scaleprompt.predict import run_predict

    classnames = None
    if args.classnames is not None or args.classnames_file is not None:
        classnames = read_classnames(args.classnames, args.classnames_file)
    return run_predict(
        args.prompts, args.inputs, output=args.output, fmt=args.format, top_k=args.top_k,
        batch_size=args.batch_size, classnames=classnames, device=args.device, skip_bad=args.skip_bad,
        pretrained=None if args.pretrained == "from-file" else args.pretrained,
    )  # fmt: skip


def cmd_convert(args: argparse.Namespace) -> int:
    from scaleprompt.backbone import load_clip
    from scaleprompt.methods.convert import convert_official_file, parse_method_args, read_classnames

    classnames = read_classnames(args.classnames, args.classnames_file)
    method_args = parse_method_args(args.args)
    backbone = load_clip(args.model, args.pretrained)
    done = convert_official_file(
        args.official, args.out, args.method, backbone, classnames, dataset=args.dataset, **method_args
    )
    for ours, official in done.mapping.items():
        logger.info("%-32s <- %s", ours, official)
    logger.info(
        "%s (epoch %s) -> %s: %s over %s, %d classes; %d frozen official tensors ignored",
        args.official, done.checkpoint.epoch, args.out, args.method, args.model, len(classnames), len(done.ignored),
    )  # fmt: skip
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """The table (or ``--json``) on stdout."""
    import sys

    from scaleprompt.methods.convert import parse_method_args
    from scaleprompt.plan import format_plan, parse_size, plan

    ds, zero = None, args.zero
    if args.ds is not None:
        from scaleprompt.engine.config import load_ds_config

        ds = load_ds_config(args.ds)
        zero = ds.get("zero_optimization", {}).get("stage", 0) if zero is None else zero
    result = plan(
        args.model, args.method, batch=args.batch, gpus=args.gpus, zero=2 if zero is None else zero,
        precision=args.precision, grad_checkpointing=args.grad_checkpointing, classes=args.classes,
        text_chunk=args.text_chunk, gpu_memory=parse_size(args.gpu_memory),
        method_args=parse_method_args(args.method_arg), optimizer=args.optimizer, name_tokens=args.name_tokens,
        ds_config=ds,
    )  # fmt: skip
    sys.stdout.write((result.to_json() if args.json else format_plan(result)) + "\n")
    return 0


PLAN_HELP = """Per-GPU memory of a training run: frozen weights (ZeRO-3: partitioned, plus the gathered working set),
buffers, prompts with their gradients, fp32 master and optimizer states, the activations kept for backward and the
largest recomputation (counted on the real method at 1-2 blocks per tower, random weights, CPU, then scaled
exactly to the full depth), the input batch and an allowance for the CUDA context; and the largest micro-batch per
GPU that fits --gpu-memory. Nothing is downloaded; the pretrained weights do not matter.

  scaleprompt plan --model ViT-H-14 --method provp_ref --batch 32 --gpus 8 --zero 3 --precision bf16
  scaleprompt plan --model ViT-L-14 --method coop --batch 32 --classes 1000 --text-chunk 100 --grad-checkpointing"""


def _add_plan_parser(sub: Any) -> None:
    plan = sub.add_parser(
        "plan",
        help="per-GPU memory of a training run and the largest micro-batch that fits",
        description=PLAN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument(
        "--model", required=True, help="open_clip model name (ViT-B-16, ViT-H-14, sp-tiny-vit, ...)"
    )
    plan.add_argument("--method", required=True, help="method name (scaleprompt methods)")
    plan.add_argument(
        "--batch", type=int, required=True, help="micro-batch PER GPU (images per forward pass)"
    )
    plan.add_argument(
        "--gpus", type=int, default=8, help="data-parallel GPUs (ZeRO's partition count; default 8)"
    )
    plan.add_argument("--zero", type=int, help="ZeRO stage 0-3 (default: the --ds file's stage, else 2)")
    plan.add_argument("--precision", default="bf16", help="fp32, bf16 or fp16 (default bf16)")
    plan.add_argument("--grad-checkpointing", action="store_true", help="model.grad_checkpointing=true")
    plan.add_argument("--classes", type=int, default=1000, help="classes per step (default 1000)")
    plan.add_argument("--text-chunk", type=int, default=0, help="model.text_chunk (default 0: all at once)")
    plan.add_argument(
        "--gpu-memory", default="80GB", help="memory per GPU: 80GB (10^9 bytes), 40GiB (2^30), ..."
    )
    plan.add_argument(
        "--method-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method config field (repeatable), e.g. n_ctx=16",
    )
    plan.add_argument("--optimizer", default="sgd", help="sgd (momentum: 1 state) or adamw (2 states)")
    plan.add_argument(
        "--name-tokens", type=int, default=8, help="tokens of the longest class name (default 8)"
    )
    plan.add_argument(
        "--ds",
        help="DeepSpeed JSON (file or packaged name) whose ZeRO settings apply "
        "(default: the packaged zero3 for ZeRO-3)",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=cmd_plan)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Every subcommand: a bad input is one line on stderr and exit code 2 (``--debug``: the traceback)."""
    from scaleprompt.errors import run_entry_point

    return run_entry_point(_main, argv, prog="scaleprompt")


def build_parser() -> argparse.ArgumentParser:
    """The ``scaleprompt`` parser (``results``, ``tune`` and ``pretrain-microworld`` are listed here for the help
    text; their own parsers take over in :func:`_main`)."""
    parser = argparse.ArgumentParser(prog="scaleprompt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="list methods and their config defaults").set_defaults(func=cmd_methods)
    check = sub.add_parser("check", help="one training step + save/load round trip for every method")
    check.add_argument(
        "--model", default="sp-tiny-vit-12", help="open_clip model name (default: tiny, offline)"
    )
    check.add_argument("--pretrained", default=None, help="pretrained tag, local file or none")
    check.add_argument("--methods", nargs="*", help="subset of methods (default: all)")
    check.add_argument("--batch-size", type=int, default=8, help="random images per step (default: 8)")
    check.add_argument("--seed", type=int, default=0, help="seed of the images and prompts (default: 0)")
    check.set_defaults(func=cmd_check)
    inspect = sub.add_parser("inspect", help="print what a prompt file holds")
    inspect.add_argument("file", help="a prompt file (prompts.safetensors)")
    inspect.set_defaults(func=cmd_inspect)
    sub.add_parser("datasets", help="list the registered datasets").set_defaults(func=cmd_datasets)
    recipes = sub.add_parser(
        "recipes",
        help="list the packaged recipes, DeepSpeed configs and search spaces (usable by name anywhere)",
    )
    recipes.add_argument(
        "--kind", choices=["config", "ds", "space"], help="only one kind (default: all three)"
    )
    recipes.set_defaults(func=cmd_recipes)
    shards = sub.add_parser("shards", help="write a dataset as WebDataset shards + manifest")
    shards.add_argument(
        "--dataset", required=True, help="registered name, folder:<path>, or a .json/.csv split"
    )
    shards.add_argument("--root", help="folder holding the datasets (CoOp layout)")
    shards.add_argument("--out", required=True, help="output folder for the shards and manifest.json")
    shards.add_argument(
        "--shots", type=int, default=None, help="few-shot K (omit: no protocol; 0: all images)"
    )
    shards.add_argument(
        "--allow-fewer-shots", action="store_true",
        help="classes with fewer training images than --shots keep what they have (default: refused, naming them)",
    )  # fmt: skip
    shards.add_argument("--seed", type=int, default=1, help="few-shot sampling seed (default: 1)")
    shards.add_argument(
        "--subset", choices=["all", "base", "new"], default="all", help="classes: all, base half or new half"
    )
    shards.add_argument(
        "--splits", nargs="+", default=["train", "val", "test"], choices=["train", "val", "test"],
        help="splits to write (default: all three)",
    )  # fmt: skip
    shards.add_argument("--shard-size", type=int, default=1000, help="max samples per shard")
    shards.add_argument(
        "--min-shards", type=int, default=8, help="at least this many shards per split (>= ranks x workers)"
    )
    shards.add_argument("--processes", type=int, default=1, help="writer processes")
    shards.add_argument(
        "--max-image-size", type=int, default=None, help="re-encode images whose short side is larger"
    )
    shards.add_argument(
        "--overwrite", action="store_true", help="replace shards of a different plan in --out"
    )
    shards.set_defaults(func=cmd_shards)
    results = sub.add_parser(
        "results", help="paper-style tables from many runs' results.json", add_help=False
    )
    results.set_defaults(func=None)
    analyze = sub.add_parser(
        "analyze",
        help="the papers' analyses: variance statistics, feature deviation, attention maps",
        add_help=False,
    )
    analyze.set_defaults(func=None)
    train = sub.add_parser(
        "train", help="train prompts in this process (= scaleprompt/train.py; the deepspeed launcher and torchrun "
        "take the script path)", add_help=False,
    )  # fmt: skip
    train.set_defaults(func=None)
    evaluate = sub.add_parser(
        "eval", help="test a prompt file on a dataset's setting, as training does (= scaleprompt/evaluate.py)",
        add_help=False,
    )  # fmt: skip
    evaluate.set_defaults(func=None)
    tune = sub.add_parser(
        "tune", help="an ablation sweep (Ray Tune + Optuna); = tune/ablation.py", add_help=False
    )
    tune.set_defaults(func=None)
    pretrain = sub.add_parser(
        "pretrain-microworld",
        help="pretrain the micro-world CLIP (rebuilds the shipped weights)",
        add_help=False,
    )
    pretrain.set_defaults(func=None)
    predict = sub.add_parser(
        "predict", help="classify images with saved prompts (JSON lines / CSV)", description=PREDICT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    predict.add_argument("prompts", help="a prompt file written by training (prompts.safetensors)")
    predict.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) and quoted glob patterns"
    )
    predict.add_argument("--output", "-o", help="write the records to this file (default: stdout)")
    predict.add_argument(
        "--format", choices=["jsonl", "csv"], help="record format (default: csv for a .csv --output, else jsonl)",
    )  # fmt: skip
    predict.add_argument(
        "--top-k", type=_positive_int, default=3, help="classes per image (default 3; at most all classes)"
    )
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass")
    new_names = predict.add_mutually_exclusive_group()
    new_names.add_argument("--classnames", help="comma-separated class names to use (default: the file's)")
    new_names.add_argument("--classnames-file", help="one class name per line (blank lines ignored)")
    predict.add_argument(
        "--skip-bad", action="store_true", help="skip (and report) unreadable images instead of stopping"
    )
    predict.add_argument(
        "--pretrained", default="from-file", help="backbone weights (default: as recorded in the file)"
    )
    predict.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    predict.set_defaults(func=cmd_predict)
    convert = sub.add_parser("convert", help="turn an official release's checkpoint into a prompt file")
    convert.add_argument(
        "--method", required=True, help="coop, cocoop, ivlp, maple, vpt_deep, upt, provp, provp_ref"
    )
    convert.add_argument(
        "--official", required=True, help="the release's model.pth.tar-<epoch> / model-best.pth.tar"
    )
    names = convert.add_mutually_exclusive_group(required=True)
    names.add_argument("--classnames", help="comma-separated class names, in the training label order")
    names.add_argument("--classnames-file", help="a file with one class name per line")
    convert.add_argument("--model", default="ViT-B-16", help="open_clip model name (default: ViT-B-16)")
    convert.add_argument(
        "--pretrained", default="openai", help="weights recorded in the file (default: openai)"
    )
    convert.add_argument(
        "--dataset",
        help="the run's dataset: vpt_deep (UPT layout) and provp(_ref) get the release's template for it",
    )
    convert.add_argument("--out", required=True, help="the prompt file to write (.safetensors)")
    convert.add_argument(
        "args", nargs="*", metavar="key=value", help="method config fields, e.g. templates=[...]"
    )
    convert.set_defaults(func=cmd_convert)
    _add_plan_parser(sub)
    return parser


def _main(argv: list[str]) -> int:
    parser = build_parser()
    if argv[:1] == ["results"]:  # the aggregator has its own parser
        from scaleprompt.report.tables import main as results_main

        return results_main(argv[1:])
    if argv[:1] == ["analyze"]:  # so do the analyses
        from scaleprompt.analysis.cli import main as analyze_main

        return analyze_main(argv[1:], prog="scaleprompt analyze")
    if argv[:1] == ["train"]:  # so does training
        from scaleprompt.train import main as train_main

        return train_main(argv[1:], prog="scaleprompt train")
    if argv[:1] == ["eval"]:  # so does evaluation
        from scaleprompt.evaluate import main as eval_main

        return eval_main(argv[1:], prog="scaleprompt eval")
    if argv[:1] == ["tune"]:  # so does the sweep driver
        from scaleprompt.search.cli import main as tune_main

        return tune_main(argv[1:], prog="scaleprompt tune")
    if argv[:1] == ["pretrain-microworld"]:  # so does the pretraining command
        from scaleprompt.microworld.pretrain import main as pretrain_main

        return pretrain_main(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
