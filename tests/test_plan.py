"""``scaleprompt plan``: the planner's numbers against the real model.

Parameters: the planner's bytes (counted on the meta device) against the real built model's tensors, for every
precision and ZeRO stage's partition rule. Activations: the planner's extrapolation from the 1-2 block model, whose
steps run on fake tensors (shapes, no values, no compute), against the saved-tensor count of one real CPU training
step of the FULL model (the same :class:`SavedBytes` counter; what is tested is the exact scaling in depth, batch
and classes, evaluated at a batch and class count the planner never ran, and that fake steps save what real ones
save), with and without gradient checkpointing and text chunks, in fp32, bf16 and fp16, and (slow) against a real
DeepSpeed ZeRO-3 bf16 engine's step. The fake steps' counts against real steps of the 1-2 block model for the
methods and ZeRO-3 paths the full-model tests leave out; and a full-size model's fake steps compute nothing for
real. Tolerance: none (equal to the byte)."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys

import pytest
import torch
from engine_utils import ROOT, env, free_port
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from scaleprompt import plan as planner
from scaleprompt.backbone import load_clip
from scaleprompt.cli import main
from scaleprompt.config import ConfigError
from scaleprompt.encoders import EncoderOptions
from scaleprompt.methods import build

ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2}


def rows(p: planner.Plan) -> dict[str, int]:
    return {what: nbytes for what, nbytes, _ in p.rows}


def activations(p: planner.Plan) -> dict[str, int]:
    return {what.split(": ")[1]: n for what, n in rows(p).items() if what.startswith("activations: ")}


@pytest.fixture(autouse=True)
def one_thread():
    """The steps here are small (1-2 blocks, batch 1-3): one thread runs them faster than two on a busy machine,
    and the bytes saved do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    with planner._quiet():
        return load_clip("sp-tiny-vit-12")


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    with planner._quiet():
        return load_clip("ViT-B-16")


def real_step(
    backbone, method: str, batch: int, classes: int, ckpt: bool, chunk: int, precision: str = "fp32"
) -> dict[str, int]:
    """Saved bytes of one training step of the full-depth model (what the planner must predict); 16-bit: every
    parameter cast, as DeepSpeed's engine casts the module."""
    backbone.model.set_grad_checkpointing(ckpt)
    try:
        with planner._quiet():
            built = build(
                method, backbone, planner.classnames(classes, 8), options=EncoderOptions(text_chunk=chunk)
            )
        planner._cast(built, planner.DTYPES[precision])
        saved, _ = planner.count_saved(built, batch)
    finally:
        backbone.model.set_grad_checkpointing(False)
        planner._cast(backbone.model, torch.float32)
    return {"vision": saved["vision"], "text": saved["text"], "loss & method": saved["other"]}


# --- the counter ----------------------------------------------------------------------------------------------
def test_the_counter_counts_each_saved_storage_once_and_no_parameter():
    w = nn.Parameter(torch.randn(4, 4))
    x = torch.randn(2, 4, requires_grad=True)
    counter = planner.SavedBytes([w])
    with counter.hooks():
        h = x @ w  # mm saves x (w's gradient) and w (a parameter: not an activation)
        z = h[0].sin() * h[1].cos()  # sin / cos save views of h: h's whole storage stays alive, counted once
        z.sum().backward()  # (mul saves the sin and cos outputs)
    assert counter.totals() == {"vision": 0, "text": 0, "other": x.nbytes + h.nbytes + 2 * z.nbytes}


def test_the_counter_tells_fake_storages_apart_as_real_ones():
    """A fake tensor's storage has no address: it is told by its storage object, which its views share and a copy
    does not."""

    def saved(mode: FakeTensorMode | None) -> dict[str, int]:
        with mode if mode is not None else contextlib.nullcontext():
            w = nn.Parameter(torch.randn(4, 4))
            x = torch.randn(2, 4, requires_grad=True)
        counter = planner.SavedBytes([w])
        with counter.hooks():
            h = x @ w  # saves x (and w: a parameter)
            h[0].sin() * h[1].cos()  # views of h (counted once), the sin and cos outputs
            h.t().contiguous() * h.t()  # a copy of h (a storage of its own) and a view of h
        return counter.totals()

    values = 8 + 8 + 4 + 4 + 8  # x, h, sin, cos, the copy
    assert saved(FakeTensorMode()) == saved(None) == {"vision": 0, "text": 0, "other": 4 * values}


# --- parameters -----------------------------------------------------------------------------------------------
def expected_weight_bytes(model: nn.Module, precision: str, zero: int, gpus: int, persist: int) -> int:
    """DeepSpeed's rule on the real tensors: every parameter cast to the precision (the engine casts the whole module
    under bf16 / fp16); under ZeRO-3 a tensor of more than ``persist`` values is padded to a multiple of the GPUs
    and split, the others stay whole."""
    total = 0
    for p in model.parameters():
        n = p.to(getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision])).nbytes
        total += n if zero < 3 or p.numel() <= persist else math.ceil(p.numel() / gpus) * ELEMENT[precision]
    return total


@pytest.mark.parametrize("model", ["sp-tiny-vit-12", pytest.param("ViT-B-16", marks=pytest.mark.slow)])
def test_parameter_bytes_are_the_real_models(model, tiny, request):
    backbone = tiny if model == "sp-tiny-vit-12" else request.getfixturevalue("vit_b16")
    for method in ("provp_ref", "coop", "maple"):
        arch = planner.architecture(model, method, {}, 7, 8)
        with planner._quiet():
            real = build(method, backbone, planner.classnames(7, 8))
        assert arch.trainable == sum(p.numel() for p in real.trainable_parameters())
        assert arch.buffers == sum(b.nbytes for b in real.buffers())
        assert arch.vision_blocks == len(backbone.model.visual.transformer.resblocks)
    persist = (
        4096 if model == "sp-tiny-vit-12" else 100_000
    )  # (the tiny model's tensors are all below 100000)
    for precision in ELEMENT:
        for zero in (0, 1, 2, 3):
            for gpus in (1, 3, 8):
                got = planner.weight_bytes(arch.frozen, ELEMENT[precision], zero, gpus, persist)
                assert got == expected_weight_bytes(backbone.model, precision, zero, gpus, persist), (
                    precision,
                    zero,
                    gpus,
                )


def test_zero3_splits_the_weights_and_the_plan_reads_the_threshold_from_the_ds_config():
    kwargs = {"batch": 2, "classes": 5, "precision": "fp32", "gpus": 4}
    whole = rows(planner.plan("sp-tiny-vit-12", "coop", zero=2, **kwargs))["frozen backbone weights"]
    split = rows(planner.plan("sp-tiny-vit-12", "coop", zero=3, **kwargs))
    embedding = 49408 * 32  # the only tiny tensor above zero3.json's 100000 values (unused in a step)
    assert split["frozen backbone weights"] == whole - 4 * (embedding - embedding // 4)
    assert split["ZeRO-3 gathered parameters"] == 0
    # DeepSpeed's ZeRO-3 linear (memory_efficient_linear, its default) saves every linear's input; zero3.json
    # turns it off, so ZeRO-3 saves what ZeRO-2 saves
    zero2 = activations(planner.plan("sp-tiny-vit-12", "coop", zero=2, **kwargs))
    assert activations(planner.plan("sp-tiny-vit-12", "coop", zero=3, **kwargs)) == zero2
    deepspeeds = {"zero_optimization": {"memory_efficient_linear": True}}
    assert (
        activations(planner.plan("sp-tiny-vit-12", "coop", zero=3, ds_config=deepspeeds, **kwargs))["text"]
        > (zero2["text"])
    )
    low = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 10}}
    lowered = rows(planner.plan("sp-tiny-vit-12", "coop", zero=3, ds_config=low, **kwargs))
    assert lowered["frozen backbone weights"] < whole / 3
    assert lowered["ZeRO-3 gathered parameters"] > 0


def test_prompt_states_follow_the_zero_stage_and_the_optimizer():
    values, gpus = 1000, 8
    # fp32, no ZeRO, SGD: weights + grads + momentum, all whole
    assert planner.prompt_bytes(values, 4, 0, gpus, "fp32", "sgd") == 3 * 4 * values
    part = 125
    # bf16 ZeRO-1 SGD: bf16 weights and grads whole, fp32 master and momentum split over the GPUs
    assert (
        planner.prompt_bytes(values, 2, 1, gpus, "bf16", "sgd")
        == 2 * values + 2 * values + 4 * part + 4 * part
    )
    # bf16 ZeRO-2 AdamW: bf16 weights whole, bf16 grads / fp32 master / 2 fp32 moments split over the GPUs
    assert (
        planner.prompt_bytes(values, 2, 2, gpus, "bf16", "adamw")
        == 2 * values + 2 * part + 4 * part + 8 * part
    )


def test_the_zero3_working_set_is_bounded_by_the_reuse_distance():
    arch = planner.Architecture(
        frozen={
            "visual.proj": 500_000,
            "visual.transformer.resblocks.0.w": 2_000_000,
            "visual.transformer.resblocks.1.w": 2_000_000,
            "transformer.resblocks.0.w": 1_000_000,
            "token_embedding.weight": 9_000_000,
            "ln_final.weight": 10,
        },
        trainable=0,
        buffers=0,
        vision_blocks=2,
        text_blocks=1,
        text_cache=0,
        image_values=0,
    )
    ds = dict(planner.ZERO3_DEFAULTS)
    # the prompted image tower returns in backward: all of it stays gathered (+ the external projection)
    assert planner.gathered_values(arch, ds, True, False, False) == 500_000 + 4_000_000
    # a no-grad image tower streams: its largest block + the prefetch bucket, at most what the step uses
    ds["stage3_prefetch_bucket_size"] = 1_000_000
    assert planner.gathered_values(arch, ds, False, True, True) == 500_000 + 1_000_000 + 1_000_000 + 2_000_000
    ds["stage3_max_reuse_distance"] = 0
    assert planner.gathered_values(arch, ds, True, True, True) == 500_000 + 1_000_000 + 2_000_000


# --- activations: the full model's real step ------------------------------------------------------------------
TINY_CASES = [("provp_ref", 0), ("coop", 0), ("coop", 2), ("upt", 0), ("upt", 2), ("cocoop", 0), ("maple", 0)]


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize(("method", "chunk"), TINY_CASES)
def test_activations_equal_a_real_full_depth_step_of_the_tiny_model(tiny, method, chunk, ckpt):
    """12 blocks per tower, batch 3 and 5 classes (the planner ran 1-2 blocks, batch 1-2, 2 or 4 classes)."""
    p = planner.plan(
        "sp-tiny-vit-12",
        method,
        batch=3,
        classes=5,
        precision="fp32",
        grad_checkpointing=ckpt,
        text_chunk=chunk,
    )
    assert activations(p) == real_step(tiny, method, 3, 5, ckpt, chunk)


@pytest.mark.parametrize(("method", "chunk", "precision"), [("provp_ref", 0, "bf16"), ("upt", 2, "fp16")])
def test_16_bit_activations_equal_a_real_full_depth_step(tiny, method, chunk, precision):
    """bf16 as measured; fp16 measured as bf16 (same tensors at 2 bytes): equal to a real fp16 step."""
    p = planner.plan("sp-tiny-vit-12", method, batch=3, classes=5, precision=precision, text_chunk=chunk)
    assert activations(p) == real_step(tiny, method, 3, 5, False, chunk, precision)


DEEPSPEED_STEP = """
import json, sys, torch
import deepspeed
from scaleprompt import plan as planner
from scaleprompt.backbone import load_clip
from scaleprompt.encoders import EncoderOptions
from scaleprompt.methods import build

from scaleprompt.engine.distributed import init_distributed

init_distributed()  # (as a run starts its group: gloo, loopback, no DeepSpeed op compiled)
torch.set_num_threads(1)
out = []
for method, chunk, ckpt in json.loads(sys.argv[1]):
    torch.manual_seed(0)
    backbone = load_clip("sp-tiny-vit-12")
    backbone.model.set_grad_checkpointing(ckpt)
    m = build(method, backbone, planner.classnames(5, 8), options=EncoderOptions(text_chunk=chunk))
    params = m.trainable_parameters()
    engine, *_ = deepspeed.initialize(model=m, model_parameters=params, optimizer=torch.optim.SGD(params, lr=0.1),
                                      config=json.loads(sys.argv[2]))
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}  # (the engine casts the whole module)
    m.train()
    if getattr(m, "frozen_text", False):
        with torch.no_grad():
            engine(torch.zeros(1, 3, 32, 32))  # (the class text, encoded once)

    class Counter(planner.SavedBytes):  # ZeRO-3 swaps the parameters' storages: excluded as they are when saved
        def pack(self, t):
            self.owned = {p.data.untyped_storage().data_ptr() for p in m.parameters()}
            self.owned |= {b.untyped_storage().data_ptr() for b in m.buffers()}
            return super().pack(t)

    counter = Counter([])
    for encoder, name in ((m.vision, "vision"), (m.text, "text")):
        encoder.register_forward_pre_hook(lambda *_, name=name: counter.part.append(name))
        encoder.register_forward_hook(lambda *_: counter.part.pop() and None)
    with counter.hooks():
        loss = engine(torch.randn(3, 3, 32, 32), torch.arange(3) % 5).loss
    engine.backward(loss)
    engine.step()
    out.append(counter.totals())
print(json.dumps(out))
"""


@pytest.mark.slow
def test_zero3_activations_equal_a_real_deepspeed_step(tmp_path):
    """A real DeepSpeed ZeRO-3 bf16 engine (one CPU process) over the tiny model with its block weights partitioned
    (persistence threshold 10): the blocks run open_clip's own forward and every linear is DeepSpeed's, which saves
    its input; the planner's numbers are that step's, to the byte."""
    ds = {
        "train_micro_batch_size_per_gpu": 3,
        "train_batch_size": 3,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 10},
        "zero_allow_untested_optimizer": True,
    }
    cases = [("upt", 0, False), ("coop", 2, True), ("vpt_deep", 0, False)]
    environment = {
        **env(tmp_path),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }
    environment.pop("SCALEPROMPT_INIT_METHOD")
    proc = subprocess.run(
        [sys.executable, "-c", DEEPSPEED_STEP, json.dumps(cases), json.dumps(ds)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list((tmp_path / "torch_extensions").glob("*/*"))  # (no DeepSpeed op compiled for it)
    real = json.loads(proc.stdout.strip().splitlines()[-1])
    for (method, chunk, ckpt), counted in zip(cases, real, strict=True):
        p = planner.plan(
            "sp-tiny-vit-12",
            method,
            batch=3,
            classes=5,
            precision="bf16",
            zero=3,
            ds_config=ds,
            grad_checkpointing=ckpt,
            text_chunk=chunk,
        )
        expected = {"vision": counted["vision"], "text": counted["text"], "loss & method": counted["other"]}
        assert activations(p) == expected, method


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "chunk", "ckpt"), [("provp_ref", 0, False), ("coop", 2, True), ("upt", 0, True)]
)
def test_activations_equal_a_real_full_depth_step_of_vit_b16(vit_b16, method, chunk, ckpt):
    p = planner.plan(
        "ViT-B-16", method, batch=1, classes=5, precision="fp32", grad_checkpointing=ckpt, text_chunk=chunk
    )
    assert activations(p) == real_step(vit_b16, method, 1, 5, ckpt, chunk)


# --- fake steps: what real steps save, and no compute ---------------------------------------------------------
FAKE_CASES = [  # every method the full-model tests above leave out, and ZeRO-3's two linears outside the slow test
    ("ivlp", "fp32", None, True, True),
    ("provp", "bf16", (10, True), False, False),
    ("vpt_deep", "bf16", (10, False), True, False),
    ("zsclip", "fp32", None, False, False),
    ("cocoop", "bf16", (10, True), False, True),
]


@pytest.mark.parametrize(("method", "precision", "zero3", "ckpt", "chunk"), FAKE_CASES)
def test_fake_steps_count_what_real_steps_count(method, precision, zero3, ckpt, chunk):
    """The planner's five steps of the 1-2 block model on fake tensors against the same steps on real CPU tensors
    (random weights, forward and backward): the same bytes in every step and part, so the same fits."""
    args = ("sp-tiny-vit-12", method, {}, precision, zero3, ckpt, chunk, 8)
    assert planner.measure(*args, fake=True) == planner.measure(*args, fake=False)


class RealTensors(TorchDispatchMode):
    """The bytes of every real (not fake) tensor an operation returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not isinstance(t, FakeTensor):
                self.made.append((str(func), t.untyped_storage().nbytes()))
        return out


def test_the_planners_steps_compute_nothing_on_a_full_size_model():
    """ViT-bigG-14 (1664 wide, 257 tokens; 2 + 2 blocks: 185M values, 740 MB as real fp32): its weights are fake, and
    in its measured steps (ZeRO-3 bf16 ProVP-Ref, batch 1-3) every tensor of the model's width is fake; what
    operations make for real are the token ids, labels, index and mask tables and the method's prompts before they
    are made fake (below 1 MiB each)."""
    clip, _, mode = planner._reduced("ViT-bigG-14")
    assert mode is not None and all(isinstance(p, FakeTensor) for p in clip.parameters())
    assert not any(isinstance(b, FakeTensor) for b in clip.buffers())  # (the causal mask: read, so real)
    watch = RealTensors()
    with watch:
        measured = planner.measure("ViT-bigG-14", "provp_ref", {}, "bf16", (100_000, True), False, False, 8)
    assert watch.made and max(n for _, n in watch.made) < 2**20, sorted(watch.made, key=lambda m: -m[1])[:5]
    assert measured.vision(32, 48) > 15 * 2**30  # (what was counted: bigG's activations at batch 32)


def working_set(p: planner.Plan) -> int:
    return rows(p)["working set in flight"]


def test_the_working_set_is_one_real_block_or_one_text_chunk(tiny):
    """What is in flight besides the saved activations, against the real 12-block model: under checkpointing one
    block's recomputation (the model's saved bytes minus those of its first 11 blocks); a no-grad image tower (CoOp)
    computes one block at a time (the same block with gradient); a text chunk's recomputation (one step's text
    activations over as many classes as the chunk)."""
    kwargs = {"classes": 5, "precision": "fp32"}
    twelve = real_step(tiny, "provp_ref", 3, 5, False, 0)["vision"]
    with planner._depth(tiny.model, 11, 12):
        eleven = real_step(tiny, "provp_ref", 3, 5, False, 0)["vision"]
    assert working_set(
        planner.plan("sp-tiny-vit-12", "provp_ref", batch=3, grad_checkpointing=True, **kwargs)
    ) == (twelve - eleven)
    with planner._quiet():
        coop = build("coop", tiny, planner.classnames(5, 8))
    with planner._depth(tiny.model, 11, 12):
        eleven = planner.vision_saved(coop, 64)
    assert working_set(planner.plan("sp-tiny-vit-12", "coop", batch=64, **kwargs)) == (
        planner.vision_saved(coop, 64) - eleven
    )
    chunk = real_step(tiny, "coop", 1, 2, False, 0)["text"]  # (2 classes: one chunk of 2)
    assert working_set(planner.plan("sp-tiny-vit-12", "coop", batch=1, text_chunk=2, **kwargs)) == chunk


# --- the largest micro-batch ----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [32, 37])
def test_the_largest_micro_batch_is_the_last_that_fits(batch):
    kwargs = {"classes": 10, "precision": "bf16", "zero": 2}
    exactly = planner.plan("sp-tiny-vit-12", "provp_ref", batch=batch, **kwargs).total
    assert (
        planner.plan("sp-tiny-vit-12", "provp_ref", batch=1, gpu_memory=exactly, **kwargs).largest_batch
        == batch
    )
    just_less = planner.plan("sp-tiny-vit-12", "provp_ref", batch=1, gpu_memory=exactly - 1, **kwargs)
    assert just_less.largest_batch == batch - 1
    one_gib = planner.plan("sp-tiny-vit-12", "provp_ref", batch=1, gpu_memory=2**30, **kwargs)
    assert one_gib.largest_batch == 0  # (the CUDA allowance alone)


# --- sizes and bad inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("80GB", 80 * 10**9),
        ("40GiB", 40 * 2**30),
        ("24gb", 24 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5TB", 15 * 10**11),
        (" 2 GiB ", 2 * 2**30),
        ("1000", 1000),
    ],
)
def test_memory_sizes(text, size):
    assert planner.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "eighty", "80XB", "80 G", "-5GB", "GB"])
def test_bad_memory_sizes_are_config_errors(text):
    with pytest.raises(ConfigError, match="--gpu-memory"):
        planner.parse_size(text)


BASE = ["plan", "--model", "sp-tiny-vit-12", "--method", "coop", "--batch", "2", "--classes", "5"]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (["--model", "ViT-Q-99"], "unknown model 'ViT-Q-99'"),
        (["--method", "cooop"], "unknown method 'cooop'"),
        (["--zero", "4"], "--zero must be 0, 1, 2 or 3"),
        (["--gpu-memory", "80XB"], "'80XB' is not a size"),
        (["--batch", "0"], "--batch must be >= 1"),
        (["--precision", "fp8"], "--precision must be one of"),
        (["--method-arg", "n_ctx=0"], "n_ctx"),
        (["--method-arg", "nope=1"], "nope"),
        (["--method-arg", "n_ctx=30", "--classes", "2"], "--name-tokens"),
    ],
)
def test_bad_inputs_are_one_line_errors(change, said, capsys):
    argv = BASE + change
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaleprompt: error: ") and err.count("\n") == 1 and said in err, err


def test_the_command_prints_the_table_or_json(capsys):
    assert main([*BASE, "--zero", "3", "--grad-checkpointing", "--gpu-memory", "24GB"]) == 0
    table = capsys.readouterr().out
    assert "largest micro-batch per GPU that fits:" in table and "ZeRO-3 gathered parameters" in table
    assert "CUDA context + allocator slack" in table and "assumptions:" in table
    assert main([*BASE, "--ds", "zero3", "--json"]) == 0  # (the stage from the DS JSON)
    assert json.loads(capsys.readouterr().out)["zero"] == 3
    assert main([*BASE, "--json", "--method-arg", "n_ctx=4"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["batch"] == 2 and plan["gpu_memory"] == 80 * 10**9 and plan["largest_batch"] > 2
    assert plan["total"] == sum(row[1] for row in plan["rows"])
    assert [
        "prompts, grads, master, sgd state",
        planner.prompt_bytes(4 * 32, 2, 2, 8, "bf16", "sgd"),
        "128 trainable values",
    ] in plan["rows"]
