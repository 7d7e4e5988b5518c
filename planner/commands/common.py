"""Arguments several commands share (the conditions a pipeline generates on), parsed one way."""
from __future__ import annotations

import argparse
import math

from ground.devices import DTYPES
from ground.errors import PlannerError


MAX_SEED = 2**62   # torch.Generator seeds are 64-bit; verification and reference offsets are added to the first seed


def check_seed(value: int | None, flag: str = "--seed") -> None:
    """Refuse, before any model loads, a seed torch cannot take (it overflows at 2**64) or a plan cannot record."""
    if value is not None and not 0 <= value <= MAX_SEED:
        raise PlannerError(f"{flag}: must be 0..{MAX_SEED}, got {value}")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def guidance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 100], got {text}")
    return value


def add_condition_arguments(p: argparse.ArgumentParser, dtype: bool = True) -> None:
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="your conditions: .txt (one prompt per line) or .jsonl (prompt or class_label; optional "
                        "negative_prompt, seed, height, width); default: built-in conditions")
    p.add_argument("--negative-prompt", default=None, help="negative prompt for rows that give none")
    p.add_argument("--height", type=int, default=None, help="image height (default: the pipeline's native size)")
    p.add_argument("--width", type=int, default=None, help="image width (default: the pipeline's native size)")
    p.add_argument("--resolution", type=int, default=None, help="height and width at once")
    p.add_argument("--guidance", type=guidance, default=None, help="classifier-free guidance scale (default: pipeline's)")
    if dtype:
        p.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                       help="load the pipeline in this precision; the baseline runs in it (default: as stored)")


def conditions_from_args(args):
    """(Conditions or None, (height, width) or None), checked: one line per problem."""
    height = args.height if args.height is not None else args.resolution
    width = args.width if args.width is not None else args.resolution
    for flag, value in (("--height", height), ("--width", width)):
        if value is not None and not 8 <= value <= 16384:
            raise PlannerError(f"{flag}: must be 8..16384 pixels, got {value}")
    if (height is None) != (width is None):
        raise PlannerError("--height and --width go together (or use --resolution)")
    conditions = None
    if args.prompts is not None:
        from planner.conditions import load_prompts

        conditions = load_prompts(args.prompts)
    return conditions, ((height, width) if height is not None else None)
