"""The two numeric options of SamplerConfig (docs/conventions.md §1): mixed precision
(``compute_dtype="bfloat16"``) and two-point noise (``noise="rademacher"``).

Each is tested against the path it replaces (float32 / Gaussian) and the closed forms: the stationary
mean and covariance of full-batch SGLD on a quadratic (exact for any noise of mean 0 and variance 1),
the LLC of a quadratic (tests/test_llc.py runs its known-answer tests with both noises), and a loss
whose values are ~1e3 with differences ~1e-2 that a bfloat16 L - L* would round to 0.

The transformer test is marked slow (two transformer programs to compile).
"""

import chex
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import linear_regression, standard_error

import slt_jax as sj
from slt_jax import kernels
from slt_jax._src import planning
from slt_jax.zoo import theory

Z = 4.0
EIGENVALUES = [1.0, 0.5, 0.1, 0.0]


# ---------------------------------------------------------------------------------------------
# two-point noise


def test_rademacher_signs_have_mean_zero_variance_one_and_independent_bits():
    like = {"a": jnp.zeros((4096, 31)), "b": jnp.zeros((33,), jnp.float32)}  # sizes not multiples of 32
    signs = kernels.tree_noise("rademacher", jax.random.key(0), like)
    chex.assert_trees_all_equal_shapes_and_dtypes(signs, like)
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(signs)])
    assert set(np.unique(flat)) == {-1.0, 1.0}
    assert abs(flat.mean()) < Z / np.sqrt(flat.size)
    np.testing.assert_allclose(np.mean(flat**2), 1.0)
    # The 32 bits of a word are 32 independent signs: correlations between bit positions (within
    # a word) and between consecutive words are all within Z standard errors of 0.
    words = flat[: flat.size // 32 * 32].reshape(-1, 32)
    within = np.corrcoef(words, rowvar=False)[np.triu_indices(32, 1)]
    across = np.array([np.mean(words[:-1, k] * words[1:, k]) for k in range(32)])
    assert np.abs(within).max() < Z / np.sqrt(words.shape[0]) * 1.5, np.abs(within).max()  # max of 496
    assert np.abs(across).max() < Z / np.sqrt(words.shape[0]), np.abs(across).max()
    again = kernels.tree_noise("rademacher", jax.random.key(0), like)
    other = kernels.tree_noise("rademacher", jax.random.fold_in(jax.random.key(0), 1), like)
    chex.assert_trees_all_equal(signs, again)
    assert np.mean(np.asarray(other["a"]) == np.asarray(signs["a"])) < 0.55


def test_bad_noise_and_compute_dtype_names_raise_when_the_config_is_built():
    base = dict(step_size=1e-3, localization=1.0, num_draws=10, batch_size=10)
    before = sj.compile_count()
    with pytest.raises(ValueError, match=r"noise='normal'.*'gaussian'.*'rademacher'"):
        sj.SamplerConfig(**base, noise="normal")
    with pytest.raises(ValueError, match=r"compute_dtype='float16'.*'float32'.*'bfloat16'"):
        sj.SamplerConfig(**base, compute_dtype="float16")
    with pytest.raises(ValueError, match="noise="):
        kernels.build_kernel(lambda w, b: w, noise="uniform")
    with pytest.raises(ValueError, match=r"scheme='lm'.*'euler'.*'leimkuhler-matthews'"):
        sj.SamplerConfig(**base, scheme="lm")
    assert sj.compile_count() == before


def test_config_with_both_options_round_trips():
    config = sj.SamplerConfig(step_size=1e-3, localization=1.0, num_draws=10, batch_size=10, compute_dtype="bfloat16",
                              noise="rademacher", scheme="leimkuhler-matthews")
    assert sj.SamplerConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["compute_dtype"] == "bfloat16" and config.to_dict()["noise"] == "rademacher"
    assert config.to_dict()["scheme"] == "leimkuhler-matthews"
    default = sj.SamplerConfig(step_size=1e-3, localization=1.0, num_draws=10, batch_size=10)
    assert default.noise == "gaussian" and default.scheme is None and default.update_scheme == "euler"
    assert sj.SamplerConfig.from_dict(default.to_dict()) == default


def _stationary_moments(noise: str, key: int, scheme: str = "euler"):
    """Full-batch SGLD on L - L* = ½ δᵀHδ: each chain's time-averaged mean and covariance of δ, and
    the scheme's exact stationary covariance."""
    h = jnp.asarray([[1.0, 0.3], [0.3, 0.5]])
    loss_fn = lambda w, batch: 0.5 * (w @ h @ w) * jnp.ones(batch.shape[0])
    nbeta, gamma, eps, steps, chains = 20.0, 1.0, 0.02, 20000, 16
    kernel = kernels.build_kernel(loss_fn, noise=noise)
    hyper = kernels.hyperparameters(eps, nbeta, gamma)

    def chain(chain_key):
        def step(state, t):
            state, _ = kernel(jax.random.fold_in(chain_key, t), state, jnp.zeros((1, 1)), jnp.zeros(2), hyper,
                              diagnostics=False)
            return state, state.position

        return jax.lax.scan(step, kernels.init(jnp.zeros(2), "sgld", scheme), jnp.arange(steps))[1][steps // 10:]

    draws = np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(key), chains)), np.float64)
    a = nbeta * np.asarray(h, np.float64) + gamma * np.eye(2)
    # Euler: (A(I - εA/4))⁻¹ (docs/conventions.md §2); Leimkuhler-Matthews: A⁻¹, the target's, at any stable ε.
    exact = np.linalg.inv(a @ (np.eye(2) - eps * a / 4)) if scheme == "euler" else np.linalg.inv(a)
    means = draws.mean(axis=1)
    covariances = np.einsum("cti,ctj->cij", draws, draws) / draws.shape[1]
    return means, covariances, exact


# ε = 0.02 against a_max = 23.8: Euler's stationary variance along the stiffest direction is 13.5% above
# the target's, the Leimkuhler-Matthews step's is the target's (either noise: only the increments'
# mean, variance and independence enter).
@pytest.mark.parametrize("noise,scheme", [("gaussian", "euler"), ("rademacher", "euler"),
                                          ("gaussian", "leimkuhler-matthews"), ("rademacher", "leimkuhler-matthews")])
def test_stationary_mean_and_covariance_of_a_quadratic_are_exact_for_either_noise(noise, scheme):
    means, covariances, exact = _stationary_moments(noise, key=0, scheme=scheme)
    se = lambda x: x.std(axis=0, ddof=1) / np.sqrt(x.shape[0])
    assert np.all(np.abs(means.mean(axis=0)) < Z * se(means)), (means.mean(axis=0), se(means))
    assert np.all(np.abs(covariances.mean(axis=0) - exact) < Z * se(covariances)), (covariances.mean(axis=0), exact)
    if scheme == "leimkuhler-matthews":  # and the Euler value is resolved as wrong for this scheme
        a = 20.0 * np.asarray([[1.0, 0.3], [0.3, 0.5]]) + np.eye(2)
        euler = np.linalg.inv(a @ (np.eye(2) - 0.02 * a / 4))
        assert np.abs(covariances.mean(axis=0) - euler).max() > Z * se(covariances).max()


def test_bulk_and_in_step_rademacher_noise_give_identical_chains(monkeypatch):
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=200)
    config = sj.SamplerConfig(step_size=1e-3, nbeta=200.0, localization=1.0, num_chains=4, num_draws=30, batch_size=50,
                              num_steps_between_draws=2, noise="rademacher")
    run = lambda: sj.run_chains(loss_fn, [w_star], data, config, key=9, progress=False)
    bulk = run()
    monkeypatch.setattr(planning, "BULK_NOISE_MAX_PARAMETERS", 0)  # large-model path: drawn inside the step
    in_step = run()
    np.testing.assert_allclose(bulk.loss, in_step.loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(bulk.final_positions[0]), np.asarray(in_step.final_positions[0]), rtol=1e-5, atol=1e-6)
    # Every step moved each coordinate by exactly ±sqrt(ε) of noise (Gaussian noise would not):
    # noise_norm = sqrt(ε·d) at every draw.
    np.testing.assert_allclose(bulk.noise_norm, np.sqrt(1e-3 * 4), rtol=1e-5)


def test_mala_diagnostic_under_rademacher_noise_proposes_gaussian_steps():
    # The acceptance is that of a Gaussian proposal from the chain's states: on a quadratic it
    # matches the Gaussian chain's (same stationary law to second order).
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=200)
    config = sj.SamplerConfig(step_size=6e-3, nbeta=200.0, localization=1.0, num_chains=8, num_draws=200, batch_size=200,
                              mala_every=1, num_burnin=100)
    accept = {noise: sj.run_chains(loss_fn, [w_star], data, config.replace(noise=noise), key=1, progress=False).mala_acceptance
              for noise in ("gaussian", "rademacher")}
    assert np.isfinite(accept["rademacher"]).all()
    means = {noise: float(np.mean(a)) for noise, a in accept.items()}
    se = float(np.std(np.mean(accept["gaussian"], axis=-1), ddof=1) / np.sqrt(8))
    assert means["gaussian"] < 0.97  # the step is large enough for the check to mean something
    assert abs(means["rademacher"] - means["gaussian"]) < Z * np.sqrt(2) * se + 0.01, (means, se)


# ---------------------------------------------------------------------------------------------
# mixed precision


def test_mixed_precision_wrapper_casts_floating_inputs_and_returns_float32():
    seen = {}

    def loss_fn(params, batch):
        seen.update(w=params["w"].dtype, x=batch["x"].dtype, tokens=batch["tokens"].dtype)
        return jnp.sum(batch["x"] @ params["w"], axis=-1) + batch["tokens"]

    wrapped = kernels.mixed_precision(loss_fn, "bfloat16")
    params = {"w": jnp.ones((3, 2))}
    batch = {"x": jnp.ones((5, 3)), "tokens": jnp.arange(5)}
    out = wrapped(params, batch)
    assert out.dtype == jnp.float32 and out.shape == (5,)
    assert seen == {"w": jnp.bfloat16, "x": jnp.bfloat16, "tokens": jnp.arange(5).dtype}
    grad = jax.grad(lambda p: jnp.mean(wrapped(p, batch)))(params)
    assert grad["w"].dtype == jnp.float32  # the gradient flows back through the cast
    np.testing.assert_allclose(grad["w"], jax.grad(lambda p: jnp.mean(loss_fn(p, batch)))(params)["w"], rtol=1e-2)
    # One wrapper per (loss_fn, dtype): equal and equally hashed, idempotent, the identity for float32.
    assert kernels.mixed_precision(loss_fn, "bfloat16") == wrapped and hash(kernels.mixed_precision(loss_fn, "bfloat16")) == hash(wrapped)
    assert kernels.mixed_precision(wrapped, "bfloat16") is wrapped
    assert kernels.mixed_precision(loss_fn, "float32") is loss_fn and kernels.mixed_precision(wrapped, "float32") is loss_fn
    with pytest.raises(ValueError, match="compute_dtype='int8'"):
        kernels.mixed_precision(loss_fn, "int8")


def _offset_problem():
    """L = 1000 + ½(y - xᵀw)², the quadratic part computed in the compute dtype and upcast before the
    offset is added (as a loss that reduces in float32 does): nβ(L - L*) is ~1.5 while L ~ 1000.5,
    where bfloat16's spacing is 4."""
    quadratic, w_star, data = linear_regression(EIGENVALUES, n=1000)
    loss_fn = lambda w, batch: 1000.0 + quadratic(w, batch).astype(jnp.float32)
    return loss_fn, w_star, data


def test_bfloat16_never_forms_the_loss_difference_in_bfloat16():
    loss_fn, w_star, data = _offset_problem()
    # Full batch (m = n): the step-corrected closed form is exact for the discretised chain.
    config = sj.SamplerConfig(step_size=3e-3, nbeta=200.0, localization=1.0, num_chains=8, num_draws=1000, num_burnin=200,
                              batch_size=1000, compute_dtype="bfloat16", mala_every=0)
    assert jax.eval_shape(kernels.mixed_precision(loss_fn, "bfloat16"), w_star, data).dtype == jnp.float32
    half = sj.estimate_llc(loss_fn, w_star, data, config, key=0, progress=False)
    assert half.chains.loss.dtype == np.float32
    assert 1000.0 < half.init_loss < 1001.0
    # In bfloat16, L(w) - L(w*) would be 0 or a multiple of 4 and nβ(L - L*) 0 or a multiple of 800.
    llc_draws = sj.traces.llc_draws(half.chains)[0]
    # Here they are spaced by float32's resolution at 1000 (nβ·2^-14 = 0.012).
    values = np.unique(llc_draws)
    assert np.mean(np.abs(llc_draws) < 50.0) > 0.99 and len(values) > 100 and np.min(np.diff(values)) < 0.05
    expected = theory.quadratic_llc(EIGENVALUES, 200.0, 1.0, step_size=3e-3)
    se = standard_error(half)
    assert abs(half.llc_mean - expected) < Z * se, (half.llc_mean, expected, se)
    # The same run in float32 (same key, the same noise) agrees within the combined standard error.
    single = sj.estimate_llc(loss_fn, w_star, data, config.replace(compute_dtype="float32"), key=0, progress=False)
    combined = np.hypot(se, standard_error(single))
    assert abs(half.llc_mean - single.llc_mean) < Z * combined, (half.llc_mean, single.llc_mean, combined)


@pytest.fixture(scope="module")
def tiny_language_model():
    vocab, context = 6, 8
    model = sj.models.TransformerLM(vocab, context, 1, 2, 8, mlp_width=16, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "next_token")
    data = {"inputs": jnp.asarray(sj.tasks.repeated_tokens(0, 256, vocab, 4)["inputs"])[:, :context]}
    trained = sj.train(loss_fn, params, data, optimizer=optax.adam(1e-2), num_steps=200, batch_size=64)
    return loss_fn, trained.params, data


def test_transformer_loss_is_float32_when_its_params_are_bfloat16():
    model = sj.models.TransformerLM(6, 8, 1, 2, 8, mlp_width=16, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "next_token")
    data = {"inputs": jnp.asarray(sj.tasks.repeated_tokens(0, 16, 6, 4)["inputs"])}
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    evaluate = jax.jit(loss_fn)
    losses = evaluate(half, data)
    assert losses.dtype == jnp.float32  # the log-softmax runs on upcast logits
    np.testing.assert_allclose(np.mean(losses), np.mean(evaluate(params, data)), rtol=2e-2)
    dense_params, mse = sj.from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), "mse")
    half_batch = (jnp.ones((4, 3), jnp.bfloat16), jnp.zeros((4, 2), jnp.bfloat16))
    assert mse(jax.tree.map(lambda x: x.astype(jnp.bfloat16), dense_params), half_batch).dtype == jnp.float32


@pytest.mark.slow  # two transformer programs to compile (~30 s on a loaded 2-core CPU)
def test_bfloat16_llc_of_a_small_transformer_agrees_with_float32(tiny_language_model):
    loss_fn, params, data = tiny_language_model
    config = sj.SamplerConfig(step_size=1e-4, nbeta=100.0, localization=100.0, num_chains=4, num_draws=100, num_burnin=50,
                              batch_size=32, mala_every=0)
    results = {dtype: sj.estimate_llc(loss_fn, params, data, config.replace(compute_dtype=dtype), key=0, progress=False,
                                      loss_estimator="paired") for dtype in ("float32", "bfloat16")}
    single, half = results["float32"], results["bfloat16"]
    assert not half.diverged.any() and half.chains.loss.dtype == np.float32
    combined = np.hypot(standard_error(single), standard_error(half))
    assert abs(half.llc_mean - single.llc_mean) < Z * combined, (half.llc_mean, single.llc_mean, combined)
    assert single.llc_mean > 0.5  # a real signal, not 0 ± noise


def test_observables_evaluate_probes_and_phi_through_the_runs_wrapper():
    # φ = L(w) - L_n(w*) with L_n(w*) from the run's wrapper: at w = w* it is 0 (to float32 rounding)
    # only when the observables evaluate the loss through the same wrapper; a float32 loss
    # differs from it by bfloat16's rounding of the quadratic part.
    loss_fn, w_star, data = _offset_problem()
    wrapped = kernels.mixed_precision(loss_fn, "bfloat16")
    init_loss = sj.full_data_loss(wrapped, w_star, data)  # as the sampler computes L_n(w*)
    info = sj.kernels.SGLDInfo(*(jnp.zeros(()) for _ in sj.kernels.SGLDInfo._fields))
    phi = {}
    for dtype in ("bfloat16", "float32"):
        observed = sj.stats.observables(loss_fn, w_star, data, probes={"train": data}, centering="full", compute_dtype=dtype)
        context = sj.DrawContext(data, w_star, init_loss, observed.observe_data)
        values = jax.jit(observed.observe)(w_star, info, context)
        phi[dtype] = float(values["loss"])
        if dtype == "bfloat16":
            np.testing.assert_array_equal(values["probes"], wrapped(w_star, data))
    # float32's spacing at 1000 is 6.1e-5: within one spacing with the run's wrapper, more than two without.
    assert abs(phi["bfloat16"]) < 5e-5 and abs(phi["float32"]) > 1.5e-4, phi


def test_leimkuhler_matthews_chains_do_not_depend_on_chunks_or_where_the_noise_is_drawn(monkeypatch):
    # The last increments travel in the chain state across chunk boundaries and both noise paths.
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=200)
    config = sj.SamplerConfig(step_size=1e-3, nbeta=200.0, localization=1.0, num_chains=4, num_draws=30, batch_size=50,
                              num_steps_between_draws=2, num_burnin=6, scheme="leimkuhler-matthews")
    run = lambda c: sj.run_chains(loss_fn, [w_star], data, c, key=9, progress=False)
    whole = run(config.replace(chunk_draws=30))
    chunked = run(config.replace(chunk_draws=7))
    np.testing.assert_allclose(chunked.loss, whole.loss, rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(planning, "BULK_NOISE_MAX_PARAMETERS", 0)  # large-model path: drawn inside the step
    in_step = run(config.replace(chunk_draws=7))
    np.testing.assert_allclose(in_step.loss, whole.loss, rtol=1e-6, atol=1e-7)
    euler = run(config.replace(scheme="euler"))
    assert np.abs(euler.loss - whole.loss).max() > 1e-4  # the scheme changed the chain
