"""The search: an Optuna study over global scalars, a fidelity cascade, verification, and the report."""
