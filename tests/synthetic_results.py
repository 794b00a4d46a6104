"""Synthetic results and a planted-cluster task for the analysis and reliability tests."""

import jax.numpy as jnp
import numpy as np

import slt_jax as sj
from slt_jax.stats import ProbeLabels


def susceptibility_result(per_chain, probe="probe"):
    """A ``SusceptibilityResult`` from per-chain estimates ``(C, N, K)``: rows are 4 tokens per example."""
    per_chain = np.asarray(per_chain, np.float64)
    num_chains, num_rows, num_columns = per_chain.shape
    names = [f"c{k}" for k in range(num_columns)]
    return sj.SusceptibilityResult(
        chi=per_chain.mean(axis=0), stderr=per_chain.std(axis=0, ddof=1) / np.sqrt(num_chains), chi_per_chain=per_chain,
        components=names, column_component=np.asarray(names), column_observable=np.full(num_columns, "loss"),
        labels=ProbeLabels(np.full(num_rows, probe), np.arange(num_rows) // 4, np.arange(num_rows) % 4),
        observable_mean=np.zeros(num_columns), observable_mean_per_chain=np.zeros((num_chains, num_columns)), nbeta=1.0,
        method="covariance", centering="probe", diverged=np.zeros((num_columns, num_chains), bool), chains=None,
    )


def planted_regression(seed=0, num_groups=3, per_group=16, dims=2):
    """Linear regression mixing ``num_groups`` sub-tasks: each group's inputs live in its own ``dims``
    coordinates (disjoint subspaces) with its own teacher there; w* is the least-squares fit.

    Returns:
        (groups (n,), loss_fn, w_star (num_groups * dims,), data {"x": (n, d), "y": (n,)}).
    """
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(num_groups), per_group)
    x = np.zeros((groups.size, num_groups * dims))
    for g in range(num_groups):
        x[groups == g, g * dims:(g + 1) * dims] = rng.normal(size=(per_group, dims))
    y = x @ rng.normal(size=num_groups * dims) + rng.normal(size=groups.size)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    return groups, loss_fn, jnp.asarray(w_star, jnp.float32), data
