#!/usr/bin/env bash
# Create .venv and install scaleprompt with the pinned, tested stack (constraints.txt). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=24"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
# On a machine without a GPU, DeepSpeed JIT-compiles a C++ communication op (deepspeed_shm_comm) the first time a
# run starts its process group, even a 1-process run: built here, once per machine (about 30 s on 2 cores; cached in
# torch's extension folder, $TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions), instead of inside the first run.
# (The same conditions as DeepSpeed's own build of it; a machine with a GPU builds nothing here.)
.venv/bin/python - <<'PY'
import logging, os, torch
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        print(f"setup: DeepSpeed's {builder.NAME} op: its cached build, or built now (~30 s)", flush=True)
        builder.load(verbose=False)
PY
