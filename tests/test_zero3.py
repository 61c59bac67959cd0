"""ZeRO-3 with partitioned prompt tensors, on 2 real ranks (deepspeed launcher, gloo): best prompts restored into
every partition, and evaluation shares of different sizes that do not deadlock."""

from __future__ import annotations

import json

import pytest
from engine_utils import deepspeed_cmd, launch


@pytest.mark.slow
def test_zero3_restores_best_prompts_into_partitions_and_evaluates_uneven_shares(tmp_path):
    """Before: load_snapshot wrote inside a read-only gather (DeepSpeed's default modifier_rank=None), so every
    prompt tensor above stage3_param_persistence_threshold kept the LAST prompts while results said "best
    validation epoch"; and 3 evaluation batches on rank 0 against 1 on rank 1 hung in the second forward's
    all-gather until the collective timed out."""
    out = tmp_path / "result.json"
    launch(deepspeed_cmd(2, "tests/zero3_driver.py", "--out", str(out)), tmp_path, timeout=300)
    result = json.loads(out.read_text())
    assert result["partitioned"], "the prompts must be partitioned for this test to mean anything"
    assert result["moved"] > 1e-4, "the step changed the prompts"
    assert result["restored_error"] == 0.0 and result["used_error"] == 0.0
    assert result["images"] == (3 + 1) * 2
