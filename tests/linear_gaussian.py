"""A linear-regression posterior with exact Gaussian answers, shared by the issue-4 tests.

l_i(w) = ½ (y_i - x_iᵀ w)², w* the least-squares solution (so x = w - w* has mean 0 under the
localized posterior), H = XᵀX / n. Full-batch SGLD on this quadratic is a linear AR(1) process whose
stationary law is exactly N(w*, Σ_ε) with Σ_ε = (A (I - εA/4))^{-1}, A = nβH + γI (docs/conventions.md §2),
so the Isserlis forms of docs/conventions.md §3 hold exactly at any stable step size.

The sampler draws minibatches with replacement, so the tests feed the n examples as ONE data
example of n rows (``data``) with batch_size=1: every step's gradient is the full-batch gradient.
Probes use the usual layout (``train``: n examples).

Runs are cached (``functools.cache``) so the test files share them, and every run of one kind uses
the same loss_fn / observable objects and shapes: one compiled program each.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

import slt_jax as sj

N, D = 16, 3
NUM_CHAINS, NUM_DRAWS, CHUNK = 16, 24000, 2000
NBETA, GAMMA, EPS = 40.0, 1.0, 0.01
CONFIG = sj.SamplerConfig(step_size=EPS, nbeta=NBETA, localization=GAMMA, num_chains=NUM_CHAINS, num_draws=NUM_DRAWS,
                          batch_size=1, chunk_draws=CHUNK, mala_every=0)
# Linear response compares a MEAN shift (exact for ULA on a quadratic: the stationary mean is the
# posterior mean) with a covariance (ULA-inflated by (I - εA/4)^{-1}), so it needs εA/4 small.
EPS_RESPONSE = 2e-3

_rng = np.random.default_rng(0)
X = _rng.normal(size=(N, D))
Y = X @ np.array([1.0, -0.5, 0.3]) + _rng.normal(size=N)
W_STAR = np.linalg.lstsq(X, Y, rcond=None)[0]
R = Y - X @ W_STAR  # residuals at w*, orthogonal to X's columns
H = X.T @ X / N
A_LINEAR = _rng.normal(size=D)
Q_QUADRATIC = _rng.normal(size=(D, D))
Q_QUADRATIC = Q_QUADRATIC + Q_QUADRATIC.T

w_star = jnp.asarray(W_STAR, jnp.float32)
train = {"x": jnp.asarray(X, jnp.float32), "y": jnp.asarray(Y, jnp.float32)}
data = {"x": train["x"][None], "y": train["y"][None]}  # one example = the full batch


def loss_fn(w, batch):
    return 0.5 * (batch["y"] - batch["x"] @ w) ** 2


def quadratic(w):
    """φ = aᵀx + ½ xᵀQx with x = w - w*."""
    x = w - w_star
    return jnp.dot(jnp.asarray(A_LINEAR, jnp.float32), x) + 0.5 * x @ jnp.asarray(Q_QUADRATIC, jnp.float32) @ x


def displacement(w):
    """φ = x = w - w* (D linear observables)."""
    return w - w_star


OBSERVABLES = {"q": quadratic, "x": displacement}
# Columns of a "full" run: loss (½xᵀHx), q, x[0..D-1].
COLUMN_FORMS = [(np.zeros(D), H)] + [(A_LINEAR, Q_QUADRATIC)] + [(np.eye(D)[k], np.zeros((D, D))) for k in range(D)]


def stationary_covariance(nbeta: float, gamma: float, eps: float) -> np.ndarray:
    a = nbeta * H + gamma * np.eye(D)
    return np.linalg.inv(a @ (np.eye(D) - eps * a / 4))


def loss_covariance(sigma: np.ndarray) -> np.ndarray:
    """Cov(l_i, l_j) = r_i r_j x_iᵀΣx_j + ½ (x_iᵀΣx_j)²."""
    k = X @ sigma @ X.T
    return np.outer(R, R) * k + 0.5 * k**2


def susceptibility(sigma: np.ndarray, a: np.ndarray, q: np.ndarray) -> np.ndarray:
    """χ_i = -Cov(aᵀx + ½xᵀQx, l_i - L_n) by Isserlis: the (n,) column."""
    # l_i - L_n = const + (-r_i x_i)ᵀ x + ½ xᵀ (x_i x_iᵀ - H) x  (∇L_n(w*) = 0)
    linear = -(a @ sigma @ (R[:, None] * X).T)
    quadratic_part = 0.5 * (np.einsum("ia,ab,ib->i", X, sigma @ q @ sigma, X) - np.trace(q @ sigma @ H @ sigma))
    return -(linear + quadratic_part)


def exact_chi(sigma: np.ndarray) -> np.ndarray:
    """(n, 2 + D): the closed-form response matrix of a run with OBSERVABLES."""
    return np.stack([susceptibility(sigma, a, q) for a, q in COLUMN_FORMS], axis=1)


def config(nbeta: float = NBETA, gamma: float = GAMMA, eps: float = EPS) -> sj.SamplerConfig:
    return CONFIG.replace(step_size=eps, nbeta=nbeta, localization=gamma)


@functools.cache
def chi_run(nbeta: float = NBETA, gamma: float = GAMMA, eps: float = EPS, key: int = 0) -> sj.SusceptibilityResult:
    return sj.estimate_susceptibilities(
        loss_fn, w_star, data, config(nbeta, gamma, eps), key=key, probes={"train": train}, observables=OBSERVABLES,
        progress=False,
    )


@functools.cache
def bif_run(nbeta: float = NBETA, gamma: float = GAMMA, eps: float = EPS, key: int = 0, block_size: int | None = None) -> sj.BIFResult:
    return sj.estimate_bif(
        loss_fn, w_star, data, config(nbeta, gamma, eps), key=key, probes={"train": train}, block_size=block_size, progress=False,
    )


def observe_displacement(params, info, context):
    return params - context.center


# A loss with weights travelling as data: ρ/ρ̄ attached per row, so one program serves every ρ.
weighted_loss_fn = sj.reweighted_loss(loss_fn, np.ones((1, N)), normalize=False)


def weighted_data(rho: np.ndarray) -> dict:
    """``data`` with the normalized weights ρ/ρ̄ attached (Σρl/Σρ as a plain mean)."""
    rho = np.asarray(rho, np.float64)
    return sj.attach_weights(data, (rho / rho.mean())[None])


def mean_displacement(rho: np.ndarray, key: int = 0, nbeta: float = NBETA) -> np.ndarray:
    """Per-chain ⟨w - w*⟩ under the reweighted posterior at step EPS_RESPONSE: ``(num_chains, D)``."""
    out = sj.run_chains(
        weighted_loss_fn, [w_star], weighted_data(rho), config(nbeta, GAMMA, EPS_RESPONSE), key=key,
        recording=sj.Recording(observe=observe_displacement, keep_traces=True), progress=False,
    )
    return np.asarray(out.observed[0], np.float64).mean(axis=1)


def exact_mean_displacement(rho: np.ndarray, nbeta: float = NBETA) -> np.ndarray:
    """⟨w - w*⟩ of the reweighted Gaussian posterior (the ULA stationary mean is exact)."""
    rho = np.asarray(rho, np.float64) / np.mean(rho)
    h = (X * rho[:, None]).T @ X / N
    gradient = -(X * (rho * R)[:, None]).sum(axis=0) / N  # ∇L^ρ(w*)
    return -np.linalg.solve(nbeta * h + GAMMA * np.eye(D), nbeta * gradient)


def ula_inflation(nbeta: float, gamma: float, eps: float) -> float:
    """max over directions of (1 - εa/4)^{-1} - 1: the relative ULA bias of a covariance."""
    a = np.linalg.eigvalsh(nbeta * H + gamma * np.eye(D)).max()
    return 1.0 / (1.0 - eps * a / 4) - 1.0


def zscores(estimate: np.ndarray, exact: np.ndarray, stderr: np.ndarray) -> np.ndarray:
    return (np.asarray(estimate) - exact) / np.asarray(stderr)
