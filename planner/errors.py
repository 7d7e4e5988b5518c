"""User-facing errors: one line that says what to fix; the CLI turns them into exit codes."""


class PlannerError(Exception):
    """Bad input or an unusable environment. The CLI prints `planner: error: <message>` and exits 2."""

    exit_code = 2


class BudgetNotMet(PlannerError):
    """The quality or speed budget does not hold. The CLI exits 1."""

    exit_code = 1
