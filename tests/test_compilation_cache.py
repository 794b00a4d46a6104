"""The persistent compilation cache (issue 22, item 3): a second process loads the programs the first compiled."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp
    hits = []
    jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
    import slt_jax as sj
    loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    data = {"x": jnp.eye(4).repeat(25, axis=0), "y": jnp.zeros(100)}
    config = sj.SamplerConfig(step_size=1e-3, nbeta=100.0, localization=1.0, num_draws=50, batch_size=20)
    result = sj.estimate_llc(loss_fn, jnp.zeros(4), data, config, key=0, progress=False)
    print(len(hits), repr(result.llc_mean))
""")


@pytest.mark.slow
def test_a_second_process_reuses_the_first_ones_programs(tmp_path):
    environment = dict(os.environ, SLT_JAX_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    run = lambda: subprocess.run([sys.executable, "-c", SCRIPT], env=environment, capture_output=True, text=True, check=True)
    first_hits, first_llc = run().stdout.split()
    assert int(first_hits) == 0 and any((tmp_path / "cache").iterdir())
    second_hits, second_llc = run().stdout.split()
    assert int(second_hits) >= 1 and second_llc == first_llc  # same programs, same numbers


def test_enable_compilation_cache_uses_the_directory_it_is_given(tmp_path, monkeypatch):
    import jax

    import slt_jax as sj

    before = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    try:
        path = sj.enable_compilation_cache(tmp_path / "xla")
        assert path.is_dir() and jax.config.jax_compilation_cache_dir == str(path)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        monkeypatch.setenv("SLT_JAX_CACHE_DIR", str(tmp_path / "from_env"))
        assert sj.enable_compilation_cache() == (tmp_path / "from_env").resolve()
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
