"""`planner evaluate MODEL`: check a candidate (plan or fewer steps) against the baseline under a budget.

The command itself lives in planner/quality/cli.py.
"""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from planner.quality.cli import add_evaluate_parser

    add_evaluate_parser(subparsers)
