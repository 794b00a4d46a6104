"""Small models with known answers shared by the issue-5 tests (calibration, diagnostics, io, plots).

Module-level loss functions keep one compiled sampler program per shape across the test files.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

NBETA = 100.0
LOCALIZATION = 1.0


@functools.lru_cache(maxsize=None)
def regression(n: int = 200, seed: int = 0):
    """Linear regression, unit noise, w* = least squares. Returns (params, data, H eigenvalues, L*)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) * np.array([1.0, 0.7, 0.3, 0.1])
    y = x @ rng.normal(size=4) + rng.normal(size=n)
    w = np.linalg.lstsq(x, y, rcond=None)[0]
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    hessian = x.T @ x / n
    return jnp.asarray(w, jnp.float32), data, np.linalg.eigvalsh(hessian), hessian


def regression_loss(w, batch):
    """Per-example 0.5 (y - x·w)²: minibatch gradients carry sampling noise."""
    return 0.5 * (batch["y"] - batch["x"] @ w) ** 2


def exact_quadratic_loss(w, batch):
    """The regression's FULL-data loss ½ δᵀHδ (+ const), whatever the batch: SGLD becomes exact ULA,
    so docs/conventions.md §2's closed form λ̂_ε holds exactly (no gradient noise)."""
    _, _, _, hessian = regression()
    w_star = regression()[0]
    delta = w - w_star
    value = 0.5 * delta @ jnp.asarray(hessian, jnp.float32) @ delta
    return value * jnp.ones(batch["y"].shape[0])


def dln_loss(kernels, batch):
    """Deep linear network x -> x @ K_1 @ ... @ K_L, per-example 0.5||y - f(x)||²."""
    out = batch["x"]
    for kernel in kernels:
        out = out @ kernel
    return 0.5 * jnp.sum((batch["y"] - out) ** 2, axis=-1)


@functools.lru_cache(maxsize=None)
def dln(widths: tuple[int, ...], rank: int, n: int, seed: int = 0):
    """A DLN teacher of product rank ``rank``, data with unit noise, w* = the teacher trained to
    convergence. Returns (kernels, data, rank of the product)."""
    rng = np.random.default_rng(seed)
    kernels = [rng.normal(size=(a, b)) / np.sqrt(a) for a, b in zip(widths[:-1], widths[1:])]
    kernels[0] = rng.normal(size=(widths[0], rank)) @ rng.normal(size=(rank, widths[1])) / np.sqrt(widths[0] * max(rank, 1))
    product = kernels[0]
    for kernel in kernels[1:]:
        product = product @ kernel
    x = rng.normal(size=(n, widths[0]))
    y = x @ product + rng.normal(size=(n, widths[-1]))
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    params = [jnp.asarray(k, jnp.float32) for k in kernels]
    objective = lambda p: jnp.mean(dln_loss(p, data))
    optimizer = optax.adam(3e-3)

    def step(carry, _):
        p, state = carry
        updates, state = optimizer.update(jax.grad(objective)(p), state, p)
        return (optax.apply_updates(p, updates), state), None

    params = jax.jit(lambda p: jax.lax.scan(step, (p, optimizer.init(p)), None, length=3000)[0][0])(params)
    return params, data, int(np.linalg.matrix_rank(product))
