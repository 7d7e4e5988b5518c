"""Turn an Optuna trial plus a profile into technique configs.

Each technique family has a `suggest_*(trial, profile, pipe) -> TechniqueConfig | None` function that
asks Optuna for at most one or two global scalars; per-block, per-step decisions come from the profile.
"""
