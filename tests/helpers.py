"""Shared constructors for known-answer tests."""

import jax.numpy as jnp
import numpy as np

from slt_jax import theory


def linear_regression(eigenvalues, n=1000, seed=0):
    """Data whose empirical loss is EXACTLY quadratic around w* with H = XᵀX/n = diag(eigenvalues).

    The residuals y - Xw* are orthogonal to X's columns, so w* = ones is the exact minimiser and
    L_n(w) - L_n(w*) = ½ δᵀ H δ.

    Returns:
        (loss_fn, w_star (d,), data {"x": (n, d), "y": (n,)}).
    """
    eigenvalues = np.asarray(eigenvalues, np.float64)
    d = eigenvalues.size
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, d + 1)))
    x = q[:, :d] * np.sqrt(n) * np.sqrt(eigenvalues)
    residual = q[:, d] * np.sqrt(n)  # orthogonal to every column of x, unit mean square
    w_star = np.ones(d)
    y = x @ w_star + residual
    loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    return loss_fn, jnp.asarray(w_star, jnp.float32), data


def dln_teacher(widths, rank, n, seed=0, noise=1.0):
    """A deep linear network teacher with product rank ``rank`` and Gaussian regression data.

    Returns:
        (loss_fn, params list of (H_i, H_{i+1}) matrices, data {"x": (n, H_1), "y": (n, H_{L+1})}).
    """
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=(a, b)) / np.sqrt(a) for a, b in zip(widths[:-1], widths[1:])]
    u, s, vt = np.linalg.svd(weights[0], full_matrices=False)
    s[rank:] = 0.0
    weights[0] = (u * s) @ vt
    product = weights[0]
    for w in weights[1:]:
        product = product @ w
    assert theory.matrix_rank(product) == rank
    x = rng.normal(size=(n, widths[0]))
    y = x @ product + noise * rng.normal(size=(n, widths[-1]))

    def loss_fn(params, batch):
        out = batch["x"]
        for w in params:
            out = out @ w
        return 0.5 * jnp.sum((batch["y"] - out) ** 2, axis=-1)

    params = [jnp.asarray(w, jnp.float32) for w in weights]
    return loss_fn, params, {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}


def standard_error(result):
    """Standard error of llc_mean from the spread of the (independent) chains."""
    values = result.llc_per_chain[~result.diverged]
    return float(np.std(values, ddof=1) / np.sqrt(values.size))
