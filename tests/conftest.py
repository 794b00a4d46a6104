"""Test configuration: strict JAX numerics (STYLE.md habit 7) and a headless matplotlib."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
