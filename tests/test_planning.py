"""The memory plan: chain blocks, microbatches, planning before any data pass, the memory count."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import linear_regression, standard_error

import slt_jax as sj
from slt_jax import sampler
from slt_jax._src import planning, program
from slt_jax.zoo import theory

EIGENVALUES = [1.0, 0.5, 0.1, 0.0]
CONFIG = sj.SamplerConfig(step_size=1e-3, nbeta=200.0, localization=1.0, num_chains=4, num_draws=40, batch_size=50,
                          num_burnin=8, mala_every=10)


@pytest.fixture(scope="module")
def problem():
    return linear_regression(EIGENVALUES, n=200)


def _budget(problem, config, chains, microbatches=1, recording=None):
    """The budget under which one configuration runs ``chains`` chains per group (with ``microbatches``)."""
    loss_fn, w_star, data = problem
    plan = planning.prepare(loss_fn, [w_star], data, config.replace(memory_budget=2**40), key=0, recording=recording)
    restriction = plan.variants[0].restriction
    count = planning.memory_count(plan, restriction.layout, restriction.offsets, microbatches)
    return count.shared + count.per_configuration + chains * count.per_chain


def _llc(result):
    return result.hyperparameters.nbeta[:, None] * (result.loss.mean(axis=-1) - result.init_loss[:, None])


@pytest.mark.parametrize("chains", [1, 2])
def test_chains_in_blocks_give_the_same_draws(problem, chains):
    loss_fn, w_star, data = problem
    whole = sj.run_chains(loss_fn, [w_star], data, CONFIG, key=5, progress=False)
    tight = CONFIG.replace(memory_budget=_budget(problem, CONFIG, chains))
    blocked = sj.run_chains(loss_fn, [w_star], data, tight, key=5, progress=False)
    assert whole.settings["groups"] == 1 and whole.settings["chain_block"] == 4
    assert blocked.settings["groups"] == 4 // chains and blocked.settings["chain_block"] == chains
    # Chain c keeps split(key, 4)[c] in any block: the same draws, up to XLA's batching (float32 rounding).
    np.testing.assert_allclose(blocked.loss, whole.loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(blocked.mala_acceptance, whole.mala_acceptance, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_llc(blocked), _llc(whole), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(blocked.final_positions[0]), np.asarray(whole.final_positions[0]), rtol=1e-6)
    np.testing.assert_array_equal(blocked.diverged_at, whole.diverged_at)


def test_chain_blocks_pad_by_repetition_and_keep_observables_and_resume(problem, tmp_path, monkeypatch):
    import io

    from tqdm.std import tqdm as std_tqdm

    bars = []

    class RecordingBar(std_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "file": io.StringIO()})
            self.descriptions = []
            bars.append(self)

        def set_description(self, desc=None, refresh=True):
            self.descriptions.append(desc)
            super().set_description(desc, refresh)

    monkeypatch.setattr(sampler, "tqdm", RecordingBar)
    loss_fn, w_star, data = problem
    config = CONFIG.replace(num_chains=3)
    recording = sj.Recording(observe=lambda params, info, context: {"w0": params[0]}, keep_traces=True,
                             accumulator=sj.Accumulator(lambda v: v, lambda state, v: jax.tree.map(jnp.add, state, v)))
    whole = sj.run_chains(loss_fn, [w_star], data, config, key=2, progress=False, recording=recording)
    tight = config.replace(memory_budget=_budget(problem, config, 2, recording=recording))
    blocked = sj.run_chains(loss_fn, [w_star], data, tight, key=2, progress="SGLD", recording=recording, resume_dir=tmp_path)
    assert blocked.settings["groups"] == 2 and blocked.settings["chain_block"] == 2  # chains (0, 1), (2, 2)
    assert bars[-1].descriptions == ["SGLD group 1/2", "SGLD group 2/2"] and bars[-1].total == 2 * config.num_steps
    np.testing.assert_allclose(blocked.loss, whole.loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(blocked.observed["w0"], whole.observed["w0"], rtol=1e-6)
    np.testing.assert_allclose(blocked.accumulator["w0"], whole.accumulator["w0"], rtol=1e-5)
    assert np.asarray(blocked.final_positions[0]).shape == (3, 4)
    resumed = sj.run_chains(loss_fn, [w_star], data, tight, key=2, progress=False, recording=recording, resume_dir=tmp_path)
    np.testing.assert_array_equal(resumed.loss, blocked.loss)


@pytest.mark.parametrize("per_token", [False, True])
def test_microbatched_value_and_grad_equals_the_whole_batch(per_token):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32), "b": jnp.asarray(rng.normal(size=5), jnp.float32)}
    batch = {"x": jnp.asarray(rng.normal(size=(12, 7, 3)), jnp.float32), "tokens": jnp.asarray(rng.integers(0, 5, (12, 7)))}

    def loss_fn(params, batch, context):
        logits = jnp.tanh(batch["x"] @ params["w"] + params["b"][None, None, :]) * context
        per_token_loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["tokens"][..., None], axis=-1)[..., 0]
        return per_token_loss if per_token else per_token_loss.mean(axis=1)

    whole = jax.value_and_grad(lambda p: jnp.mean(loss_fn(p, batch, 2.0)))(params)
    for microbatches in (3, 12):
        mean = program.microbatched_mean(loss_fn, microbatches)
        value, grad = jax.jit(jax.value_and_grad(mean))(params, batch, 2.0)
        np.testing.assert_allclose(value, whole[0], rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7), grad, whole[1])
        np.testing.assert_allclose(mean(params, batch, 2.0), whole[0], rtol=1e-6)  # the forward-only path


@pytest.mark.parametrize("microbatches", [2, 5])
def test_microbatched_chains_equal_whole_batch_chains(problem, microbatches):
    loss_fn, w_star, data = problem
    config = CONFIG.replace(num_chains=2)
    whole = sj.run_chains(loss_fn, [w_star], data, config, key=1, progress=False)
    budget = _budget(problem, config, 1, microbatches)
    assert budget < _budget(problem, config, 1, 1)  # the activations of a smaller microbatch
    micro = sj.run_chains(loss_fn, [w_star], data, config.replace(memory_budget=budget), key=1, progress=False)
    assert micro.settings["microbatches"] == microbatches and micro.settings["chain_block"] == 1
    np.testing.assert_allclose(micro.loss, whole.loss, rtol=1e-5, atol=1e-6)
    # MALA differentiates the (microbatched) loss too
    assert np.isfinite(micro.mala_acceptance[..., ::10]).all()
    np.testing.assert_allclose(micro.mala_acceptance, whole.mala_acceptance, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_llc(micro), _llc(whole), rtol=1e-4)


def test_microbatched_full_batch_llc_matches_the_closed_form():
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=200)
    config = sj.SamplerConfig(step_size=3e-3, nbeta=200.0, localization=1.0, num_chains=8, num_draws=1500,
                              num_burnin=200, batch_size=200, mala_every=0)
    budget = _budget((loss_fn, w_star, data), config, 1, 4)
    result = sj.estimate_llc(loss_fn, w_star, data, config.replace(memory_budget=budget), key=3, progress=False)
    assert result.chains.settings["microbatches"] == 4
    expected = theory.quadratic_llc(EIGENVALUES, 200.0, 1.0, step_size=3e-3)
    assert abs(result.llc_mean - expected) < 4 * standard_error(result), (result.llc_mean, expected)


def test_memory_is_planned_before_any_pass_over_the_data(problem, monkeypatch):
    loss_fn, w_star, data = problem

    def no_pass(*args, **kwargs):
        raise AssertionError("a pass over the data ran before the memory plan")

    monkeypatch.setattr(planning, "full_data_loss", no_pass)
    monkeypatch.setattr(program, "example_losses", no_pass)
    with pytest.raises(ValueError, match=r"too small for one chain.*needs \d+ bytes.*batch_size.*jax.checkpoint"):
        sj.run_chains(loss_fn, [w_star], data, CONFIG.replace(memory_budget=100), key=0, progress=False)


def test_default_budget_is_half_the_available_ram(monkeypatch):
    with open("/proc/meminfo") as meminfo:
        available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    assert abs(planning._available_ram() - available) < 2**30  # read from /proc/meminfo
    monkeypatch.setattr(planning, "_available_ram", lambda: 22 * 2**30)  # a 24 GiB machine
    planning.default_memory_budget.cache_clear()  # measured once per process
    try:
        assert planning.default_memory_budget() == 11 * 2**30
        monkeypatch.setattr(planning, "_available_ram", lambda: 2**30)
        assert planning.default_memory_budget() == 11 * 2**30  # every run of the process plans alike
    finally:
        planning.default_memory_budget.cache_clear()


def _mlp(widths, seed=0):
    rng = np.random.default_rng(seed)
    return {f"layer{i}": {"w": jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), jnp.float32), "b": jnp.zeros(b)}
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))}


def _mlp_loss(params, batch):
    hidden = batch["x"]
    for i in range(len(params)):
        hidden = hidden @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"][None, :]
        hidden = jnp.tanh(hidden) if i < len(params) - 1 else hidden
    return jnp.mean((hidden - batch["y"]) ** 2, axis=-1)


@pytest.mark.parametrize("component", ["whole", "slice", "rmsprop", "transformer", "leimkuhler-matthews"])
def test_memory_count_is_within_30_percent_above_xla(component):
    """The planner's bytes for a group vs XLA's memory analysis of the compiled chunk program
    (argument + output + temp - alias: the buffers live during a call), on a ~1M-parameter MLP and
    a ~1M-parameter TransformerLM (whose activations dominate). The run is one chunk of 4 draws (a
    due draw, then a scan of three: the layout of every longer chunk)."""
    params, loss_fn = _mlp([64, 1000, 1000, 16]), _mlp_loss
    rng = np.random.default_rng(1)
    data = {"x": jnp.asarray(rng.normal(size=(256, 64)), jnp.float32), "y": jnp.asarray(rng.normal(size=(256, 16)), jnp.float32)}
    if component == "transformer":
        from flax import nnx

        model = sj.models.TransformerLM(2048, 64, 2, 4, 64, tie_embeddings=True, rngs=nnx.Rngs(0))
        params, loss_fn = sj.from_nnx(model, "next_token")
        data = {"inputs": jnp.asarray(rng.integers(0, 2048, (32, 64)), jnp.int32)}
    config = sj.SamplerConfig(step_size=1e-6, nbeta=10.0, localization=1.0, num_chains=2, num_draws=4,
                              batch_size=8 if component == "transformer" else 32, memory_budget=2**40,
                              preconditioner="rmsprop_sgld" if component == "rmsprop" else "sgld",
                              scheme="leimkuhler-matthews" if component == "leimkuhler-matthews" else "euler")
    masks = None
    if component == "slice":
        mask = jax.tree.map(lambda x: np.zeros(x.shape, bool), params)
        mask["layer1"]["w"][:, :100] = True
        masks = [mask]
    plan = planning.prepare(loss_fn, [params], data, config, key=0, masks=masks)
    restriction = plan.variants[0].restriction
    count = planning.memory_count(plan, restriction.layout, restriction.offsets)
    planned = count.shared + count.per_configuration + config.num_chains * count.per_chain
    stats = sampler._compiled_memory(plan, plan.schedule.groups[0])
    measured = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    assert measured <= planned <= 1.3 * measured, (planned, measured, planned / measured)


BLOCKS_SCRIPT = """
import json, sys, warnings
import json

import jax
sys.path.insert(0, {tests!r})
from helpers import linear_regression
import slt_jax as sj
from slt_jax._src import planning
warnings.simplefilter("error")  # a block that is not a multiple of the devices would warn
loss_fn, w_star, data = linear_regression([1.0, 0.5, 0.1, 0.0], n=200)
config = sj.SamplerConfig(step_size=1e-3, nbeta=200.0, localization=1.0, num_chains=8, num_draws=20, batch_size=50)
plan = planning.prepare(loss_fn, [w_star], data, config, key=4)
restriction = plan.variants[0].restriction
count = planning.memory_count(plan, restriction.layout, restriction.offsets)
budget = count.shared + count.per_configuration + 5 * count.per_chain  # 5 chains fit: blocks of 4
whole = sj.run_chains(loss_fn, [w_star], data, config, key=4, progress=False)
blocked = sj.run_chains(loss_fn, [w_star], data, config.replace(memory_budget=budget), key=4, progress=False)
print(json.dumps(dict(devices=jax.device_count(), block=blocked.settings["chain_block"], whole=whole.loss.tolist(),
                      blocked=blocked.loss.tolist())))
"""


def test_chain_blocks_shard_over_four_devices_and_give_the_same_draws():
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    script = BLOCKS_SCRIPT.format(tests=os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["block"] == 4
    np.testing.assert_allclose(np.array(out["blocked"]), np.array(out["whole"]), rtol=1e-6, atol=1e-7)
