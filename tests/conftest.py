"""Test configuration: strict JAX numerics (rank promotion raises), a headless matplotlib, and the
``slow`` marker.

``python -m pytest -q -m "not slow"`` is the fast loop: it leaves out the tests marked ``slow`` (the
notebooks, the multi-process runs and the long statistical checks), listed in ``SLOW_FILES`` by
file or marked one by one with ``@pytest.mark.slow``.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# Whole files whose every test is slow (each takes tens of seconds: kernels started, processes spawned).
SLOW_FILES = {"test_notebooks.py", "test_multihost.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
