"""The ground layer: what every other package of the planner stands on.

Errors, file I/O (atomic writes, bounded reads), the one cache root, the environment a plan records,
devices and dtypes, the identity of a pipeline, the hook mechanism every technique attaches with, step
tracking, generation of images from (condition, seed) pairs, and the anatomy of a pipeline through
per-family adapters (`ground.anatomy`).

Dependencies run one way: `ground` imports nothing of ours; `backends`, `search_spaces`, `profiler` and
`planner` import it (tests/test_layers.py walks every module to keep it so).
"""
__version__ = "0.1.0"
