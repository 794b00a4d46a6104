"""Susceptibilities against exact identities (docs/conventions.md §3) and on the induction transformer."""

import dataclasses
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax import io, susceptibility

import linear_gaussian as lg
import synthetic_results

MAX_Z, MEAN_Z2 = 5.0, 6.0  # see test_bif: 16-chain t statistics, rows share the chains


def _check_columns(result, exact):
    z = lg.zscores(result.chi, exact, result.stderr)
    assert np.all(np.abs(z).max(axis=0) < MAX_Z), np.abs(z).max(axis=0)
    assert np.all(np.mean(z**2, axis=0) < MEAN_Z2), np.mean(z**2, axis=0)


def test_gaussian_closed_form_and_mass_conservation():
    result = lg.chi_run()  # the default centering="probe" (here the minibatch is the full batch)
    assert result.centering == "probe" == inspect.signature(sj.estimate_susceptibilities).parameters["centering"].default
    chex.assert_shape((result.chi, result.stderr, result.chi_per_chain), [(lg.N, 5), (lg.N, 5), (lg.NUM_CHAINS, lg.N, 5)])
    assert result.components == ["full", "full/q", "full/x[0]", "full/x[1]", "full/x[2]"]
    sigma = lg.stationary_covariance(lg.NBETA, lg.GAMMA, lg.EPS)
    _check_columns(result, lg.exact_chi(sigma))
    # Mass conservation: with full-data losses the l_i - L_n sum to zero at every draw.
    np.testing.assert_allclose(result.chi.sum(axis=0), 0.0, atol=1e-5 * np.abs(result.chi).sum(axis=0).max())
    # nβ⟨φ_full⟩ is the LLC: ½ nβ tr(HΣ_ε) exactly for this quadratic.
    llc_stderr = lg.NBETA * result.observable_mean_per_chain[:, 0].std(ddof=1) / np.sqrt(lg.NUM_CHAINS)
    assert abs(result.llc["full"] - 0.5 * lg.NBETA * np.trace(lg.H @ sigma)) < 4 * llc_stderr


def test_sign_and_nbeta_scaling():
    low, high = lg.chi_run(lg.NBETA), lg.chi_run(2 * lg.NBETA)
    sigma_low = lg.stationary_covariance(lg.NBETA, lg.GAMMA, lg.EPS)
    sigma_high = lg.stationary_covariance(2 * lg.NBETA, lg.GAMMA, lg.EPS)
    _check_columns(high, lg.exact_chi(sigma_high))
    # Sign: χ_i of the linear observable x_k is +r_i (Σx_i)_k (upweighting i pulls w toward its fit).
    exact = lg.exact_chi(sigma_low)[:, 2:]
    np.testing.assert_allclose(exact, (lg.R[:, None] * (lg.X @ sigma_low)), rtol=1e-10)
    clear = np.abs(exact) > 4 * low.stderr[:, 2:]
    assert clear.sum() >= 20
    np.testing.assert_array_equal(np.sign(low.chi[:, 2:][clear]), np.sign(exact[clear]))
    # Scaling: linear observables' χ ∝ Σ ≈ (nβH)^{-1}, the loss observable's ∝ Σ² (quadratic).
    for columns, power in ((slice(2, None), 1), (slice(0, 1), 2)):
        ratio = np.abs(high.chi[:, columns]).sum() / np.abs(low.chi[:, columns]).sum()
        exact_ratio = np.abs(lg.exact_chi(sigma_high)[:, columns]).sum() / np.abs(lg.exact_chi(sigma_low)[:, columns]).sum()
        relative = sum(np.sqrt((r.stderr[:, columns] ** 2).sum()) / np.abs(r.chi[:, columns]).sum() for r in (low, high))
        assert abs(ratio - exact_ratio) < 4 * relative * exact_ratio, (power, ratio, exact_ratio)
        # ≈ 2^-power: γ and the ULA inflation (larger at larger nβ) move it by ~10-25%.
        assert 0.8 < ratio / 0.5**power < 1.3, (power, ratio)


def test_nbeta_zero_control():
    """nβ = 0: coordinates have variance 1/(γ(1 - εγ/4)) and χ reflects only that."""
    gamma, eps = 1.0, 1.0
    result = lg.chi_run(0.0, gamma, eps)
    variance = 1.0 / (gamma * (1 - eps * gamma / 4))
    _check_columns(result, lg.exact_chi(variance * np.eye(lg.D)))
    # ⟨φ_full⟩ = ½ tr(H) σ² measures the coordinate variance: ULA-corrected, not 1/γ.
    per_chain = result.observable_mean_per_chain[:, 0] / (0.5 * np.trace(lg.H))
    stderr = per_chain.std(ddof=1) / np.sqrt(lg.NUM_CHAINS)
    assert abs(per_chain.mean() - variance) < 4 * stderr
    assert abs(per_chain.mean() - 1.0 / gamma) > 20 * stderr


def test_linear_response_gaussian():
    """Re-sampling at ρ_m = 1 ± δ moves ⟨x⟩ by 2δ β χ_m (β = nβ/n, normalized reweighting)."""
    result, beta, delta = lg.chi_run(eps=lg.EPS_RESPONSE), lg.NBETA / lg.N, 0.2
    # χ̂ carries the ULA covariance inflation (I - εA/4)^{-1}; the mean response does not.
    inflation = lg.ula_inflation(lg.NBETA, lg.GAMMA, lg.EPS_RESPONSE)
    assert inflation < 0.03
    for m in (0, 5):
        upweight, downweight = np.ones(lg.N), np.ones(lg.N)
        upweight[m], downweight[m] = 1 + delta, 1 - delta
        # Common random numbers: the same key for both runs, so their noise cancels in the difference.
        per_chain = (lg.mean_displacement(upweight, key=11) - lg.mean_displacement(downweight, key=11)) / (2 * delta)
        derivative, derivative_stderr = per_chain.mean(0), per_chain.std(0, ddof=1) / np.sqrt(lg.NUM_CHAINS)
        predicted, predicted_stderr = beta * result.chi[m, 2:], beta * result.stderr[m, 2:]
        tolerance = 4 * np.sqrt(derivative_stderr**2 + predicted_stderr**2) + inflation * np.abs(predicted)
        assert np.all(np.abs(derivative - predicted) < tolerance), (m, derivative, predicted, tolerance)
        # And against the exact reweighted Gaussian mean (a central difference: O(δ²) off).
        exact = (lg.exact_mean_displacement(upweight) - lg.exact_mean_displacement(downweight)) / (2 * delta)
        assert np.all(np.abs(derivative - exact) < 4 * derivative_stderr + 0.02 * np.abs(exact).max()), (derivative, exact)


# ---------------------------------------------------------------------------------------------
# a small nonlinear model: y = a·b·x + noise (a singular product parametrization)

_rng = np.random.default_rng(7)
_x = _rng.normal(size=64)
_nonlinear_data = {"x": jnp.asarray(_x, jnp.float32), "y": jnp.asarray(0.8 * _x + 0.5 * _rng.normal(size=64), jnp.float32)}


def _product_loss(w, batch):
    return 0.5 * (batch["y"] - w[0] * w[1] * batch["x"]) ** 2


def _norm(w):
    return jnp.sum(w**2)


def _nonlinear_star():
    slope = float(np.dot(_x, np.asarray(_nonlinear_data["y"])) / np.dot(_x, _x))
    return jnp.asarray([np.sqrt(slope), np.sqrt(slope)], jnp.float32)


_NONLINEAR = sj.SamplerConfig(step_size=2e-3, nbeta=16.0, localization=2.0, num_chains=16, num_draws=4000, batch_size=8,
                              mala_every=0)


def test_probe_centering_is_unbiased_and_linear_response_nonlinear():
    """On real minibatches: 'probe' centering (φ from the SGLD batch) agrees with 'full' (exact L_n);
    and resampling with ρ_m = 1 ± δ matches β χ_m to O(δ²)."""
    w = _nonlinear_star()
    probes = {"train": _nonlinear_data}
    kwargs = dict(key=5, probes=probes, observables={"norm": _norm}, progress=False)
    full = sj.estimate_susceptibilities(_product_loss, w, _nonlinear_data, _NONLINEAR, centering="full", **kwargs)
    probe = sj.estimate_susceptibilities(_product_loss, w, _nonlinear_data, _NONLINEAR, centering="probe", **kwargs)
    # Same key, same chains: the difference is the minibatch noise of φ in the loss column only.
    np.testing.assert_allclose(probe.chi[:, 1], full.chi[:, 1], rtol=1e-4, atol=1e-7)
    difference = probe.chi_per_chain[..., 0] - full.chi_per_chain[..., 0]
    z = difference.mean(0) / (difference.std(0, ddof=1) / np.sqrt(16))
    assert np.abs(z).max() < MAX_Z and np.mean(z**2) < MEAN_Z2, z
    assert np.abs(probe.chi.sum(axis=0)).max() < 1e-5 * np.abs(probe.chi).sum()

    beta, delta = 16.0 / 64, 0.3
    weighted = sj.reweighted_loss(_product_loss, np.ones(64), normalize=False)
    observe = lambda params, info, context: _norm(params)
    means = {}
    for sign in (1, -1):
        rho = np.ones(64)
        rho[:4] += sign * delta  # upweight examples 0-3 together: a larger, clearer response
        out = sj.run_chains(weighted, [w], sj.attach_weights(_nonlinear_data, rho / rho.mean()), _NONLINEAR, key=5,
                            recording=sj.Recording(observe=observe, keep_traces=True), progress=False)
        means[sign] = np.asarray(out.observed[0], np.float64).mean(axis=1)
    per_chain = (means[1] - means[-1]) / (2 * delta)
    predicted = beta * full.chi[:4, 1].sum()
    stderr = np.sqrt(per_chain.var(ddof=1) / 16 + (beta**2) * (full.stderr[:4, 1] ** 2).sum())
    assert abs(per_chain.mean() - predicted) < 4 * stderr + 0.1 * abs(predicted), (per_chain.mean(), predicted, stderr)
    assert abs(predicted) > 4 * stderr  # the response is resolved, not zero


def test_two_chain_variant():
    """devinterp's estimator: -(E_C[φΔ] - E_C[φ] E_full[Δ]); for 'full' it is the ddof=0 covariance."""
    components = {"x0": jnp.array([True, False, False])}
    config = lg.CONFIG.replace(num_chains=4, num_draws=400, chunk_draws=None)
    kwargs = dict(probes={"train": lg.train}, components=components, key=2, progress=False)
    covariance = sj.estimate_susceptibilities(lg.loss_fn, lg.w_star, lg.data, config, **kwargs)
    two_chain = sj.estimate_susceptibilities(lg.loss_fn, lg.w_star, lg.data, config, method="two_chain", **kwargs)
    np.testing.assert_allclose(two_chain.chi_per_chain[..., 0], covariance.chi_per_chain[..., 0] * 399 / 400, rtol=1e-5, atol=1e-10)
    state = covariance.chains.accumulator  # leaves (G, C, ...)
    count = np.asarray(state.count, np.float64)[1][:, None]
    mean_phi = np.asarray(state.mean_x, np.float64)[1, :, 0][:, None]
    delta = np.asarray(state.mean_y, np.float64)[..., :-1] - np.asarray(state.mean_y, np.float64)[..., -1:]
    product = (np.asarray(state.comoment)[1, :, 0, :-1] - np.asarray(state.comoment)[1, :, 0, -1:]) / count + mean_phi * delta[1]
    np.testing.assert_allclose(two_chain.chi_per_chain[..., 1], -(product - mean_phi * delta[0]), rtol=1e-5, atol=1e-10)
    # The restricted chain moves only x0, and its refined LLC is ½ nβ h_00 / (nβ h_00 + γ) (1D Gaussian).
    assert covariance.llc["x0"] < covariance.llc["full"]


def test_new_probe_values_and_hyperparameters_do_not_recompile():
    lg.chi_run()
    before = sj.compile_count()
    shifted = {"x": lg.train["x"][::-1], "y": lg.train["y"][::-1] + 1.0}  # same shapes, new values
    result = sj.estimate_susceptibilities(
        lg.loss_fn, lg.w_star, lg.data, lg.config(lg.NBETA / 2, lg.GAMMA, lg.EPS / 2), key=9, probes={"train": shifted},
        observables=lg.OBSERVABLES, progress=False,
    )
    assert sj.compile_count() == before
    assert np.all(np.isfinite(result.chi))


def test_result_methods_and_exports(tmp_path):
    result = lg.chi_run()
    z = result.zscored()
    assert isinstance(z, susceptibility.ResponseMatrix) and z.transforms == ("zscored",)
    assert z.columns == result.components and z.rows is result.labels
    np.testing.assert_allclose(z.values.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(z.values.std(0), 1.0, rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(z), z.values)
    centered = result.zscored().row_centered()  # the README's chain
    np.testing.assert_allclose(centered.values.mean(1), 0.0, atol=1e-10)
    chained = centered.pca()
    reference = susceptibility.response_pca(susceptibility.center_rows(susceptibility.zscore_columns(result.chi)))
    np.testing.assert_allclose(chained.loadings, reference.loadings, atol=1e-12)
    np.testing.assert_allclose(result.pca(center=True).scores, chained.scores, atol=1e-12)
    np.testing.assert_allclose(result.pca(standardize=False).singular_values, result.matrix.pca().singular_values)
    pca = result.pca()
    z = z.values
    chex.assert_shape((pca.scores, pca.loadings), [(lg.N, 5), (5, 5)])
    np.testing.assert_allclose(pca.explained_variance_ratio.sum(), 1.0, rtol=1e-10)
    np.testing.assert_allclose(pca.scores @ pca.loadings.T, z, atol=1e-10)  # exact reconstruction at full rank
    assert np.all(np.diff(pca.explained_variance) <= 1e-12)
    dataset = result.to_xarray()
    assert dataset["chi"].dims == ("row", "column")
    assert list(dataset["column"].values) == result.components
    assert set(dataset.data_vars) >= {"chi", "stderr", "chi_per_chain", "observable_mean"}
    assert {"probe", "example", "token", "component", "observable"} <= set(dataset.coords)
    # Saved and loaded without pickle: labels are fixed-width unicode arrays, not object arrays.
    assert {result.labels.probe.dtype.kind, result.column_component.dtype.kind, result.column_observable.dtype.kind} == {"U"}
    path = sj.save(tmp_path / "chi", result)
    assert io.read_header(path)["unsaved"] == []
    loaded = sj.load(path)
    np.testing.assert_array_equal(loaded.chi, result.chi)
    np.testing.assert_array_equal(loaded.labels.probe, result.labels.probe)
    assert loaded.components == result.components and loaded.llc == result.llc


def test_response_pca_recovers_a_rank_two_matrix():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(50, 2)) @ rng.normal(size=(2, 6))
    pca = susceptibility.response_pca(matrix)
    assert pca.explained_variance_ratio[:2].sum() > 1 - 1e-10
    np.testing.assert_allclose(pca.explained_variance[:2], np.var(pca.scores[:, :2], axis=0, ddof=1), rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="bayes"), ValueError, "method='bayes'"),
        (dict(method="two_chain", include_full=False, components={"a": None}), ValueError, "include a 'full' component"),
        (dict(config=dict(step_size=lg.EPS)), TypeError, "must be a slt_jax.SamplerConfig"),
        (dict(config=lg.CONFIG.replace(step_size="auto")), ValueError, "numeric step_size"),
        (dict(config=lg.CONFIG.replace(num_draws=1)), ValueError, "at least 2 draws"),
        (dict(centering="batch"), ValueError, "centering='batch'"),
        (dict(components={"bad": jnp.array([True, False])}), ValueError, r"components\['bad'\].*shape"),
        (dict(components=[None]), TypeError, "components must be a dict"),
        (dict(probes=lg.train), ValueError, "to pass one dataset"),
        (dict(probes=[lg.train]), TypeError, "probes must be a non-empty dict"),
        (dict(checkpoints=lg.w_star), TypeError, "list of params"),
        (dict(checkpoints=[lg.w_star], steps=[1, 2]), ValueError, "one distinct training step"),
    ],
)
def test_validation(kwargs, error, match):
    arguments = dict(probes={"train": lg.train}, key=0, progress=False)
    config = kwargs.pop("config", lg.CONFIG.replace(num_draws=10, chunk_draws=None))
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        if "checkpoints" in arguments:
            sj.estimate_susceptibilities_table(lg.loss_fn, arguments.pop("checkpoints"), lg.data, config, **arguments)
        else:
            sj.estimate_susceptibilities(lg.loss_fn, lg.w_star, lg.data, config, **arguments)


def test_restricted_component_matches_closed_form():
    """Chains restricted to x0 sample the 1-D Gaussian x0 ~ N(0, σ²), σ² = 1/(a(1 - εa/4)),
    a = nβ H_00 + γ, the other coordinates clamped at w*: the Isserlis forms with Σ = diag(σ², 0, 0)."""
    result = sj.estimate_susceptibilities(
        lg.loss_fn, lg.w_star, lg.data, lg.CONFIG, key=3, probes={"train": lg.train},
        components={"x0": jnp.array([True, False, False])}, include_full=False, observables=lg.OBSERVABLES, progress=False,
    )
    assert result.components == ["x0", "x0/q", "x0/x[0]", "x0/x[1]", "x0/x[2]"]
    assert result.chains.num_sampled.tolist() == [1]
    a = lg.NBETA * lg.H[0, 0] + lg.GAMMA
    sigma = np.zeros((lg.D, lg.D))
    sigma[0, 0] = 1.0 / (a * (1 - lg.EPS * a / 4))
    exact = lg.exact_chi(sigma)
    # The clamped coordinates never move: their columns are exactly zero.
    np.testing.assert_array_equal(result.chi[:, 3:], 0.0)
    np.testing.assert_allclose(exact[:, 3:], 0.0, atol=1e-15)
    _check_columns(dataclasses.replace(result, chi=result.chi[:, :3], stderr=result.stderr[:, :3]), exact[:, :3])
    # nβ⟨φ_x0⟩ is the refined LLC ½ nβ H_00 σ².
    llc_stderr = lg.NBETA * result.observable_mean_per_chain[:, 0].std(ddof=1) / np.sqrt(lg.NUM_CHAINS)
    assert abs(result.llc["x0"] - 0.5 * lg.NBETA * lg.H[0, 0] * sigma[0, 0]) < 4 * llc_stderr


@pytest.mark.parametrize("centering", ["probe", "full"])
def test_over_checkpoints_equals_separate_runs(centering):
    """Two checkpoints as one stack of configurations (checkpoint x component) give each checkpoint's
    own estimate_susceptibilities numbers with the same key; 'probe' pairs each draw with its own w*."""
    config = lg.CONFIG.replace(num_chains=4, num_draws=300, chunk_draws=None)
    checkpoints = [lg.w_star, lg.w_star + jnp.asarray([0.3, -0.2, 0.1])]
    kwargs = dict(key=6, probes={"train": lg.train}, components={"x0": jnp.array([True, False, False])},
                  observables=lg.OBSERVABLES, centering=centering, progress=False)
    stacked = sj.estimate_susceptibilities_table(lg.loss_fn, checkpoints, lg.data, config, steps=[100, 300], **kwargs)
    assert stacked.steps.tolist() == [100, 300] and stacked.chi.shape[0] == 2
    for k, params in enumerate(checkpoints):
        result = stacked.result(k)
        alone = sj.estimate_susceptibilities(lg.loss_fn, params, lg.data, config, **kwargs)
        assert result.components == alone.components
        np.testing.assert_allclose(result.chi_per_chain, alone.chi_per_chain, rtol=1e-5, atol=1e-5 * np.abs(alone.chi).max())
        np.testing.assert_allclose(result.observable_mean_per_chain, alone.observable_mean_per_chain, rtol=1e-5, atol=1e-7)
        # Each result holds its own configurations (full, x0) of the run.
        assert result.chains.num_configs == 2 and result.chains.center_index.tolist() == [k, k]
    # φ = L(w) - L_n(w*_k) uses each checkpoint's own centre: w*_0 is the global minimum, so φ >= 0 at
    # every draw there; from w*_1 = w* + δ the chains move downhill and ⟨φ⟩ < 0 (a centre shared with
    # checkpoint 0 would give φ >= 0 here too).
    assert stacked.observable_mean[1, 0] < 0 < stacked.observable_mean[0, 0]


# ---------------------------------------------------------------------------------------------
# components: the induction circuit of a tiny attention-only transformer

VOCAB, LENGTH, PERIODS = 16, 10, (3, 4, 5)


def _induction_data(seed: int, n: int):
    """Repeated random prefixes of period 3, 4 or 5 (so a positional copy head cannot solve it: the
    model needs a previous-token head and an induction head) followed by a random tail.

    Returns:
        (data {"inputs": (n, LENGTH)}, mask (n, LENGTH - 1) of next-token columns in the second copy).
    """
    rng = np.random.default_rng(seed)
    rows, masks = [], []
    for i, period in enumerate(PERIODS):
        repeated = sj.tasks.repeated_tokens(10 * seed + i, n // len(PERIODS), VOCAB, period)["inputs"]
        rows.append(np.concatenate([repeated, rng.integers(0, VOCAB, (len(repeated), LENGTH - 2 * period))], axis=1))
        mask = np.zeros((len(repeated), LENGTH - 1), bool)
        mask[:, period - 1 : 2 * period - 1] = True  # column t predicts token t + 1
        masks.append(mask)
    return {"inputs": np.concatenate(rows).astype(np.int32)}, np.concatenate(masks)


def _auc(scores, positive):
    return float(np.mean(scores[positive][:, None] > scores[~positive][None, :]))


@pytest.fixture(scope="module")
def induction_model():
    import optax
    from flax import nnx

    model = sj.models.AttentionOnlyTransformer(VOCAB, LENGTH, num_layers=2, num_heads=2, width=16, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "next_token")
    train, _ = _induction_data(0, 3000)
    trained = sj.train(loss_fn, params, train, optimizer=optax.adamw(1e-2, weight_decay=1e-2), num_steps=2000, batch_size=64)
    test, mask = _induction_data(1, 600)
    base = np.asarray(loss_fn(trained.params, test))
    # The induction circuit, operationally: heads whose ablation (out projection zeroed) raises the
    # loss of the induction tokens.
    ablation = {}
    for layer in range(2):
        for head in range(2):
            ablated = jax.tree.map(lambda x: x, trained.params)
            kernel = ablated["blocks"][layer]["attn"]["out"]["kernel"]
            ablated["blocks"][layer]["attn"]["out"]["kernel"] = kernel.at[head].set(0.0)
            ablation[f"l{layer}h{head}"] = float((np.asarray(loss_fn(ablated, test)) - base)[mask].mean())
    return dict(params=trained.params, loss_fn=loss_fn, induction_loss=base[mask].mean(), other_loss=base[~mask].mean(),
                ablation=ablation)


def test_components_separate_induction_tokens_and_circuit_heads(induction_model):
    params, loss_fn = induction_model["params"], induction_model["loss_fn"]
    # The model solves the task: induction tokens are predicted, the rest is at chance (log 16 = 2.77).
    assert induction_model["induction_loss"] < 0.8 < 2.5 < induction_model["other_loss"]
    ablation = induction_model["ablation"]
    circuit = [name for name, rise in ablation.items() if rise > 0.3]
    others = [name for name in ablation if name not in circuit]
    assert "l1h1" in circuit or "l1h0" in circuit  # an induction head sits in layer 1
    assert circuit and others, ablation

    heads = {name: sj.head_mask(params, f"blocks/{name[1]}/attn", int(name[3])) for name in ablation}
    probe, mask = _induction_data(2, 18)
    sample, _ = _induction_data(5, 96)
    config = sj.SamplerConfig(step_size=1e-2, nbeta=50.0, localization=100.0, num_chains=4, num_draws=800, batch_size=32,
                              mala_every=0)
    result = sj.estimate_susceptibilities(loss_fn, params, sample, config, key=0, probes={"induction": probe},
                                          components=heads, progress=False)
    chex.assert_shape(result.chi, (18 * (LENGTH - 1), 5))
    assert not result.diverged.any()
    induction = mask[result.labels.example, result.labels.token]

    # Tokens: the leading components of the standardized, row-centred response matrix separate the
    # induction tokens (second copy) from the rest.
    pca = result.pca(2, center=True)
    separation = max(max(a, 1 - a) for a in (_auc(pca.scores[:, k], induction) for k in range(2)))
    assert separation > 0.7, separation

    # Heads: the circuit heads' response columns resemble each other more than the other heads.
    correlation = np.corrcoef(result.zscored().values.T)
    index = {name: result.components.index(name) for name in ablation}
    within = np.mean([correlation[index[a], index[b]] for a in circuit for b in circuit if a < b] or [1.0])
    across = np.mean([correlation[index[a], index[b]] for a in circuit for b in others])
    assert within - across > 0.1, (within, across, ablation)


def test_divergence_is_reported():
    """Every chain diverged: DivergenceError carrying the (all-NaN) result; no numpy warnings on the way."""
    config = lg.CONFIG.replace(step_size=1.0, num_chains=2, num_draws=50, chunk_draws=None)
    with pytest.raises(sj.DivergenceError, match="Every chain diverged") as caught:
        sj.estimate_susceptibilities(lg.loss_fn, lg.w_star, lg.data, config, key=0, probes={"train": lg.train}, progress=False)
    assert isinstance(caught.value.result, sj.SusceptibilityResult) and np.isnan(caught.value.result.chi).all()
    with pytest.raises(sj.DivergenceError, match="Every chain diverged"):
        sj.estimate_bif(lg.loss_fn, lg.w_star, lg.data, config, key=0, probes={"train": lg.train}, block_size=8, progress=False)


def test_summary_of_an_all_nan_result_is_consistent():
    """Issue 18 item 7: every chain NaN (e.g. probes the model cannot read): the chains line and the
    reliability line agree (no 'diverged per column: [0]' beside 'got 0 chains')."""
    per_chain = np.full((4, 8, 2), np.nan)
    summary = synthetic_results.susceptibility_result(per_chain).summary()
    assert "4 chains, 0 with a finite chi" in summary and "reliability undefined" in summary, summary


def test_probe_centering_makes_no_full_data_pass_and_equals_the_exact_baseline(monkeypatch):
    """Issue 19, item 3: φ = L_B(w) - L_B(w*) never needs L_n(w*); χ is the same as with it computed."""
    from helpers import linear_regression
    from slt_jax._src import planning, program

    loss_fn, w_star, data = linear_regression([1.0, 0.5, 0.1, 0.0], n=400)  # n > 320 per-draw examples: no cache
    config = sj.SamplerConfig(step_size=1e-3, nbeta=200.0, localization=1.0, num_chains=4, num_draws=20, batch_size=4)
    probes = {"p": {k: v[:6] for k, v in data.items()}}
    run = lambda: sj.estimate_susceptibilities(loss_fn, w_star, data, config, key=3, probes=probes, progress=False)
    monkeypatch.setattr(planning, "init_loss_source", lambda *args: "full")  # the behaviour before: one full pass
    baseline = run()
    assert np.isfinite(baseline.chains.init_loss).all() and baseline.chains.settings["init_loss"]["source"] == "full"
    monkeypatch.undo()

    def refuse(*args, **kwargs):
        raise AssertionError("a pass over all n examples")

    monkeypatch.setattr(planning, "full_init_losses", refuse)
    monkeypatch.setattr(program, "example_losses", refuse)
    result = run()
    assert result.chains.settings["init_loss"]["source"] == "draws"
    np.testing.assert_array_equal(result.chi_per_chain, baseline.chi_per_chain)
    np.testing.assert_array_equal(result.chi, baseline.chi)
