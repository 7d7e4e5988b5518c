"""The `planner` command line. Every command lives in planner/commands/<name>.py."""
from __future__ import annotations

import argparse
import importlib
import sys

from ground.errors import PlannerError, printable

# Order shown in `planner --help`; a command whose module is absent is simply not offered.
COMMANDS = ("optimize", "profile", "generate", "evaluate", "run", "gate", "show", "validate", "plan_from_study")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one printable line, exit 2: no usage dump
        self.exit(2, f"{self.prog}: error: {printable(message, 2000)} (see --help)\n")

    def _get_values(self, action, arg_strings):
        # `--flag=--` reaches here as ["--"], which argparse turns into []: a missing value, say so.
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {action.option_strings[-1]}: expected one argument")
        return super()._get_values(action, arg_strings)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="planner", description="Auto-tuning acceleration planner for diffusion-model inference.")
    from planner import __version__

    parser.add_argument("--version", action="version", version=f"planner {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"planner.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"planner.commands.{name}":
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PlannerError as exc:
        print(f"planner: error: {printable(exc, 2000)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("planner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
