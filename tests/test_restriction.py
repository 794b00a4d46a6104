"""Restricted chains (slt_jax.restriction): layouts, insertion, closed forms, stacked == single runs."""

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
    """All but one layer frozen = linear regression in that layer: λ̂_ε is exact (docs/conventions.md §2)."""
    params, loss_fn, data = frozen_dln
    components = {f"layer{j}": sj.component_mask(params, f"layers/{j}") for j in range(2)}
    config = sj.SamplerConfig(step_size=STEP_SIZE, nbeta=NBETA, localization=LOCALIZATION, num_chains=NUM_CHAINS,
                              num_draws=2000, num_burnin=500, batch_size=1, mala_every=0)
    table = sj.estimate_llc_table(loss_fn, [params], data, config, key=0, components=components, progress=False)
    chex.assert_shape(table.llc_per_chain, (1, 2, NUM_CHAINS))
    np.testing.assert_array_equal(table.num_sampled, [9, 6])
    for index, layer in enumerate(range(2)):
        eigenvalues = _restricted_eigenvalues(params, loss_fn, data, layer)
        exact = sj.theory.quadratic_llc(eigenvalues, NBETA, LOCALIZATION, step_size=STEP_SIZE)
        standard_error = table.llc_std[0, index] / np.sqrt(NUM_CHAINS)
        assert abs(table.llc_mean[0, index] - exact) < 4 * standard_error, (layer, table.llc_mean[0, index], exact, standard_error)
        # The chains carry only their layer: the frozen layer is not part of the state at all.
        final = table.chains.final_positions[index]
        assert final["layers"][1 - layer]["kernel"] is None
        chex.assert_shape(final["layers"][layer]["kernel"], (NUM_CHAINS, *params["layers"][layer]["kernel"].shape))
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


# No burn-in and one chunk length: one compiled program per layout.
CONFIG = sj.SamplerConfig(step_size=1e-3, nbeta=20.0, localization=10.0, num_chains=2, num_draws=40, batch_size=8, mala_every=0)


def test_stacked_components_equal_estimate_llc_per_component(mlp):
    params, loss_fn, data, components = mlp
    table = sj.estimate_llc_table(loss_fn, [params], data, CONFIG, key=3, components=components, progress=False)
    assert table.components == ["layer0", "unit0", "biases"]
    np.testing.assert_array_equal(table.num_sampled, [12, 2, 5])
    for index, (name, mask) in enumerate(components.items()):
        single = sj.estimate_llc(loss_fn, params, data, CONFIG, key=3, component=mask, progress=False)
        cell = table.result(0, name)
        np.testing.assert_allclose(cell.loss_trace, single.loss_trace, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(table.llc_per_chain[0, index], single.llc_per_chain, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(cell.ess, single.ess, rtol=1e-3)
        assert cell.init_loss == pytest.approx(single.init_loss)
        # Only the component's coordinates are carried, and each of them moved.
        final = table.chains.final_positions[index]
        for m, p, f in zip(jax.tree.leaves(mask), jax.tree.leaves(params), treedef_leaves(params, final)):
            if not np.any(m):
                assert f is None
            else:
                assert np.size(f) == 2 * int(np.sum(np.broadcast_to(m, np.shape(p))))
    assert "unit0" in table.table() and "biases" in repr(table)


def treedef_leaves(params, position):
    return jax.tree.structure(params).flatten_up_to(position)


def _quadratic_problem():
    curvature = jnp.array([[1.0, 1000.0]])
    loss_fn = lambda w, batch: 0.5 * jnp.sum(curvature * (w["w"][None] - batch["x"]) ** 2, axis=-1)
    return loss_fn, {"w": jnp.zeros(2)}, {"x": jnp.zeros((16, 2))}


def test_diverging_component_is_reported_not_averaged():
    loss_fn, params, data = _quadratic_problem()
    components = {"soft": {"w": np.array([True, False])}, "stiff": {"w": np.array([False, True])}}
    # ε = 0.01 is stable for nβh = 100 and unstable for nβh = 1e5.
    config = sj.SamplerConfig(step_size=1e-2, nbeta=100.0, localization=1.0, num_chains=2, num_draws=200, batch_size=4, mala_every=0)
    with pytest.warns(RuntimeWarning, match="'stiff'"):
        table = sj.estimate_llc_table(loss_fn, [params], data, config, key=0, components=components, progress=False)
    assert np.isfinite(table.llc_mean[0, 0]) and np.isnan(table.llc_mean[0, 1])
    assert table.diverged[0, 1].all() and not table.diverged[0, 0].any()
    with pytest.raises(sj.DivergenceError, match="Every chain diverged"):
        sj.estimate_llc_table(loss_fn, [params], data, config, key=0, progress=False,
                              components={"stiff": components["stiff"], "again": components["stiff"]})


def test_validation_errors_before_compiling():
    loss_fn, params, data = _quadratic_problem()
    config = sj.SamplerConfig(step_size=1e-3, nbeta=10.0, localization=1.0, num_draws=10, batch_size=4)
    before = sj.compile_count()
    table = lambda components, **kw: sj.estimate_llc_table(loss_fn, [params], data, kw.pop("config", config), key=0,
                                                           components=components, progress=False, **kw)
    with pytest.raises(ValueError, match="non-empty dict"):
        table({})
    with pytest.raises(ValueError, match="same structure"):
        table({"bad": {"v": True}})
    with pytest.raises(ValueError, match="selects no coordinate"):
        table({"empty": {"w": False}})
    # step_size="auto" calibrates first: the inputs are still checked before anything compiles.
    auto = config.replace(step_size="auto")
    with pytest.raises(ValueError, match="selects no coordinate"):
        table({"empty": {"w": False}}, config=auto)
    with pytest.raises(ValueError, match="same structure"):
        table({"bad": {"v": True}}, config=auto)
    with pytest.raises(ValueError, match="loss_estimator"):
        table({"all": {"w": True}}, loss_estimator="mean")
    with pytest.raises(ValueError, match="steps"):
        table({"all": {"w": True}}, steps=[1, 2])
    assert sj.compile_count() == before


@pytest.mark.parametrize(
    "mask_of,kind,axis,size",
    [
        (lambda m: m.__setitem__((slice(None), 1), True), "slice", 1, 1),  # one head of (in, heads, dim)
        (lambda m: m.__setitem__((slice(None), slice(1, 3)), True), "slice", 1, 2),  # two adjacent heads
        (lambda m: m.__setitem__(0, True), "slice", 0, 1),  # a leading block
        (lambda m: m.__setitem__((0, 0, 0), True), "elements", 0, 1),  # one element of a 3-d leaf
        (lambda m: (m.__setitem__((0, 0, 0), True), m.__setitem__((2, 3, 1), True)), "elements", 0, 2),
        (lambda m: m.__setitem__((slice(None), slice(None), slice(None)), True), "whole", 0, 0),
    ],
)
def test_layouts_and_insertion_round_trip(mask_of, kind, axis, size):
    params = {"w": np.arange(24, dtype=np.float32).reshape(3, 4, 2), "b": np.ones(2, np.float32)}
    mask = {"w": np.zeros((3, 4, 2), bool), "b": np.asarray(False)}
    mask_of(mask["w"])
    restriction = sj.restriction.restrict(mask, params)
    leaf = restriction.layout.leaves[1]  # leaves are ordered b, w
    assert restriction.layout.leaves[0] is None
    assert (leaf.kind, leaf.axis if kind == "slice" else 0, leaf.size if kind != "whole" else 0) == (kind, axis, size)
    assert restriction.num_sampled == int(mask["w"].sum())
    piece = sj.restriction.extract(restriction.layout, restriction.offsets, params)
    assert piece["b"] is None
    np.testing.assert_array_equal(np.sort(np.ravel(piece["w"])), np.sort(params["w"][mask["w"]]))
    moved = sj.restriction.insert(restriction.layout, restriction.offsets, params, jax.tree.map(lambda x: x + 100.0, piece))
    np.testing.assert_array_equal(np.asarray(moved["w"]) != params["w"], mask["w"])
    np.testing.assert_array_equal(moved["b"], params["b"])


def test_heads_of_one_layer_share_one_layout():
    model = sj.models.AttentionOnlyTransformer(8, 6, 2, 4, 16, rngs=nnx.Rngs(0))
    params, _ = sj.from_nnx(model, "next_token")
    heads = [sj.restriction.restrict(sj.head_mask(params, f"blocks/{l}/attn", h), params) for l in range(2) for h in range(4)]
    assert len({r.layout for r in heads[:4]}) == 1 and len({r.layout for r in heads}) == 2
    assert all(leaf is None or leaf.kind in ("slice", "whole") for r in heads for leaf in r.layout.leaves)
    assert heads[0].num_sampled == sum(int(np.sum(m)) for m in jax.tree.leaves(sj.head_mask(params, "blocks/0/attn", 0)))
