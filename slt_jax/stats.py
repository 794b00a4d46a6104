"""Streaming statistics and per-draw observables, evaluated inside the sampler's compiled program.

Two pieces, both pure:

* Welford-style running means and cross-moments (Welford 1962; the pairwise merge of Chan et al.
  1979). A ``CovarianceState`` holds, per chain, the count, the means of two vectors x (p,) and
  y (q,) and their co-moment Σ_d (x_d - x̄)(y_d - ȳ)ᵀ (p, q). Memory is O(p·q), independent of
  the number of draws; ``covariance_accumulator`` wraps it as a ``slt_jax.Accumulator`` for
  ``run_chains``.
* ``observables``: an ``observe(params, info, context)`` function for ``run_chains`` that
  evaluates, at every draw, the per-example (per-token) losses of named probe datasets and
  arbitrary functions ``phi(params) -> array``. The probe data travel as ``observe_data`` (a traced
  input), so new probe values of the same shapes never recompile; w* and L_n(w*) come from the
  draw's ``DrawContext`` (each configuration's own centre), so one program serves every checkpoint.

The observable vector x of a run is ``[loss observable, functions...]`` where the loss observable is
φ = L(w) - L_n(w*): its paired minibatch estimate L_B(w) - L_B(w*) on the draw's own SGLD batch
(``centering="probe"``) or the full-data loss (``centering="full"``); the vector y is
``[probe losses..., centering loss]``. Their streamed cross-covariance is everything a
susceptibility needs (``slt_jax.susceptibility``, docs/conventions.md §3).

>>> import jax.numpy as jnp, numpy as np
>>> from slt_jax import stats
>>> x, y = jnp.arange(6.0).reshape(3, 2), jnp.array([[1.0], [0.0], [2.0]])
>>> state = stats.covariance_init(x[0], y[0])
>>> for d in range(3):
...     state = stats.covariance_update(state, x[d], y[d])
>>> np.round(stats.covariance(state), 6).tolist()
[[1.0], [1.0]]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax import kernels
from slt_jax._src import program, validation
from slt_jax._src.program import Accumulator, DrawContext
from slt_jax.types import Array, Batch, LossFn, Params, PyTree

__all__ = [
    "CovarianceState",
    "covariance_init",
    "covariance_update",
    "covariance_merge",
    "covariance",
    "correlation",
    "fix_signs",
    "check_probes",
    "covariance_accumulator",
    "ProbeLabels",
    "Observables",
    "observables",
    "probe_losses",
    "CENTERINGS",
]

CENTERINGS = ("probe", "full")


# ---------------------------------------------------------------------------------------------
# Welford cross-moments


class CovarianceState(NamedTuple):
    """Running means and co-moment of two vectors (leading axes, e.g. ``(G, C)``, allowed).

    Attributes:
        count: number of draws seen, float scalar.
        mean_x: ``(p,)`` running mean of x.
        mean_y: ``(q,)`` running mean of y.
        comoment: ``(p, q)`` Σ_d (x_d - mean_x)(y_d - mean_y)ᵀ.
    """

    count: Array
    mean_x: Array
    mean_y: Array
    comoment: Array


def covariance_init(x: Array, y: Array) -> CovarianceState:
    """An empty state for vectors shaped like ``x`` (p,) and ``y`` (q,)."""
    x, y = jnp.ravel(x), jnp.ravel(y)
    dtype = jnp.result_type(x, y, jnp.float32)
    return CovarianceState(
        jnp.zeros((), dtype), jnp.zeros(x.shape, dtype), jnp.zeros(y.shape, dtype), jnp.zeros(x.shape + y.shape, dtype)
    )


def covariance_update(state: CovarianceState, x: Array, y: Array) -> CovarianceState:
    """Adds one draw: C ← C + (x - x̄_old)(y - ȳ_new)ᵀ (numerically stable, single pass)."""
    x = jnp.ravel(x).astype(state.mean_x.dtype)
    y = jnp.ravel(y).astype(state.mean_y.dtype)
    count = state.count + 1
    delta_x = x - state.mean_x
    mean_y = state.mean_y + (y - state.mean_y) / count
    return CovarianceState(
        count=count,
        mean_x=state.mean_x + delta_x / count,
        mean_y=mean_y,
        comoment=state.comoment + jnp.outer(delta_x, y - mean_y),
    )


def covariance_merge(a: CovarianceState, b: CovarianceState) -> CovarianceState:
    """Combines the states of two disjoint sets of draws (Chan et al.); works on numpy or jax arrays."""
    count = a.count + b.count
    safe = np.where(count > 0, count, 1) if isinstance(count, np.ndarray) else jnp.where(count > 0, count, 1)
    delta_x = b.mean_x - a.mean_x
    delta_y = b.mean_y - a.mean_y
    weight = (a.count * b.count / safe)[..., None, None]
    return CovarianceState(
        count=count,
        mean_x=a.mean_x + delta_x * (b.count / safe)[..., None],
        mean_y=a.mean_y + delta_y * (b.count / safe)[..., None],
        comoment=a.comoment + b.comoment + weight * delta_x[..., :, None] * delta_y[..., None, :],
    )


def covariance(state: CovarianceState, ddof: int = 1) -> np.ndarray:
    """The ``(..., p, q)`` cross-covariance Cov(x, y) on host (float64), NaN with too few draws."""
    count = np.asarray(state.count, np.float64)[..., None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > ddof, np.asarray(state.comoment, np.float64) / (count - ddof), np.nan)


def fix_signs(vectors: np.ndarray) -> np.ndarray:
    """The PCA sign convention: ``(num_components,)`` signs (+1 / -1) that make the largest-magnitude
    entry of each row of ``vectors`` ``(num_components, dim)`` positive (deterministic output)."""
    vectors = np.asarray(vectors)
    signs = np.sign(vectors[np.arange(vectors.shape[0]), np.argmax(np.abs(vectors), axis=1)])
    signs[signs == 0] = 1.0
    return signs


def correlation(cov) -> np.ndarray:
    """Pearson correlation ``(N, N)`` from a covariance matrix ``(N, N)`` (NaN where a variance is 0)."""
    cov = np.asarray(cov, np.float64)
    scale = np.sqrt(np.maximum(np.diagonal(cov), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.outer(scale, scale)


def covariance_accumulator(x_of: Callable[[PyTree], Array], y_of: Callable[[PyTree], Array] | None = None) -> Accumulator:
    """A ``run_chains`` accumulator of Cov(x, y) per chain (and per configuration).

    Args:
        x_of: ``x_of(observed) -> array`` picks x from ``observe``'s values (raveled to (p,)).
        y_of: likewise for y; None for the Gram (y = x).

    Returns:
        An ``Accumulator`` whose state is a ``CovarianceState``. Build it once and reuse the object:
        the sampler caches its compiled program by the accumulator's identity.
    """
    y_of = x_of if y_of is None else y_of
    return Accumulator(
        init=lambda values: covariance_init(x_of(values), y_of(values)),
        update=lambda state, values: covariance_update(state, x_of(values), y_of(values)),
    )


# ---------------------------------------------------------------------------------------------
# probe datasets and observables


class ProbeLabels(NamedTuple):
    """What each row of a response matrix is (numpy arrays of length N).

    Attributes:
        probe: the probe dataset's name (a fixed-width unicode array, dtype ``str``).
        example: the example's index in its probe dataset.
        token: the token position, or -1 for per-example losses.
    """

    probe: np.ndarray
    example: np.ndarray
    token: np.ndarray


def _per_row(losses: Array, per_token: bool) -> Array:
    if losses.ndim > 1 and not per_token:
        losses = jnp.mean(losses.reshape(losses.shape[0], -1), axis=1)
    return jnp.ravel(losses)


def probe_losses(
    loss_fn: LossFn,
    params: Params,
    probes: Mapping[str, Batch] | tuple,
    *,
    per_token: bool = True,
    probe_batch_size: int | None = None,
) -> Array:
    """Per-example (or per-token) losses of every probe dataset, concatenated: shape ``(N,)``.

    Args:
        loss_fn: ``loss_fn(params, batch) -> (batch,)`` or ``(batch, seq)`` losses.
        params: the parameters.
        probes: ``{name: probe_data}`` or a tuple of probe datasets, each a pytree with a leading
            example axis; rows follow the iteration order (inside ``jit`` a dict's keys are sorted,
            so pass a tuple there).
        per_token: keep one row per token for sequence losses (False: the mean over each sequence).
        probe_batch_size: evaluate each probe in chunks of this many examples (bounds activation
            memory; ``jax.lax.map``), None for all at once.
    """
    rows = []
    for probe in probes.values() if isinstance(probes, Mapping) else probes:
        if probe_batch_size is None:
            losses = loss_fn(params, probe)
        else:
            one = lambda example: loss_fn(params, jax.tree.map(lambda x: x[None], example))[0]
            losses = jax.lax.map(one, probe, batch_size=probe_batch_size)
        rows.append(_per_row(losses, per_token))
    return jnp.concatenate(rows)


def check_probes(loss_fn: LossFn, params: Params, probes, per_token: bool) -> ProbeLabels:
    """Validates ``{name: probe_data}`` before compiling and returns the row labels."""
    if not isinstance(probes, Mapping) or not probes:
        raise TypeError(
            f"probes must be a non-empty dict {{name: probe_data}} (e.g. {{'code': code_batch}}), got {type(probes).__name__}."
        )
    labels = []
    for probe_name, probe in probes.items():
        if not isinstance(probe_name, str):
            raise TypeError(f"probes: probe names must be strings, got {probe_name!r}.")
        try:
            num_examples = validation.check_data(probe)
        except ValueError as error:
            raise ValueError(f"probes[{probe_name!r}]: {error}") from None
        spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), probe)
        try:
            out = jax.eval_shape(loss_fn, params, spec)
        except Exception as error:
            hint = " probes is a dict {{name: probe_data}}; to pass one dataset write probes={{'probe': data}}."
            raise ValueError(f"probes[{probe_name!r}]: loss_fn(params, probe) failed: {error}.{hint}") from error
        if not isinstance(out, jax.ShapeDtypeStruct) or out.ndim == 0 or out.shape[0] != num_examples:
            shape = getattr(out, "shape", out)
            raise ValueError(
                f"probes[{probe_name!r}]: loss_fn returned {shape} for {num_examples} examples; probes need per-example "
                f"losses ({num_examples},) or per-token losses ({num_examples}, seq), not a scalar mean."
            )
        if out.ndim > 1 and per_token:
            tokens = int(np.prod(out.shape[1:]))
            example, token = np.divmod(np.arange(num_examples * tokens), tokens)
        else:
            example, token = np.arange(num_examples), np.full(num_examples, -1)
        # A fixed-width unicode array (not dtype=object), so results save without pickle.
        labels.append(ProbeLabels(np.asarray([probe_name] * example.size, dtype=str), example, token))
    return ProbeLabels(*(np.concatenate(parts) for parts in zip(*labels)))


def _check_functions(functions, params: Params) -> tuple[tuple[str, Callable], ...]:
    if functions is None:
        return ()
    if not isinstance(functions, Mapping):
        raise TypeError(f"functions must be a dict {{name: phi(params) -> array}}, got {type(functions).__name__}.")
    items = []
    for name, function in functions.items():
        if not callable(function):
            raise TypeError(f"functions[{name!r}] must be callable as phi(params) -> array, got {function!r}.")
        try:
            out = jax.eval_shape(function, params)
        except Exception as error:
            raise ValueError(f"functions[{name!r}](params) failed: {error}") from error
        if not isinstance(out, jax.ShapeDtypeStruct) or not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(f"functions[{name!r}] must return one floating array, got {out}.")
        items.append((str(name), function))
    return tuple(items)


def _function_names(functions: tuple, params: Params) -> list[str]:
    names = []
    for name, function in functions:
        shape = jax.eval_shape(function, params).shape
        names += [name] if shape == () else [f"{name}{list(index)}" for index in np.ndindex(*shape)]
    return names


@functools.lru_cache(maxsize=64)
def _build(loss_fn, functions, centering, per_token, probe_batch_size, full_batch_size):
    """The observe function and accumulator, cached so repeated runs reuse one compiled program."""

    def observe(params: Params, info, context: DrawContext) -> dict:
        losses = probe_losses(loss_fn, params, context.data["probes"], per_token=per_token, probe_batch_size=probe_batch_size)
        if centering == "full":
            # L_n(w) at the draw: exact, no minibatch noise in either factor of the covariance.
            loss = program.batched_mean(loss_fn, params, context.data["data"], full_batch_size)
            phi = loss - context.init_loss
            center = loss
        else:
            # Paired difference on the draw's own SGLD minibatch: B_t is drawn independently of w_t,
            # so E[L_B(w) - L_B(w*) | w] = L_n(w) - L_n(w*) (unbiased, and a control variate whose
            # noise vanishes as w -> w*), and its noise is uncorrelated with every probe loss. The
            # centering term is the probe mean, never that same minibatch (which would add the
            # conditional covariance of the two minibatch terms to every χ). w* is the draw's own
            # configuration's centre (a checkpoint), from the context.
            # The sampler supplies L_B(w*) when run with center_loss=True (gathered from per-example
            # losses at w* computed once, when cheaper); else it is one forward pass here.
            at_center = context.center_loss
            if at_center is None:
                at_center = kernels.mean_loss(loss_fn, context.center, context.batch)
            phi = info.loss - at_center
            center = jnp.mean(losses)
        values = {name: jnp.asarray(function(params)) for name, function in functions}
        return {"loss": phi, "functions": values, "probes": losses, "center": center}

    def x_of(values):
        parts = [jnp.ravel(values["loss"])] + [jnp.ravel(values["functions"][name]) for name, _ in functions]
        return jnp.concatenate(parts)

    def y_of(values):
        return jnp.concatenate([values["probes"], jnp.ravel(values["center"])])

    return observe, covariance_accumulator(x_of, y_of)


class Observables(NamedTuple):
    """Everything ``run_chains`` needs to observe probes and functions at every draw.

    Use as ``run_chains(..., recording=sj.Recording(observe=o.observe, observe_data=o.observe_data,
    accumulator=o.accumulator))``. The accumulator's ``CovarianceState`` has x = ``x_names``
    (the loss observable φ = L(w) - L_n(w*), then the functions) and y = the N probe rows of
    ``labels`` followed by the centering loss (the last entry).

    Attributes:
        observe: ``observe(params, info, context) -> {"loss", "functions", "probes", "center"}``
            (``context`` a ``slt_jax.DrawContext``: its ``center``, ``init_loss`` and ``batch`` are
            the configuration's w*, L_n(w*) and the draw's SGLD minibatch).
        observe_data: ``{"probes": (probe datasets...)}``, plus the training ``data`` for
            ``centering="full"``.
        accumulator: the streamed cross-covariance of x and y.
        labels: ``ProbeLabels`` of the N probe rows.
        x_names: names of the entries of x.
    """

    observe: Callable
    observe_data: PyTree
    accumulator: Accumulator
    labels: ProbeLabels
    x_names: list[str]


def observables(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    probes: Mapping[str, Batch],
    functions: Mapping[str, Callable[[Params], Array]] | None = None,
    centering: str = "probe",
    per_token: bool = True,
    probe_batch_size: int | None = None,
    full_batch_size: int | None = None,
    compute_dtype: str = "float32",
) -> Observables:
    """Builds the per-draw observables of a run: probe losses, functions and the loss observable.

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> per-example or per-token losses.
        params: w* (or any params of the model: only shapes are read).
        data: the training data (the full-data loss for ``centering="full"``).
        probes: ``{name: probe_data}``; every example (token) becomes a row.
        functions: ``{name: phi(params) -> array}`` evaluated at every draw.
        centering: ``"probe"`` (default): φ is the paired difference L_B(w) - L_B(w*) on the draw's
            SGLD minibatch (one extra forward pass of the batch; unbiased) and the centering term is
            the mean probe loss. ``"full"``: φ and the centering term use L_n(w), one pass over all
            of ``data`` per draw (exact, but n / batch_size forward passes per draw).
        per_token: one row per token for sequence losses (False: per sequence).
        probe_batch_size: evaluate probes in chunks of this many examples.
        full_batch_size: chunk size of the full-data pass (default: all of ``data`` at once).
        compute_dtype: the run's ``SamplerConfig.compute_dtype``: the probes' and φ's losses are
            evaluated through the same ``kernels.mixed_precision`` wrapper as the chain's, so φ's
            difference with L_n(w*) and the covariances compare losses of the same rounding.

    Returns:
        An ``Observables``.
    """
    if centering not in CENTERINGS:
        raise ValueError(
            f"centering={centering!r}; use 'probe' (paired minibatch φ, one extra forward per draw) or 'full' "
            "(exact L_n(w), one pass over the training data per draw)."
        )
    if probe_batch_size is not None:
        probe_batch_size = validation.check_positive_int(probe_batch_size, "probe_batch_size")
    n = validation.check_data(data)
    full_batch_size = n if full_batch_size is None else min(validation.check_positive_int(full_batch_size, "full_batch_size"), n)
    loss_fn = kernels.mixed_precision(loss_fn, compute_dtype)
    labels = check_probes(loss_fn, params, probes, per_token)
    items = _check_functions(functions, params)
    observe, accumulator = _build(loss_fn, items, centering, bool(per_token), probe_batch_size, full_batch_size)
    observe_data = {"probes": tuple(probes.values())}
    if centering == "full":
        observe_data["data"] = data
    return Observables(observe, observe_data, accumulator, labels, ["loss"] + _function_names(items, params))
