"""planner: an auto-tuning acceleration planner for diffusion-model inference."""
__version__ = "0.1.0"
