"""Per-block, per-step profiles of a diffusion pipeline: where time goes and what repeats across steps.

    from profiler import profile_pipeline, cached_profile, Profile
    profile = profile_pipeline(pipe, request, sampler=SamplerConfig(name="ddim", steps=20))
    profile.block_names, profile.latency, profile.redundancy("residual_rel_l1"), profile.predict(0.1)
    profile.save("profile.json"); Profile.load("profile.json")

The profiler only observes: forward hooks on every block record timings and copies of outputs, and are
removed afterwards; the generated images are bit-identical to an unprofiled run. The JSON schema is
documented in profiler/SCHEMA.md.
"""
from profiler.core import (  # noqa: F401
    DEFAULT_BATCH,
    DEFAULT_SAMPLES,
    DEFAULT_STEPS,
    profiles_dir,
    cached_profile,
    profile_key,
    profile_pipeline,
)
from profiler.profile import SCHEMA_VERSION, Profile, fit_polynomial, key_hash  # noqa: F401
