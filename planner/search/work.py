"""Counted work: the FLOPs a generation actually executes (torch.utils.flop_counter).

Timing on a shared CPU can swing 10x; counted work cannot. Steps saved, blocks skipped by caches,
CFG halves dropped and tokens merged all show in it. It is measured on the eager, full-precision
pipeline with only the algorithmic techniques applied (sampler, tokens, caches): quantised kernels
and compiled or exported graphs do the same work faster, and the counter cannot see inside them.
"""
from __future__ import annotations

from typing import Callable

from torch.utils.flop_counter import FlopCounterMode

from backends.technique import STAGE_CACHE, STAGE_SAMPLER, STAGE_TOKENS

ALGORITHMIC_STAGES = (STAGE_SAMPLER, STAGE_TOKENS, STAGE_CACHE)


def algorithmic(configs: list) -> list:
    return [c for c in configs if c.stage in ALGORITHMIC_STAGES]


def flops_of(run: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as mode:
        run()
    return float(mode.get_total_flops())
