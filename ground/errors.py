"""User-facing errors: one line that says what to fix; the CLI turns them into exit codes."""
from __future__ import annotations


class PlannerError(Exception):
    """Bad input or an unusable environment. The CLI prints `planner: error: <message>` and exits 2."""

    exit_code = 2


class BudgetNotMet(PlannerError):
    """The quality or speed budget does not hold. The CLI exits 1."""

    exit_code = 1


def printable(text: object, limit: int = 200) -> str:
    """`text` safe to print on one terminal line: control characters (newlines, escape sequences) shown
    as escapes, long text cut. For anything that came from a file or a user."""
    text = str(text)
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
