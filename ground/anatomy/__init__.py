"""Pipeline anatomy through per-family adapters; see `ground.anatomy.base` for what an adapter answers.

    from ground.anatomy import anatomy_of
    a = anatomy_of(pipe)
    a.denoiser, a.blocks(), a.cfg_layout, a.conditioning, a.watch_modulated_input(callback, name)
"""
from ground.anatomy.base import (  # noqa: F401
    Anatomy,
    Block,
    CFGLayout,
    anatomy_of,
    denoiser_of,
    register_adapter,
    registered_adapters,
)
from ground.anatomy import dit, flux, pixart, sd3, stable_diffusion, unconditional_unet  # noqa: F401,E402  registers them
