"""Train prompts on your own images, test them, classify new images: the Python API in one script.

    python examples/train_evaluate_predict.py /data/my_classes --model ViT-B-16 --pretrained openai

``/data/my_classes`` holds one folder of images per class (``<class>/*.jpg``), or ``train/``, ``val/`` and
``test/`` folders of class folders. Without a split, scaleprompt splits every class 50 / 20 / 30 (train / val /
test, a fixed seed) and logs the sizes. Everything here is what the command line does (``scaleprompt train``,
``scaleprompt eval``, ``scaleprompt predict``), from Python.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import scaleprompt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", help="a folder of class folders")
    parser.add_argument("--model", default="ViT-B-16", help="an open_clip model name")
    parser.add_argument("--pretrained", default="openai", help="its weights: a tag, a local file, or 'none'")
    parser.add_argument(
        "--method", default="coop", help="coop, cocoop, vpt_deep, ivlp, maple, provp_ref, upt"
    )
    parser.add_argument("--shots", type=int, default=16, help="training images per class (0: all)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="runs/my_classes", help="the run folder")
    args = parser.parse_args()

    # 1. train: a method's defaults, your data and backbone; the result is the run's results.json, typed
    result = scaleprompt.train(
        None,
        model={"name": args.model, "pretrained": None if args.pretrained == "none" else args.pretrained},
        method={"name": args.method},
        data={"dataset": f"folder:{args.data}", "shots": args.shots},
        optim={"epochs": args.epochs},
        eval={"zero_shot_baseline": True},
        train={"output_dir": args.out},
    )
    test = result.results["last"].test
    zero_shot = result.zero_shot.test if result.zero_shot else None
    print(f"{result.method}: test top-1 {test.top1:.2f} on {test.images} images", end="")
    print(f" (zero-shot CLIP {zero_shot.top1:.2f})" if zero_shot else "")

    # 2. evaluate the exported prompt file again (here: on the same test split; data={"dataset": ...} for another)
    prompts = Path(args.out) / "prompts.safetensors"
    again = scaleprompt.evaluate(prompts)
    assert again.results["last"].test == test  # the same prompts, the same images: the same numbers

    # 3. classify images with the prompts
    predictor = scaleprompt.Predictor(prompts)
    images = sorted(p for p in Path(args.data).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[
        :5
    ]
    for image, top in zip(images, predictor.classify_files(images, top_k=2), strict=True):
        print(image, " ".join(f"{name} {prob:.2f}" for name, prob in top))


if __name__ == "__main__":
    main()
