"""Launched by the deepspeed launcher (2 ranks, gloo) in tests/test_zero3.py: ZeRO-3 with every prompt tensor
partitioned (``stage3_param_persistence_threshold`` 0).

1. ``PromptedModel.load_snapshot`` puts the best-validation prompts back into every rank's partition (DeepSpeed drops
   writes made inside a gather without a modifier rank: the "best" prompts were then the last ones).
2. An evaluation whose ranks hold different batch counts finishes (each ZeRO-3 forward is collective).

deepspeed --num_gpus 2 tests/zero3_driver.py --out result.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from scaleprompt.backbone import load_clip  # noqa: E402
from scaleprompt.engine.config import load_run_config  # noqa: E402
from scaleprompt.engine.distributed import init_distributed  # noqa: E402
from scaleprompt.engine.evaluate import evaluate  # noqa: E402
from scaleprompt.engine.model import PromptedModel  # noqa: E402
from scaleprompt.methods.registry import build  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--no-lockstep", action="store_true", help="(to show the deadlock the lockstep prevents)")
parser.add_argument("--local_rank", type=int, default=None)
args = parser.parse_args()

dist = init_distributed(args.local_rank)
cfg = load_run_config(
    None, ["method.name=provp_ref", "method.args.n_ctx=4", "optim.batch_size=4", "optim.lr=0.5"]
)
torch.manual_seed(0)
classes = ["red cat", "blue dog", "green bird"]
method = build("provp_ref", load_clip("sp-tiny-vit", None), classes, **cfg.method.args)
ds = json.loads((Path(__file__).resolve().parents[1] / "ds_configs" / "zero3.json").read_text())
ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
model = PromptedModel(method, cfg, ds, dist, micro=2, accumulation=1)
partitioned = all(getattr(p, "ds_numel", 0) > p.numel() for p in model.trainable)
g = torch.Generator().manual_seed(dist.rank)
images, labels = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 2])

model.module.train()
best = model.snapshot()
model.module.backward(model.module(images, labels).loss)
model.module.step()
last = model.snapshot()
model.load_snapshot(best)
restored = model.snapshot()
with model.gathered(prompts_only=True):  # what the rank computes with: its gathered prompts
    used = {k: v.detach().clone() for k, v in model.method.prompt_state_dict().items()}

model.module.eval()
batches = [(images, labels)] * (3 if dist.rank == 0 else 1)  # uneven shares: 3 batches on rank 0, 1 on rank 1
accuracy = evaluate(model.module, batches, len(classes), dist.device, lockstep=not args.no_lockstep)

if dist.is_main:
    Path(args.out).write_text(
        json.dumps(
            {
                "partitioned": partitioned,
                "moved": max((last[k] - best[k]).abs().max().item() for k in best),
                "restored_error": max((restored[k] - best[k]).abs().max().item() for k in best),
                "used_error": max((used[k] - best[k]).abs().max().item() for k in best),
                "images": accuracy["images"],
            }
        )
    )
