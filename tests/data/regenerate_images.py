"""Regenerate tests/data/shipped_plan_images.safetensors on this machine with the code of 9ff911c (before
the ground-layer refactor), when the machine's CPU kernels differ from those that made the file (the
bit-identity test then fails on the unaccelerated baseline and says so):

    git worktree add --detach /tmp/wt-9ff 9ff911c
    cd /tmp/wt-9ff && PYTHONPATH=/tmp/wt-9ff /path/to/.venv/bin/python /path/to/tests/data/regenerate_images.py \
        /path/to/tests/data/shipped_plan_images.safetensors
    git worktree remove --force /tmp/wt-9ff

The frozen plans are read from beside this script; seeds, steps and threads are those the test reads.
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
import planner
from planner.generation import default_request, generate
from planner.models import load_pipeline
out = {}
torch.set_num_threads(1)
for name in ("digits-unet", "digits-dit"):
    pipe = load_pipeline(name)
    request = default_request(pipe, 8, 123)
    out[f"{name}.baseline"] = generate(pipe, request, steps=10, batch_size=8).contiguous()
    handle = planner.apply(pipe, str(Path(__file__).parent / f"{name}.frozen-plan.yaml"))
    try:
        out[f"{name}.plan"] = generate(pipe, request, batch_size=8).contiguous()
    finally:
        handle.remove()
save_file(out, sys.argv[1], metadata={"seeds": "123..130", "baseline_steps": "10", "threads": "1",
                                      "made_with": "9ff911c (before the ground-layer refactor), regenerated 2026-12-07 on this machine kind"})
print("ok")
