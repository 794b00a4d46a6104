"""The estimators' front door (slt_jax._src.frontdoor): every estimator's shared checks, before compiling."""

import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax._src import frontdoor

X = jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)), jnp.float32)
DATA = {"x": X, "y": X @ jnp.asarray([1.0, -0.5])}
CONFIG = sj.SamplerConfig(step_size=1e-3, nbeta=20.0, localization=1.0, num_chains=2, num_draws=20, batch_size=16)
W = jnp.asarray([1.0, -0.5])


def loss_fn(w, batch):
    return 0.5 * (batch["y"] - batch["x"] @ w) ** 2


VOCAB = 5


def token_loss(table, batch):
    """A per-token loss over an embedding table (vocab_size = VOCAB): ids >= VOCAB read out of range (NaN)."""
    embedded = jnp.take(table, batch["tokens"], axis=0, mode="fill", fill_value=jnp.nan)  # (batch, seq)
    return (embedded - batch["targets"]) ** 2


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: sj.estimate_llc(loss_fn, W, DATA, {"step_size": 1e-3}, key=0), TypeError, "config must be a slt_jax.SamplerConfig"),
        (lambda: sj.estimate_bif(loss_fn, W, DATA, CONFIG.replace(step_size="auto"), key=0), ValueError, "numeric step_size"),
        (lambda: sj.estimate_llc(loss_fn, W, DATA, CONFIG.replace(nbeta=-1.0), key=0), ValueError, "nbeta=-1.0"),
        (lambda: sj.estimate_llc_table(loss_fn, W, DATA, CONFIG, key=0), TypeError, "checkpoints must be a non-empty list"),
        (lambda: sj.estimate_llc_table(loss_fn, [W, W], DATA, CONFIG, key=0, steps=[3]), ValueError, "steps=.*one entry per checkpoint"),
        (lambda: sj.estimate_bif_table(loss_fn, [W, W], DATA, CONFIG, key=0, steps=[1, 1]), ValueError, "steps=.*distinct"),
        (lambda: sj.estimate_llc_table(loss_fn, [W, jnp.zeros(3)], DATA, CONFIG, key=0), ValueError, "checkpoint 1"),
        (lambda: sj.estimate_llc_table(loss_fn, [W], DATA, CONFIG, key=0, components=[None]), TypeError, "components must be"),
        (lambda: sj.estimate_llc_table(loss_fn, [W], DATA, CONFIG, key=0, components={"a": jnp.ones(3, bool)}), ValueError,
         r"components\['a'\]"),
        (lambda: sj.estimate_susceptibilities(loss_fn, W, DATA, CONFIG, key=0, probes=[DATA]), TypeError, "probes must be"),
        (lambda: sj.estimate_bif(loss_fn, W, DATA, CONFIG, key=0, probes={"p": DATA}, probe_batch_size=0), ValueError,
         "probe_batch_size=0"),
    ],
)
def test_errors_name_the_argument_before_compiling(call, error, match):
    before = sj.compile_count()
    with pytest.raises(error, match=match):
        call()
    assert sj.compile_count() == before


@pytest.mark.parametrize("estimator", ["susceptibilities", "bif"])
def test_probe_token_ids_beyond_the_vocabulary_are_refused(estimator):
    """Issue 18 item 7: the same ids in the training data are caught; in probes they gave an all-NaN χ."""
    table = jnp.linspace(0.0, 1.0, VOCAB)
    tokens = np.arange(12).reshape(4, 3) % VOCAB
    data = {"tokens": jnp.asarray(tokens), "targets": jnp.zeros((4, 3))}
    probes = {"bad": {"tokens": jnp.asarray(tokens + VOCAB), "targets": jnp.zeros((4, 3))}}
    config = CONFIG.replace(batch_size=4, nbeta=5.0)
    estimate = sj.estimate_susceptibilities if estimator == "susceptibilities" else sj.estimate_bif
    before = sj.compile_count()
    with pytest.raises(ValueError, match=r"probes \['bad'\].*not finite.*vocab_size"):
        estimate(token_loss, table, data, config, key=0, probes=probes, progress=False)
    assert sj.compile_count() == before


def test_report_divergence_warns_per_cell_and_raises_when_all_diverged():
    at = np.full((2, 2, 3), -1)
    at[1, 0, 2] = 7
    with pytest.warns(RuntimeWarning, match=r"checkpoint 20, component 'b': 1 of 3 chains diverged.*chains \[2\] at steps \[7\]"):
        frontdoor.report_divergence(at[:, ::-1], steps=[10, 20], components=["a", "b"])
    frontdoor.report_divergence(np.full((1, 1, 3), -1))  # nothing diverged: silent
    with pytest.raises(sj.DivergenceError, match="Every chain diverged") as caught:
        frontdoor.report_divergence(np.zeros(3, int), result="partial")
    assert caught.value.result == "partial"


def test_warnings_point_at_the_callers_line():
    with pytest.warns(UserWarning, match="num_chains=1") as caught:
        frontdoor.check_config(CONFIG.replace(num_chains=1), "estimate_llc")
    assert caught[0].filename == __file__
