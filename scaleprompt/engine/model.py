"""The method inside DeepSpeed: the DeepSpeed engine, its client optimizer over the prompts, and what ZeRO-3 needs.

:class:`PromptedModel` wraps a built method in a DeepSpeed engine (``ds_engine``; ZeRO 1/2/3, fp32 / bf16 / fp16)
with a client torch SGD / AdamW over the prompt parameters only, the weights-only checkpoint engine
(:func:`~scaleprompt.engine.checkpoint.use_weights_only_checkpoints`) and the ZeRO-3 registration of the frozen
tensors the encoders read directly. It holds state and offers what the loop and the evaluation need: the module to
run (``module``), a context that gathers partitioned parameters (``gathered``), prompt snapshots and the export of
the prompt file. A method without trainable parameters (zero-shot CLIP) gets no DeepSpeed engine.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError

from scaleprompt.config import ConfigError
from scaleprompt.engine.checkpoint import use_weights_only_checkpoints
from scaleprompt.engine.config import RunConfig, describe_validation_error
from scaleprompt.engine.distributed import DistInfo, barrier
from scaleprompt.errors import OutputError
from scaleprompt.methods import save_prompts
from scaleprompt.methods.base import PromptMethod

logger = logging.getLogger(__name__)


def deepspeed_config(
    base: dict[str, Any] | None,
    micro: int,
    accumulation: int,
    world: int,
    precision: str,
    grad_clip: float = 0.0,
) -> dict[str, Any]:
    """The DeepSpeed JSON of this run: ``base`` (the ``--ds`` JSON; None: ZeRO stage 0) with the batch geometry
    ``micro`` x ``accumulation`` x ``world``, the ``precision`` and the clipping ``grad_clip`` of the recipe (the
    recipe wins; changes are logged). Clipping is always written: DeepSpeed's own default is 1.0, the releases do
    not clip. Under bf16 / fp16 the gradients are reduced over ranks in fp32 (``communication_data_type``, unless
    the JSON says otherwise): a few thousand prompt values, so the wider all-reduce costs nothing that matters."""
    cfg = copy.deepcopy(base or {"zero_optimization": {"stage": 0}})
    wanted = {
        "train_batch_size": micro * accumulation * world,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": grad_clip,
    }
    for key, value in wanted.items():
        if key in cfg and cfg[key] != value:
            logger.info(
                "DeepSpeed %s: %s in the JSON, %s from the recipe (recipe wins)", key, cfg[key], value
            )
        cfg[key] = value
    cfg.setdefault("bf16", {})["enabled"] = precision == "bf16"
    cfg.setdefault("fp16", {})["enabled"] = precision == "fp16"
    if precision in ("bf16", "fp16"):  # the prompts' gradients summed over ranks in fp32, not in 16 bits
        cfg.setdefault("communication_data_type", "fp32")
    cfg.pop("optimizer", None)  # the client optimizer holds only the prompts
    cfg.pop("scheduler", None)  # the per-epoch schedule is ours
    cfg.setdefault("steps_per_print", 10**9)
    cfg.setdefault("zero_allow_untested_optimizer", True)  # torch SGD / AdamW over the prompts
    return cfg


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while writing ``path`` (disk full, permissions) as a one-line OutputError naming it."""
    try:
        yield
    except (OSError, SafetensorError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise OutputError(
            f"cannot write {path}: {reason}; the checkpoints are intact (free space, then --resume)"
        ) from None


class PromptedModel:
    """``method`` in a DeepSpeed engine (when it has prompts to train), set up from the run config ``cfg``, the
    DeepSpeed JSON ``ds_base`` and this process's place ``dist``, with ``micro`` x ``accumulation`` x world size =
    the recipe's global batch. ``training``: False when the DeepSpeed engine only runs the method (evaluation); its
    batch geometry is then unused."""

    def __init__(
        self,
        method: PromptMethod,
        cfg: RunConfig,
        ds_base: dict[str, Any] | None,
        dist: DistInfo,
        micro: int = 1,
        accumulation: int = 1,
        training: bool = True,
    ) -> None:
        self.method, self.dist, self.training = method, dist, training
        self.trainable = method.trainable_parameters()
        self.ds_engine: Any = None  # deepspeed.DeepSpeedEngine (untyped)
        self.optimizer: torch.optim.Optimizer | None = None
        self.zero_stage = 0
        if self.trainable:
            self._initialize(cfg, ds_base, micro, accumulation)
        else:
            method.to(dist.device)

    def _initialize(
        self, cfg: RunConfig, ds_base: dict[str, Any] | None, micro: int, accumulation: int
    ) -> None:
        import deepspeed  # (here: ~5 s of import that a command without a DeepSpeed engine never pays)

        world = self.dist.world_size
        ds_cfg = deepspeed_config(
            ds_base, micro, accumulation, world, cfg.train.precision, cfg.optim.grad_clip
        )
        self.zero_stage = ds_cfg.get("zero_optimization", {}).get("stage", 0)
        optim = cfg.optim
        if optim.name == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.trainable, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(
                self.trainable, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
            )
        try:
            self.ds_engine, self.optimizer, _, _ = deepspeed.initialize(
                model=self.method, model_parameters=self.trainable, optimizer=optimizer, config=ds_cfg
            )
        except ValidationError as exc:  # (load_ds_config checked the ZeRO section; this is the fallback)
            raise ConfigError(f"DeepSpeed config rejected: {describe_validation_error(exc)}") from None
        use_weights_only_checkpoints(self.ds_engine)
        if self.zero_stage == 3:
            self._register_external_parameters()
        values = sum(getattr(p, "ds_numel", p.numel()) for p in self.trainable)  # (ZeRO-3: p is partitioned)
        if not self.training:
            logger.info(
                "DeepSpeed ZeRO-%d, %s, world %d (evaluation); %d prompt values",
                self.zero_stage,
                cfg.train.precision,
                world,
                values,
            )
            return
        logger.info(
            "DeepSpeed ZeRO-%d, %s, micro batch %d x accumulation %d x world %d = %d; %d trainable values",
            self.zero_stage,
            cfg.train.precision,
            micro,
            accumulation,
            world,
            optim.batch_size,
            values,
        )

    def _register_external_parameters(self) -> None:
        """ZeRO-3 gathers a module's parameters when its forward runs; the encoders read a few frozen tensors
        directly (class / positional embeddings, projections, logit scale), so they are registered."""
        import deepspeed  # (import cost: see _initialize)

        register_external_parameter = deepspeed.zero.register_external_parameter
        m = self.method
        visual, text = m.vision.visual, m.text.tower
        for p in (visual.class_embedding, visual.positional_embedding, visual.proj):
            if isinstance(p, torch.nn.Parameter):
                register_external_parameter(m.vision, p)
        for p in (text.positional_embedding, text.text_projection):
            if isinstance(p, torch.nn.Parameter):
                register_external_parameter(m.text, p)
        register_external_parameter(m, m.clip.logit_scale)

    @property
    def module(self) -> Any:
        """What to run: the DeepSpeed engine when there is one, else the method."""
        return self.ds_engine if self.ds_engine is not None else self.method

    @contextlib.contextmanager
    def gathered(
        self, prompts_only: bool = False, modify: bool = False, class_prompts: bool = False
    ) -> Iterator[None]:
        """Outside the engine's forward, ZeRO-3 parameters must be gathered explicitly, and only what is read: the
        trained ones (``prompts_only``: a snapshot or an export needs nothing else), the token embedding
        (``class_prompts``: moving the method to other classes embeds their class prompts, nothing more; the
        towers run later, inside the engine's forward), or else all of them. ``modify``: what is written to them
        inside is kept. DeepSpeed treats a gather without a modifier rank as read-only and restores the old
        partitions on exit; with one, rank 0's values are broadcast and partitioned again (every rank writes the
        same values here)."""
        if self.ds_engine is not None and self.zero_stage == 3:
            import deepspeed  # (import cost: see _initialize)

            if prompts_only:
                params = list(self.trainable)
            elif class_prompts:
                params = [self.method.text.tower.token_embedding.weight]
            else:
                params = list(self.method.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
                yield
        else:
            yield

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the prompts (the best-validation prompts are kept this way)."""
        with self.gathered(prompts_only=True):
            return {k: v.detach().cpu().clone() for k, v in self.method.prompt_state_dict().items()}

    def load_snapshot(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Set the prompts to ``snapshot`` (a :meth:`snapshot`) on every rank (under ZeRO-3 into every rank's partition)."""
        params = dict(self.method.named_parameters())
        with self.gathered(prompts_only=True, modify=True), torch.no_grad():
            for k, v in snapshot.items():
                params[k].copy_(v.to(params[k].device))

    def export(self, path: Path, extra_metadata: dict[str, str] | None = None) -> None:
        """Write the prompt file ``path`` (rank 0; collective under ZeRO-3); ``extra_metadata``: string entries added to the
        file's metadata (which selection of which run the prompts are)."""
        with self.gathered(prompts_only=True):
            if self.dist.is_main:
                with writing(path):
                    save_prompts(self.method, path, extra_metadata)
        barrier()
