"""Shared constructors for known-answer tests."""

import jax.numpy as jnp
import numpy as np



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


def standard_error(result):
    """Standard error of llc_mean from the spread of the (independent) chains."""
    values = result.llc_per_chain[~result.diverged]
    return float(np.std(values, ddof=1) / np.sqrt(values.size))
