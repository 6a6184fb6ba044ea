"""Hydra launcher plugin of marginbench: ``hydra/launcher=gpu_pool``."""
