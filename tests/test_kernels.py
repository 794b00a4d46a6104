"""Kernel-level checks of the SGLD update (docs/conventions.md §1), by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_jax import kernels


def _update(position, grad, noise, center, hyper, sampler="sgld", second_moment=None, count=0):
    pre = kernels.get_preconditioner(sampler)
    state = kernels.init(position, pre)
    if second_moment is not None:
        state = state._replace(second_moment=second_moment)
    state = state._replace(count=jnp.asarray(count, jnp.int32))
    loss = jnp.zeros(())
    return kernels.sgld_update(state, loss, grad, noise, center, hyper, pre)


def test_sgld_update_matches_formula():
    w = jnp.array([1.0, -2.0, 0.5])
    center = jnp.array([0.5, 0.0, 0.5])
    g = jnp.array([0.3, 0.1, -0.2])
    xi = jnp.array([0.7, -1.1, 0.2])
    hyper = kernels.hyperparameters(step_size=0.01, nbeta=50.0, localization=3.0, weight_decay=0.1)
    state, info = _update(w, g, xi, center, hyper)
    expected = w - 0.005 * (50.0 * g + 3.0 * (w - center) + 0.1 * w) + np.sqrt(0.01) * xi
    np.testing.assert_allclose(state.position, expected, rtol=1e-6)
    np.testing.assert_allclose(info.grad_norm, np.linalg.norm(g), rtol=1e-6)
    np.testing.assert_allclose(info.localization_norm, np.linalg.norm(3.0 * (w - center)), rtol=1e-6)
    np.testing.assert_allclose(info.noise_norm, np.linalg.norm(0.1 * xi), rtol=1e-6)
    np.testing.assert_allclose(info.distance, np.linalg.norm(w - center), rtol=1e-6)
    assert int(state.count) == 1


@pytest.mark.parametrize("sampler", ["sgld", "rmsprop_sgld"])
def test_noise_norm_of_signs_is_taken_without_reading_them(sampler):
    position = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.ones((2, 2))}
    grad = jax.tree.map(lambda x: 0.3 * x - 0.1, position)
    signs = kernels.tree_rademacher(jax.random.key(2), position)
    pre = kernels.get_preconditioner(sampler)
    hyper = kernels.hyperparameters(step_size=0.01, nbeta=50.0, localization=3.0)
    state = kernels.init(position, pre)
    read = kernels.sgld_update(state, jnp.zeros(()), grad, signs, position, hyper, pre)
    closed = kernels.sgld_update(state, jnp.zeros(()), grad, signs, position, hyper, pre, unit_noise=True)
    np.testing.assert_allclose(closed[1].noise_norm, read[1].noise_norm, rtol=1e-6)
    chex.assert_trees_all_equal(closed[0].position, read[0].position)


def test_rmsprop_devinterp_first_step_from_science():
    # docs/conventions.md §1: w=(3,4), g=(3,4), ε=1, nβ=2, γ=0, noise off, α=0.99 -> G=(2.5,2), w=(-4.5,-4).
    w = jnp.array([3.0, 4.0])
    hyper = kernels.hyperparameters(step_size=1.0, nbeta=2.0, localization=0.0)
    state, _ = _update(w, jnp.array([3.0, 4.0]), jnp.zeros(2), jnp.zeros(2), hyper, sampler="rmsprop_sgld_devinterp")
    np.testing.assert_allclose(state.position, [-4.5, -4.0], rtol=1e-6)
    np.testing.assert_allclose(state.second_moment, [0.09, 0.16], rtol=1e-5)


def test_rmsprop_hitchcock_hoogland_two_steps_by_hand():
    alpha, step, nbeta, gamma = 0.99, 0.01, 10.0, 2.0
    eps = kernels.PRECONDITIONERS["rmsprop_sgld"].eps
    w0 = np.array([0.5, -1.0])
    center = np.array([0.0, 0.0])
    g0, g1 = np.array([0.2, -0.4]), np.array([1.0, 0.1])
    xi0, xi1 = np.array([0.3, -0.2]), np.array([-0.5, 0.8])
    # by hand, v_{-1} = 1, bias correction 1 - α^{t+1}
    v = np.ones(2)
    w = w0.copy()
    for t, (g, xi) in enumerate([(g0, xi0), (g1, xi1)]):
        v = alpha * v + (1 - alpha) * g**2
        vhat = v / (1 - alpha ** (t + 1))
        e = step / (np.sqrt(vhat) + eps)
        w = w - e / 2 * (nbeta * g + gamma * (w - center)) + np.sqrt(e) * xi
    hyper = kernels.hyperparameters(step, nbeta, gamma)
    pre = kernels.get_preconditioner("rmsprop_sgld")
    state = kernels.init(jnp.asarray(w0, jnp.float32), pre)
    for g, xi in [(g0, xi0), (g1, xi1)]:
        state, _ = kernels.sgld_update(
            state, jnp.zeros(()), jnp.asarray(g, jnp.float32), jnp.asarray(xi, jnp.float32), jnp.asarray(center, jnp.float32), hyper, pre
        )
    np.testing.assert_allclose(state.position, w, rtol=1e-5)
    np.testing.assert_allclose(state.second_moment, v, rtol=1e-5)


def test_rmsprop_statistics_ignore_localization():
    # Same loss gradient, different distances from w*: identical second moments.
    hyper = kernels.hyperparameters(0.01, 1.0, 100.0)
    g = jnp.array([0.5, 0.5])
    s1, _ = _update(jnp.array([0.0, 0.0]), g, jnp.zeros(2), jnp.zeros(2), hyper, sampler="rmsprop_sgld")
    s2, _ = _update(jnp.array([5.0, -5.0]), g, jnp.zeros(2), jnp.zeros(2), hyper, sampler="rmsprop_sgld")
    chex.assert_trees_all_close(s1.second_moment, s2.second_moment)


def test_build_kernel_runs_and_is_jittable():
    loss_fn = lambda w, batch: 0.5 * (batch - w) ** 2
    kernel = jax.jit(kernels.build_kernel(loss_fn, preconditioner="rmsprop_sgld"), static_argnames=("mala",))
    state = kernels.init(jnp.zeros(()), "rmsprop_sgld")
    hyper = kernels.hyperparameters(1e-2, 10.0, 1.0)
    state, info = kernel(jax.random.key(0), state, jnp.ones((5,)), jnp.zeros(()), hyper, mala=True)
    chex.assert_shape(state.position, ())
    chex.assert_tree_all_finite((state, info))
    np.testing.assert_allclose(info.loss, 0.5, rtol=1e-6)
    assert 0.0 < float(info.mala_acceptance) <= 1.0


def test_mala_acceptance_is_one_for_exact_gaussian_limit_and_drops_with_step():
    # Exact formula on a 1-D Gaussian: U = a w²/2; check against a direct numpy computation.
    a = 4.0
    w, xi = 0.3, 0.9
    for eps in (1e-3, 1e-1, 0.4):
        prop = w - eps / 2 * a * w + np.sqrt(eps) * xi
        log_q = lambda to, frm: -((to - frm + eps / 2 * a * frm) ** 2) / (2 * eps)
        direct = min(0.0, -a * prop**2 / 2 + a * w**2 / 2 + log_q(w, prop) - log_q(prop, w))
        got = kernels.mala_log_acceptance(
            jnp.asarray(w), jnp.asarray(a * w**2 / 2), jnp.asarray(a * w), jnp.asarray(prop),
            jnp.asarray(a * prop**2 / 2), jnp.asarray(a * prop), jnp.asarray(eps),
        )
        np.testing.assert_allclose(float(got), direct, rtol=1e-4, atol=1e-6)


def test_kernel_without_diagnostics_reports_nan_norms_and_the_same_step():
    loss_fn = lambda w, batch: 0.5 * jnp.sum((batch - w[None]) ** 2, axis=-1)
    hyper = kernels.hyperparameters(1e-2, 10.0, 1.0)
    state = kernels.init(jnp.ones(3))
    batch = jnp.zeros((4, 3))
    kernel = kernels.build_kernel(loss_fn)
    full = kernel(jax.random.key(1), state, batch, jnp.zeros(3), hyper)
    lean = kernel(jax.random.key(1), state, batch, jnp.zeros(3), hyper, diagnostics=False)
    traced = jax.jit(lambda flag: kernel(jax.random.key(1), state, batch, jnp.zeros(3), hyper, diagnostics=flag))
    np.testing.assert_allclose(traced(True)[1].grad_norm, full[1].grad_norm, rtol=1e-6)
    assert np.isnan(float(traced(False)[1].grad_norm))
    np.testing.assert_array_equal(full[0].position, lean[0].position)
    assert np.isnan(float(lean[1].grad_norm)) and np.isfinite(float(full[1].grad_norm))


def test_rmsprop_uses_optax_moment_helpers():
    # The preconditioner's statistics are optax's second moment with optax's bias correction.
    import optax

    pre = kernels.get_preconditioner("rmsprop_sgld")
    g = jnp.array([0.3, -2.0])
    state = kernels.init(jnp.zeros(2), pre)
    sizes, moment = kernels.step_sizes(pre, state, g, jnp.asarray(0.1))
    expected = optax.tree.update_moment_per_elem_norm(g, jnp.ones(2), pre.alpha, 2)
    np.testing.assert_allclose(moment, expected, rtol=1e-6)
    np.testing.assert_allclose(sizes, 0.1 / (jnp.sqrt(expected / (1 - pre.alpha)) + pre.eps), rtol=1e-6)


def test_unknown_preconditioner_is_rejected():
    with pytest.raises(ValueError, match="preconditioner='adam'"):
        kernels.get_preconditioner("adam")


def test_leimkuhler_matthews_steps_with_the_mean_of_two_increments():
    # scheme="leimkuhler-matthews": w_{t+1} = w_t - (ε/2)∇U + sqrt(ε)(ξ_t + ξ_{t-1})/2, ξ_{-1} = 0.
    w = jnp.array([1.0, -2.0, 0.5])
    center = jnp.zeros(3)
    g = jnp.array([0.3, 0.1, -0.2])
    xi0, xi1 = jnp.array([0.7, -1.1, 0.2]), jnp.array([-0.4, 0.9, 1.3])
    hyper = kernels.hyperparameters(step_size=0.01, nbeta=50.0, localization=3.0)
    pre = kernels.get_preconditioner("sgld")
    state = kernels.init(w, pre, "leimkuhler-matthews")
    chex.assert_trees_all_equal(state.previous_noise, jnp.zeros(3))
    assert kernels.init(w, pre).previous_noise is None  # the Euler step carries nothing more
    first, info = kernels.sgld_update(state, jnp.zeros(()), g, xi0, center, hyper, pre)
    drift = lambda x: 50.0 * g + 3.0 * (x - center)
    expected = w - 0.005 * drift(w) + 0.1 * 0.5 * xi0
    np.testing.assert_allclose(first.position, expected, rtol=1e-6)
    np.testing.assert_allclose(first.previous_noise, xi0)
    np.testing.assert_allclose(info.noise_norm, np.linalg.norm(0.05 * xi0), rtol=1e-6)
    second, _ = kernels.sgld_update(first, jnp.zeros(()), g, xi1, center, hyper, pre)
    np.testing.assert_allclose(second.position, expected - 0.005 * drift(expected) + 0.1 * 0.5 * (xi0 + xi1), rtol=1e-6)
    # Two-point signs: the noise norm is read (the mean of two signs is 0 or ±1, not always 1).
    signs = jnp.array([1.0, -1.0, 1.0])
    lm = kernels.sgld_update(first, jnp.zeros(()), g, signs, center, hyper, pre, unit_noise=True)[1]
    np.testing.assert_allclose(lm.noise_norm, np.linalg.norm(0.05 * (xi0 + signs)), rtol=1e-6)


def test_leimkuhler_matthews_mala_diagnostic_proposes_a_gaussian_euler_step():
    # The LM step's increment is not drawn afresh from the state, so the MALA diagnostic proposes a
    # Gaussian Euler step from fold_in(key, 1) instead, as for two-point noise.
    loss_fn = lambda w, batch: 0.5 * jnp.sum((batch - w[None]) ** 2, axis=-1)
    hyper = kernels.hyperparameters(1e-2, 10.0, 1.0)
    batch = jnp.zeros((4, 3))
    kernel = kernels.build_kernel(loss_fn)
    state = kernels.init(jnp.ones(3), "sgld", "leimkuhler-matthews")._replace(previous_noise=jnp.full(3, 5.0))
    lm = kernel(jax.random.key(1), state, batch, jnp.zeros(3), hyper, mala=True)[1].mala_acceptance
    # The same Gaussian proposal, taken by hand from an Euler state with the diagnostic's key.
    euler = kernels.init(jnp.ones(3))
    noise = kernels.tree_normal(jax.random.fold_in(jax.random.key(1), 1), euler.position)
    by_hand = kernel(jax.random.key(1), euler, batch, jnp.zeros(3), hyper, noise, mala=True)[1].mala_acceptance
    np.testing.assert_allclose(lm, by_hand, rtol=1e-6)


def test_unknown_scheme_is_rejected_naming_the_choices():
    with pytest.raises(ValueError, match="scheme='heun'.*'euler'.*'leimkuhler-matthews'"):
        kernels.init(jnp.zeros(2), "sgld", "heun")
