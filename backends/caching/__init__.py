"""Caching techniques (stage STAGE_CACHE): importing this package registers them all.

- deepcache          UNets: reuse deep features, recompute the shallow skip path (interval or full-step list)
- block_schedule     any denoiser: a blocks x steps reuse matrix of residual blocks (from the schedule solver)
- first_block_cache  transformers: skip later blocks while the first block's residual barely changes
- teacache           transformers: accumulate the calibrated timestep-modulated-input indicator
- taylorseer         transformers (block residuals) and UNets (output): first-order forecast between full steps
- cfg_reuse          batched-CFG pipelines: reuse the guidance delta, run only the conditional half
"""
from backends.caching.block_schedule import BlockScheduleConfig  # noqa: F401
from backends.caching.cfg_reuse import CFGReuseConfig  # noqa: F401
from backends.caching.deepcache import DeepCacheConfig  # noqa: F401
from backends.caching.first_block import FirstBlockCacheConfig  # noqa: F401
from backends.caching.taylorseer import TaylorSeerConfig  # noqa: F401
from backends.caching.teacache import TeaCacheConfig  # noqa: F401

CACHE_CONFIGS = (DeepCacheConfig, BlockScheduleConfig, FirstBlockCacheConfig, TeaCacheConfig, TaylorSeerConfig,
                 CFGReuseConfig)
