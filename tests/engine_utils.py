"""Helpers for the engine tests: an easy, learnable image task and a subprocess launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}


def make_color_folder(root: Path, n_train: int = 16, n_val: int = 4, n_test: int = 16, seed: int = 0) -> Path:
    """``root/{train,val,test}/<colour>/*.png``: noisy solid colours, so a prompt can learn the classes."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for name, rgb in COLORS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.normal(0, 25, (32, 32, 3))
                img = np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def swatches_root(tmp: Path) -> Path:
    """A datasets root (``data.root``) holding the example plug-in's Swatches dataset: colour class folders under
    ``swatches/`` (examples/plugin; the ``plugin_site`` fixture installs it)."""
    make_color_folder(tmp / "swatches", n_train=8, n_val=2, n_test=4)
    return tmp


def with_plugins(run_env: dict[str, str], site: Path) -> dict[str, str]:
    """``run_env`` with the installed plug-ins of the folder ``site`` on PYTHONPATH (every launched process)."""
    return {**run_env, "PYTHONPATH": os.pathsep.join([run_env.get("PYTHONPATH", str(ROOT)), str(site)])}


def base_overrides(data: Path, cache: Path, out: Path) -> list[str]:
    return [
        "model.name=sp-tiny-vit",
        "model.pretrained=null",  # (a random backbone on purpose: a run without a recipe must say so)
        f"data.dataset=folder:{data}",
        f"data.cache_dir={cache}",
        "data.num_workers=1",
        "data.min_shards=2",
        "data.shots=0",
        "optim.batch_size=16",
        "optim.warmup_epochs=0",
        "eval.batch_size=64",
        f"train.output_dir={out}",
        "train.log_every_steps=1000",
        "train.report_to=none",
    ]


def env(tmp: Path) -> dict[str, str]:
    """Loopback-only rendezvous for every launched process."""
    tmp.mkdir(parents=True, exist_ok=True)  # (the file rendezvous lives here)
    e = dict(os.environ)
    e.update(
        SCALEPROMPT_INIT_METHOD=f"file://{tmp}/rdzv",
        GLOO_SOCKET_IFNAME="lo",
        DS_ACCELERATOR="cpu",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        TORCH_EXTENSIONS_DIR=str(tmp / "torch_extensions"),  # (launch() checks that no run compiled an op)
    )
    return e


def launch(
    args: list[str], tmp: Path, timeout: int = 600, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    left: list[Path] = []
    run_env = {**env(tmp), **(extra_env or {})}
    try:
        proc = subprocess.run(args, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=timeout)
    finally:
        if (
            "--master_port" in args
        ):  # DeepSpeed's shared-memory all-reduce buffers (66 MB per rank in /dev/shm,
            port = args[
                args.index("--master_port") + 1
            ]  # never removed by DeepSpeed) come with its shm op: a
            left = list(
                Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*")
            )  # run has none
            for buffer in left:
                buffer.unlink(missing_ok=True)
    if proc.returncode == 0 and left:
        raise AssertionError(f"{args[:4]} left its shared-memory buffers: {[p.name for p in left]}")
    built = [str(p) for p in Path(run_env["TORCH_EXTENSIONS_DIR"]).glob("*/*")]
    if built:  # (a training run uses no DeepSpeed C++ op: none may be compiled, silently or not)
        raise AssertionError(f"{args[:4]} compiled DeepSpeed ops: {built}")
    if proc.returncode != 0:
        raise AssertionError(
            f"{args[:4]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deepspeed_cmd(nproc: int, script: str, *args: str) -> list[str]:
    """The deepspeed launcher on its own master port: DeepSpeed's CPU all-reduce names its shared-memory buffers
    after the master address and port, so two launches on the default port 29500 at the same time (another test
    run on the machine) would share them."""
    launcher = str(Path(sys.executable).parent / "deepspeed")
    return [launcher, "--num_gpus", str(nproc), "--master_port", str(free_port()), script, *args]


def torchrun_cmd(nproc: int, script: str, *args: str) -> list[str]:
    """torchrun (``python -m torch.distributed.run``) with ``nproc`` processes, its rendezvous on a free port of
    127.0.0.1. (Its store still listens on every interface, unlike the deepspeed launcher's runs, which use a file
    rendezvous: only where torchrun is what a test checks.)"""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), script, *args]  # fmt: skip


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


class ArmedPickle:
    """Pickles into a call of ``os.system("touch <marker>")``: a loader that unpickles arbitrary objects creates
    the marker file; a safe one refuses the file and the marker stays absent."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
