# %% [markdown]
# # Base-to-novel prompt learning, step by step
#
# A notebook-style script (cells marked `# %%`: run it in VS Code / Jupyter with jupytext, or as a plain script).
# It trains ProVP-Ref on the base half of the classes of the shipped micro-world (a tiny CLIP pretrained on CPU
# and a generated, shifted dataset: nothing downloaded), compares it with zero-shot CLIP on base and novel
# classes, and classifies images of novel classes the prompts never saw. About 2 minutes on 2 CPU cores.

# %%
import json
import logging
import os
from pathlib import Path

import scaleprompt
from scaleprompt.data.datasets import load_dataset

logging.basicConfig(level=logging.WARNING, format="%(message)s")  # your notebook's logging (kept as it is)
logging.getLogger("scaleprompt").setLevel(logging.INFO)

SETTINGS = {
    "recipe": "demo",  # configs/demo.yaml: ProVP-Ref, sp-micro-clip, MicroWorldClutter, base-to-novel
    "overrides": {"optim.epochs": 4, "train.output_dir": "runs/notebook"},
}
SETTINGS.update(json.loads(os.environ.get("SCALEPROMPT_EXAMPLE_SETTINGS", "{}")))  # (the tests shrink it)

# %% [markdown]
# ## Train on the base classes
# The result is the run's `results.json`, typed: zero-shot CLIP and the learned prompts on the same test sets.

# %%
result = scaleprompt.train(SETTINGS["recipe"], SETTINGS["overrides"])
for name, numbers in (("zero-shot CLIP", result.zero_shot), ("learned prompts", result.results["last"])):
    assert numbers is not None
    print(f"{name:>16}: base {numbers.base.top1:5.2f}  novel {numbers.novel.top1:5.2f}  HM {numbers.hm:5.2f}")

# %% [markdown]
# ## Classify images of classes the prompts never saw
# The prompt file of a base-to-novel run records the novel classes: the Predictor scores base + novel classes.

# %%
predictor = scaleprompt.Predictor(Path(result.config["train"]["output_dir"]) / "prompts.safetensors")
print("scoring", predictor.scored)
data = result.config["data"]
test = load_dataset(
    data["dataset"], data["root"]
).test  # (the micro-world's images, generated into the cache)
novel_images = [d for d in test if d.classname in predictor.novel_classnames][:200]
top = predictor.classify_files([d.path for d in novel_images], top_k=1)
right = sum(t[0][0] == d.classname for t, d in zip(top, novel_images, strict=True))
print(
    f"{right} of {len(novel_images)} novel-class images right among all {len(predictor.classnames)} classes"
)
for d, t in list(zip(novel_images, top, strict=True))[:5]:
    print(f"  {Path(d.path).name}: {d.classname!r} -> {t[0][0]!r} ({t[0][1]:.2f})")
