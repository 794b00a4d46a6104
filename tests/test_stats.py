"""Streaming statistics and per-draw observables (slt_jax.stats)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax import stats

import linear_gaussian as lg


@jax.jit
@chex.assert_max_traces(n=4)  # one trace per input shape used below
def _stream(x, y):
    """Welford over the rows of x (T, p), y (T, q) in one jitted scan."""

    def body(state, xy):
        return stats.covariance_update(state, *xy), None

    return jax.lax.scan(body, stats.covariance_init(x[0], y[0]), (x, y))[0]


def test_welford_matches_numpy_with_large_offset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 3)) + 1e3  # a naive E[xy] - E[x]E[y] in float32 would lose everything
    y = 0.5 * x[:, :1] + rng.normal(size=(5000, 4)) - 2e3
    state = _stream(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    chex.assert_shape((state.mean_x, state.mean_y, state.comoment), [(3,), (4,), (3, 4)])
    expected = np.cov(np.concatenate([x, y], axis=1).T)[:3, 3:]
    np.testing.assert_allclose(stats.covariance(state), expected, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(state.mean_x, x.mean(0), rtol=1e-5)


def test_merge_equals_one_pass():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(300, 2)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(300, 5)) + x[:, :1], jnp.float32)
    whole = _stream(x, y)
    merged = stats.covariance_merge(_stream(x[:100], y[:100]), _stream(x[100:], y[100:]))
    for a, b in zip(merged, whole):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("centering", ["probe", "full"])
def test_streamed_covariance_equals_covariance_of_kept_traces(centering):
    observed = sj.observables(lg.loss_fn, lg.w_star, lg.data, probes={"train": lg.train}, functions=lg.OBSERVABLES,
                              centering=centering)
    out = sj.run_chains(
        lg.loss_fn, [lg.w_star], lg.data, lg.CONFIG.replace(num_chains=3, num_draws=400, chunk_draws=None), key=3,
        recording=sj.Recording(observe=observed.observe, observe_data=observed.observe_data, accumulator=observed.accumulator,
                               keep_traces=True),
        progress=False,
    )
    traces = jax.tree.map(lambda leaf: leaf[0], out.observed)  # the one configuration
    x = np.concatenate([traces["loss"][..., None], traces["functions"]["q"][..., None], traces["functions"]["x"]], axis=-1)
    y = np.concatenate([traces["probes"], traces["center"][..., None]], axis=-1)
    chex.assert_shape((x, y), [(3, 400, 5), (3, 400, lg.N + 1)])
    # Full batch (one data example): both centerings give φ = L_n(w) - L_n(w*) up to float32 rounding.
    displacement = np.asarray(traces["functions"]["x"], np.float64)  # w - w*, and L_n(w) - L_n(w*) = ½ xᵀHx
    np.testing.assert_allclose(x[..., 0], 0.5 * np.einsum("cda,ab,cdb->cd", displacement, lg.H, displacement), atol=1e-5)
    streamed = stats.covariance(out.accumulator)[0]
    for chain in range(3):
        batch = np.cov(np.concatenate([x[chain], y[chain]], axis=1).astype(np.float64).T)[:5, 5:]
        np.testing.assert_allclose(streamed[chain], batch, rtol=1e-3, atol=1e-6 * np.abs(batch).max())
    assert observed.x_names == ["loss", "q", "x[0]", "x[1]", "x[2]"]


def test_memory_is_independent_of_num_draws():
    observed = sj.observables(lg.loss_fn, lg.w_star, lg.data, probes={"train": lg.train})
    config = lg.CONFIG.replace(num_chains=2, chunk_draws=100)
    recording = sj.Recording(observe=observed.observe, observe_data=observed.observe_data, accumulator=observed.accumulator)
    kwargs = dict(key=0, progress=False)
    nbytes = lambda tree: sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree))
    short = sj.run_chains(lg.loss_fn, [lg.w_star], lg.data, config.replace(num_draws=100), recording=recording, **kwargs)
    long = sj.run_chains(lg.loss_fn, [lg.w_star], lg.data, config.replace(num_draws=1000), recording=recording, **kwargs)
    kept = sj.run_chains(lg.loss_fn, [lg.w_star], lg.data, config.replace(num_draws=1000),
                         recording=recording._replace(keep_traces=True), **kwargs)
    assert short.observed is None and long.observed is None
    # The statistics' state: O(p * N) per chain, the same for 100 and 1000 draws.
    assert nbytes(short.accumulator) == nbytes(long.accumulator) == 2 * 4 * (1 + 1 + (lg.N + 1) + (lg.N + 1))
    # Keeping traces costs num_draws x (observables) per chain instead.
    assert nbytes(kept.observed) == 2 * 1000 * 4 * (1 + lg.N + 1)
    assert nbytes(kept.observed) > 100 * nbytes(long.accumulator)


def test_probe_rows_follow_insertion_order_inside_jit():
    first = {"x": lg.train["x"][:3], "y": lg.train["y"][:3]}
    second = {"x": lg.train["x"][3:8], "y": lg.train["y"][3:8]}
    probes = {"zeta": first, "alpha": second}  # jit would sort a dict's keys
    observed = sj.observables(lg.loss_fn, lg.w_star, lg.data, probes=probes)
    np.testing.assert_array_equal(observed.labels.probe, ["zeta"] * 3 + ["alpha"] * 5)
    np.testing.assert_array_equal(observed.labels.example, [0, 1, 2, 0, 1, 2, 3, 4])
    info = sj.SGLDInfo(*(jnp.zeros(()) for _ in sj.SGLDInfo._fields))
    context = sj.DrawContext(lg.data, lg.w_star, jnp.zeros(()), observed.observe_data)
    values = jax.jit(observed.observe)(lg.w_star + 0.1, info, context)
    expected = np.concatenate([lg.loss_fn(lg.w_star + 0.1, first), lg.loss_fn(lg.w_star + 0.1, second)])
    np.testing.assert_allclose(values["probes"], expected, rtol=1e-6)


def test_probe_centering_uses_the_context_center():
    """'probe' φ = L_B(w) - L_B(w*) with w* the configuration's own centre (``context.center``), so one
    observe function serves every checkpoint; 'full' φ = L_n(w) - ``context.init_loss``."""
    info_at = lambda w, batch: sj.SGLDInfo(jnp.mean(lg.loss_fn(w, batch)), *(jnp.zeros(()) for _ in sj.SGLDInfo._fields[1:]))
    w, center, batch = lg.w_star + 0.2, lg.w_star - 0.1, jax.tree.map(lambda x: x[:, :5], lg.data)
    probe = sj.observables(lg.loss_fn, lg.w_star, lg.data, probes={"train": lg.train})
    values = probe.observe(w, info_at(w, batch), sj.DrawContext(batch, center, jnp.asarray(7.0), probe.observe_data))
    expected = lg.loss_fn(w, batch).mean() - lg.loss_fn(center, batch).mean()
    np.testing.assert_allclose(values["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(values["center"], lg.loss_fn(w, lg.train).mean(), rtol=1e-6)
    full = sj.observables(lg.loss_fn, lg.w_star, lg.data, probes={"train": lg.train}, centering="full")
    values = full.observe(w, info_at(w, batch), sj.DrawContext(batch, center, jnp.asarray(7.0), full.observe_data))
    np.testing.assert_allclose(values["loss"], lg.loss_fn(w, lg.train).mean() - 7.0, rtol=1e-5)
    assert set(probe.observe_data) == {"probes"} and set(full.observe_data) == {"probes", "data"}
    assert probe.labels.probe.dtype.kind == "U"  # fixed-width unicode, saved without pickle


def test_per_token_labels_and_sequence_means():
    loss_fn = lambda w, batch: (batch - w) ** 2  # (batch, seq) per-token losses
    probe = jnp.arange(12.0).reshape(4, 3)
    tokens = stats.check_probes(loss_fn, jnp.zeros(()), {"p": probe}, per_token=True)
    np.testing.assert_array_equal(tokens.example, np.repeat(np.arange(4), 3))
    np.testing.assert_array_equal(tokens.token, np.tile(np.arange(3), 4))
    sequences = stats.check_probes(loss_fn, jnp.zeros(()), {"p": probe}, per_token=False)
    np.testing.assert_array_equal(sequences.token, -np.ones(4))
    per_sequence = stats.probe_losses(loss_fn, 1.0, {"p": probe}, per_token=False)
    np.testing.assert_allclose(per_sequence, ((probe - 1.0) ** 2).mean(axis=1))
    chunked = stats.probe_losses(loss_fn, 1.0, {"p": probe}, probe_batch_size=3)
    np.testing.assert_allclose(chunked, ((probe - 1.0) ** 2).ravel())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(probes=[lg.train]), TypeError, "probes must be a non-empty dict"),
        (dict(probes={"p": lg.train}, centering="batch"), ValueError, "centering='batch'"),
        (dict(probes={"p": lg.train}, functions={"f": 3}), TypeError, "must be callable"),
        (dict(probes={"p": {"x": lg.train["x"], "y": lg.train["y"][:3]}}), ValueError, "different lengths"),
    ],
)
def test_observables_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        sj.observables(lg.loss_fn, lg.w_star, lg.data, **kwargs)


def test_probe_loss_must_be_per_example():
    with pytest.raises(ValueError, match="not a scalar mean"):
        sj.observables(lambda w, b: jnp.mean(lg.loss_fn(w, b)), lg.w_star, lg.data, probes={"p": lg.train})
