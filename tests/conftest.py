"""Test configuration: strict JAX numerics (rank promotion raises), a headless matplotlib, and the
``slow`` marker.

``python -m pytest -q -m "not slow"`` is the fast loop: it leaves out the tests marked ``slow`` (the
notebooks, the README's snippets, the multi-process runs and the longest checks), listed in
``SLOW_FILES`` and ``SLOW_TESTS`` or marked one by one with ``@pytest.mark.slow``.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# Whole files whose every test is slow (each takes tens of seconds: kernels started, processes spawned).
SLOW_FILES = {"test_notebooks.py", "test_multihost.py", "test_readme.py"}
# Single tests of 12 s or more on an idle 2-core CPU (pytest --durations); the full suite still runs them.
SLOW_TESTS = {
    "test_susceptibility.py::test_components_separate_induction_tokens_and_circuit_heads",
    "test_llc.py::test_restricted_and_masked_paths_agree_on_an_attention_head",
    "test_llc.py::test_llc_table_with_auto_step_size_calibrates_once_and_reuses_it",
    "test_calibration.py::test_auto_step_size_on_deep_linear_network",
    "test_sampler.py::test_sharding_over_four_devices_gives_the_same_results",
    "test_sampler.py::test_recording_reproduces_the_loose_flags_numbers",
    "test_io.py::test_susceptibility_and_bif_roundtrip",
    "test_io.py::test_cli_demo_runs",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES or f"{item.path.name}::{item.name}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after each test module. The whole suite compiles thousands of
    XLA programs in one process; each holds native code mappings, and the clean-clone CI run crashed
    (SIGSEGV inside XLA's compiler) once a few hundred modules' worth had accumulated."""
    yield
    from slt_jax._src import planning, program

    program._COMPILED.clear()
    planning._COMPILED_COSTS.clear()
    jax.clear_caches()
