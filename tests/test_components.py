"""Tests for slt_jax.components: restricted LLCs against closed forms, vmapped == looped."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import slt_jax as sj



@pytest.fixture(autouse=True, scope="module")
def fast_compilation():
    """Sampler programs compile ~4x faster without XLA's optimisations; these runs are tiny."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


WIDTHS = [3, 3, 2]
NBETA, LOCALIZATION, STEP_SIZE = 100.0, 1.0, 2e-3
NUM_CHAINS = 8


def _full_batch_mse(outputs, batch):
    """0.5 * mean_i ||y_i - f(x_i)||² of a whole dataset stored as ONE example: deterministic gradients."""
    return 0.5 * jnp.mean(jnp.sum((outputs - batch["targets"]) ** 2, axis=-1), axis=-1)


@pytest.fixture(scope="module")
def frozen_dln():
    """A noise-free deep linear teacher: w* is a global minimum and L is quadratic in each layer."""
    teacher = sj.tasks.dln_teacher(0, WIDTHS, rank=2)
    data = sj.tasks.dln_regression(1, teacher, 64, noise_std=0.0)
    model = sj.models.DeepLinearNetwork(WIDTHS, kernels=teacher, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, _full_batch_mse)
    return params, loss_fn, jax.tree.map(lambda x: x[None], data)


def _restricted_eigenvalues(params, loss_fn, data, layer):
    kernel = params["layers"][layer]["kernel"]

    def layer_loss(k):
        layers = dict(params["layers"])
        layers[layer] = {"kernel": k}
        return jnp.mean(loss_fn({"layers": layers}, data))

    hessian = jax.hessian(layer_loss)(kernel).reshape(kernel.size, kernel.size)
    return np.clip(np.linalg.eigvalsh(np.asarray(hessian, np.float64)), 0.0, None)


def test_restricted_llc_matches_closed_form(frozen_dln):
    """All but one layer frozen = linear regression in that layer: λ̂_ε is exact (SCIENCE.md §2)."""
    params, loss_fn, data = frozen_dln
    components = {f"layer{j}": sj.component_mask(params, f"layers/{j}") for j in range(2)}
    table = sj.estimate_llc_per_component(
        loss_fn, params, data, components, key=0, step_size=STEP_SIZE, nbeta=NBETA, localization=LOCALIZATION,
        num_chains=NUM_CHAINS, num_draws=2000, num_burnin=500, batch_size=1, progress=False, mala_every=0,
    )
    chex.assert_shape(table.llc_per_chain, (2, NUM_CHAINS))
    np.testing.assert_array_equal(table.num_selected, [9, 6])
    for index, layer in enumerate(range(2)):
        eigenvalues = _restricted_eigenvalues(params, loss_fn, data, layer)
        exact = sj.theory.quadratic_llc(eigenvalues, NBETA, LOCALIZATION, step_size=STEP_SIZE)
        standard_error = table.llc_std[index] / np.sqrt(NUM_CHAINS)
        assert abs(table.llc_mean[index] - exact) < 4 * standard_error, (layer, table.llc_mean[index], exact, standard_error)
        # The frozen layer never moved.
        final = table.results[f"layer{layer}"].chains.final_state.position
        np.testing.assert_array_equal(final["layers"][1 - layer]["kernel"], np.broadcast_to(params["layers"][1 - layer]["kernel"], (NUM_CHAINS, *params["layers"][1 - layer]["kernel"].shape)))
    # Layer 0's restricted Hessian has a null space (K_2 K_2ᵀ has rank 2 < 3): 3 flat directions.
    assert np.sum(_restricted_eigenvalues(params, loss_fn, data, 0) < 1e-5) == 3


@pytest.fixture(scope="module")
def mlp():
    model = sj.models.MLP(2, [4], 1, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "mse")
    data = sj.tasks.dln_regression(0, [np.ones((2, 1), np.float32)], 32)
    components = {
        "layer0": sj.component_mask(params, "layers/0"),
        # A partial leaf (one hidden unit's input weights), like an attention head's slice.
        "unit0": sj.component_mask(params, lambda path, leaf: np.arange(4) == 0 if path == "layers/0/kernel" else False),
        "biases": sj.component_mask(params, "**/bias"),
    }
    return params, loss_fn, data, components


# No burn-in and one chunk length: one compiled program per number of configurations.
SETTINGS = dict(key=3, step_size=1e-3, nbeta=20.0, localization=10.0, num_chains=2, num_draws=40, batch_size=8, progress=False, mala_every=0)


def test_vmapped_components_equal_estimate_llc_per_mask(mlp):
    params, loss_fn, data, components = mlp
    # components_per_run=2: two runs (the second padded), which must share one executable.
    table = sj.estimate_llc_per_component(loss_fn, params, data, components, components_per_run=2, **SETTINGS)
    assert table.names == ["layer0", "unit0", "biases"]
    np.testing.assert_array_equal(table.num_selected, [12, 2, 5])
    assert table.results["biases"].chains.compile_seconds == 0.0
    for index, (name, mask) in enumerate(components.items()):
        single = sj.estimate_llc(loss_fn, params, data, mask=mask, **SETTINGS)
        np.testing.assert_allclose(table.results[name].loss_trace, single.loss_trace, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(table.llc_per_chain[index], single.llc_per_chain, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(table.llc_mean[index], single.llc_mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(table.results[name].ess, single.ess, rtol=1e-3)
        assert table.results[name].init_loss == pytest.approx(single.init_loss)
        # Only the component's coordinates moved.
        final = table.results[name].chains.final_state.position
        for m, p, f in zip(jax.tree.leaves(mask), jax.tree.leaves(params), jax.tree.leaves(final)):
            chex.assert_shape(f, (2, *np.shape(p)))
            np.testing.assert_array_equal(np.any(np.asarray(f) != np.asarray(p)[None], axis=0), np.broadcast_to(m, np.shape(p)))
    assert "unit0" in table.table() and "biases" in repr(table)


def _quadratic_problem():
    curvature = jnp.array([[1.0, 1000.0]])
    loss_fn = lambda w, batch: 0.5 * jnp.sum(curvature * (w["w"][None] - batch["x"]) ** 2, axis=-1)
    return loss_fn, {"w": jnp.zeros(2)}, {"x": jnp.zeros((16, 2))}


def test_diverging_component_is_reported_not_averaged():
    loss_fn, params, data = _quadratic_problem()
    components = {"soft": {"w": np.array([True, False])}, "stiff": {"w": np.array([False, True])}}
    # ε = 0.01 is stable for nβh = 100 and unstable for nβh = 1e5.
    with pytest.warns(RuntimeWarning, match="'stiff'"):
        table = sj.estimate_llc_per_component(
            loss_fn, params, data, components, key=0, step_size=1e-2, nbeta=100.0, localization=1.0,
            num_chains=2, num_draws=200, batch_size=4, progress=False, mala_every=0,
        )
    assert np.isfinite(table.llc_mean[0]) and np.isnan(table.llc_mean[1])
    assert table.results["stiff"].diverged.all() and not table.results["soft"].diverged.any()
    with pytest.raises(sj.DivergenceError, match="'stiff'"):
        sj.estimate_llc_per_component(
            loss_fn, params, data, {"stiff": components["stiff"], "again": components["stiff"]}, key=0, step_size=1e-2, nbeta=100.0,
            localization=1.0, num_chains=2, num_draws=200, batch_size=4, progress=False, mala_every=0,
        )


def test_validation_errors_before_compiling():
    loss_fn, params, data = _quadratic_problem()
    settings = dict(key=0, step_size=1e-3, nbeta=10.0, localization=1.0, num_draws=10, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="non-empty dict"):
        sj.estimate_llc_per_component(loss_fn, params, data, {}, **settings)
    with pytest.raises(ValueError, match="same structure"):
        sj.estimate_llc_per_component(loss_fn, params, data, {"bad": {"v": True}}, **settings)
    with pytest.raises(ValueError, match="selects no coordinate"):
        sj.estimate_llc_per_component(loss_fn, params, data, {"empty": {"w": False}}, **settings)
    with pytest.raises(ValueError, match="components"):
        sj.estimate_llc_per_component(loss_fn, params, data, {"all": {"w": True}}, mask={"w": True}, **settings)
    with pytest.raises(ValueError, match="must be a number"):
        sj.estimate_llc_per_component(loss_fn, params, data, {"all": {"w": True}}, **dict(settings, step_size="auto"))
    with pytest.raises(ValueError, match="loss_estimator"):
        sj.estimate_llc_per_component(loss_fn, params, data, {"all": {"w": True}}, loss_estimator="mean", **settings)
