"""Closed-form learning coefficients and finite-nβ expectations (docs/conventions.md §2).

These are the ground truth the estimators are tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "dln_learning_coefficient",
    "reduced_rank_regression_coefficient",
    "quadratic_llc",
    "separable_llc",
    "regular_llc",
    "matrix_rank",
    "NORMAL_CROSSING_REFERENCE",
]

# nβ·E[K] under exp(-nβ K - ||w||²/2) (γ = 1), exact quadrature; keys (k1, k2) of K = w1^{2k1} w2^{2k2}.
NORMAL_CROSSING_REFERENCE: dict[tuple[int, int], dict[float, float]] = {
    (1, 1): {1e1: 0.2903, 1e2: 0.3542, 1e3: 0.3903, 1e4: 0.4123, 1e5: 0.4271},
    (1, 2): {1e1: 0.1734, 1e2: 0.2057, 1e3: 0.2249, 1e4: 0.2358, 1e5: 0.2420},
}


def _check_widths(widths: Sequence[int], rank: int) -> tuple[list[int], int]:
    widths = [int(h) for h in widths]
    if len(widths) < 2 or any(h < 1 for h in widths):
        raise ValueError(f"widths={widths} must list at least two positive layer widths (input, ..., output).")
    rank = int(rank)
    if rank < 0 or rank > min(widths):
        raise ValueError(f"rank={rank} must lie in [0, min(widths)={min(widths)}]: the product matrix's rank.")
    return widths, rank


def dln_learning_coefficient(widths: Sequence[int], rank: int) -> tuple[float, int]:
    """Aoyagi's (2024) learning coefficient of a deep linear network.

    Args:
        widths: ``[H_1 (input), H_2, ..., H_{L+1} (output)]``; the network is x -> W_L ... W_1 x.
        rank: rank r of the true product matrix (see ``matrix_rank``).

    Returns:
        ``(lambda, multiplicity)``.

    >>> dln_learning_coefficient([4, 2, 4], 1)
    (5.0, 2)
    """
    widths, r = _check_widths(widths, rank)
    deltas = sorted(h - r for h in widths)
    for ell in range(1, len(deltas)):
        chosen, rest = deltas[: ell + 1], deltas[ell + 1 :]
        total = sum(chosen)
        ok = (
            (not rest or max(chosen) < min(rest))
            and total >= ell * max(chosen)
            and (not rest or total < ell * min(rest))
        )
        if not ok:
            continue
        m_bar = math.ceil(total / ell)
        a = total - (m_bar - 1) * ell
        cross = sum(chosen[i] * chosen[j] for i in range(len(chosen)) for j in range(i + 1, len(chosen)))
        lam = (
            (-(r**2) + r * (widths[0] + widths[-1])) / 2
            + a * (ell - a) / (4 * ell)
            - (ell - 1) * total**2 / (4 * ell)
            + cross / 2
        )
        return float(lam), int(a * (ell - a) + 1)
    raise ValueError(f"no index set satisfies Aoyagi's conditions for widths={widths}, rank={r}.")  # pragma: no cover


def reduced_rank_regression_coefficient(input_dim: int, hidden: int, output_dim: int, rank: int) -> tuple[float, int]:
    """Aoyagi & Watanabe (2005): reduced-rank regression x -> B A x, A (hidden x input).

    Returns ``(lambda, multiplicity)``; agrees with ``dln_learning_coefficient([M, H, N], r)``.
    """
    (m, h, n), r = _check_widths([input_dim, hidden, output_dim], rank)
    if n + h < m + r:
        return (h * n - h * r + m * r) / 2, 1
    if m + h < n + r:
        return (h * m - h * r + n * r) / 2, 1
    if m + n < h + r:
        return m * n / 2, 1
    base = 2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2
    if (m + h + n + r) % 2 == 0:
        return base / 8, 1
    return (base + 1) / 8, 2


def quadratic_llc(hessian_eigenvalues, nbeta: float, localization: float, step_size: float | None = None) -> float:
    """Exact expected LLC estimate for a quadratic loss L - L* = ½δᵀHδ.

    λ̂ = ½ Σ_i nβ h_i / (nβ h_i + γ); with full-batch SGLD at step ε, the stationary covariance is
    (A(I - εA/4))^{-1}, A = nβH + γI, giving λ̂_ε = ½ Σ_i nβ h_i / ((nβ h_i + γ)(1 - ε(nβ h_i + γ)/4)).
    """
    h = np.asarray(hessian_eigenvalues, np.float64)
    a = nbeta * h + localization
    if np.any(a <= 0):
        raise ValueError("nbeta*h + localization must be > 0 for every eigenvalue (the posterior must be proper).")
    if step_size is None:
        return float(0.5 * np.sum(nbeta * h / a))
    if step_size >= 4.0 / a.max():
        raise ValueError(f"step_size={step_size} is unstable: full-batch SGLD needs step_size < 4/max eig A = {4 / a.max():.4g}.")
    return float(0.5 * np.sum(nbeta * h / (a * (1.0 - step_size * a / 4.0))))


def separable_llc(powers: Sequence[float]) -> float:
    """nβ E[L - L*] = Σ_i 1/p_i for L - L* = Σ c_i |w_i - w*_i|^{p_i} (flat prior, any nβ)."""
    powers = np.asarray(powers, np.float64)
    if np.any(powers <= 0):
        raise ValueError(f"powers={powers.tolist()} must be > 0.")
    return float(np.sum(1.0 / powers))


def regular_llc(num_parameters: int) -> float:
    """λ = d/2 for a regular model."""
    return num_parameters / 2


def matrix_rank(matrix, rtol: float | None = None) -> int:
    """Numerical rank of a (product) matrix, e.g. ``W_L @ ... @ W_1`` of a teacher."""
    return int(np.linalg.matrix_rank(np.asarray(matrix, np.float64), rtol=rtol))
