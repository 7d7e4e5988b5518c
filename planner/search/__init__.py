"""The search: an Optuna study over global scalars, sequential quality decisions, verification, and the report."""
