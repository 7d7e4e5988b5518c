"""Techniques that accelerate a pipeline: each is a config, a registered handler, and a removable handle.

    handle = backends.apply(pipe, SamplerConfig(name="dpmpp_2m", steps=20))
    handle.remove()  # the pipeline is exactly as before
"""
from backends.technique import (  # noqa: F401
    ConfigError,
    Handle,
    NotApplicable,
    TechniqueConfig,
    apply,
    apply_all,
    config_from_dict,
    registered_types,
)
