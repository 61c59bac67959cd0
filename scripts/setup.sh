#!/usr/bin/env bash
# Create .venv and install scaleprompt with the pinned, tested stack (constraints.txt). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=24"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
# (No DeepSpeed op is compiled: a training run uses none; DeepSpeed's CPU shm op, inference-only, is switched off.)
