"""One process of the layouts that tests/test_mesh.py compares. Run as a script, not imported:

    python tests/mesh_worker.py OUT.json LAYOUT [LAYOUT ...]

with as many CPU devices as ``XLA_FLAGS=--xla_force_host_platform_device_count`` gives. A LAYOUT is
``default`` (no mesh set: the sampler's default over every device) or ``CONFIG,CHAIN,MODEL`` (a mesh
of those axis sizes, set with ``jax.set_mesh`` around the calls). For every layout it runs the LLC of
a linear regression and of four one-coordinate components ("heads", one layout) at two checkpoints, susceptibilities of two components, and the LLC of a wide model (one leaf large
enough to be sliced over the model axis), and records their numbers and where the chains lived.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from helpers import linear_regression

import slt_jax as sj
from slt_jax import sampler
from slt_jax._src import program

# Two chunks of one length: a layout whose carry changed sharding between chunks would compile twice.
CONFIG = sj.SamplerConfig(step_size=1e-3, nbeta=200.0, localization=1.0, num_chains=2, num_draws=24, batch_size=50,
                          chunk_draws=12, mala_every=0)
EIGENVALUES = [1.0, 0.5, 0.1, 0.0]
KEY = 5

RUNS: list = []  # every group run of the current call (its final carry)


def _capture_runs():
    drive = sampler._drive

    def captured(*args):
        run = drive(*args)
        RUNS.append(run)
        return run

    sampler._drive = captured


def _placement(run) -> dict:
    """Where a group's final carry lives: the devices of its position, the shape of one device's
    shard, and the bytes of position leaves that device 0 holds against their whole size."""
    leaves = jax.tree.leaves(run.carry.state.position)
    device = jax.devices()[0]
    held = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == device)
    return {"devices": len(leaves[0].sharding.device_set), "shard_shape": list(leaves[0].addressable_shards[0].data.shape),
            "whole_shape": list(leaves[0].shape), "held_bytes": int(held), "whole_bytes": int(sum(x.nbytes for x in leaves)),
            "distinct_device_shards": len({s.device for s in leaves[0].addressable_shards})}


def _wide_problem():
    """A least-squares model with one (64, 128) kernel (sliced over the model axis) and a small bias."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(200, 64)), jnp.float32)
    params = {"w": jnp.asarray(rng.normal(size=(64, 128)) * 0.1, jnp.float32), "b": jnp.zeros(128, jnp.float32)}
    y = x @ params["w"] + params["b"] + jnp.asarray(rng.normal(size=(200, 128)) * 0.1, jnp.float32)
    loss_fn = lambda p, batch: 0.5 * jnp.mean((batch["y"] - batch["x"] @ p["w"] - p["b"]) ** 2, axis=-1)
    return loss_fn, params, {"x": x, "y": y}


def _estimates() -> dict:
    out = {}
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=200)
    # Two checkpoints x (the whole model, four one-coordinate "heads"): two groups, 2 x 1 configurations
    # (the config axis splits the checkpoints) and 2 x 4 (one slice layout; it splits the heads).
    heads = {f"head{h}": jnp.arange(4) == h for h in range(4)}
    RUNS.clear()
    table = sj.estimate_llc_table(loss_fn, [w_star, w_star * 1.02], data, CONFIG, key=KEY,
                                  components={"full": None, **heads}, steps=[0, 1], progress=False)
    out["llc"] = np.asarray(table.llc_per_chain).tolist()
    out["loss"] = np.asarray(table.chains.loss).tolist()
    out["placement"] = [_placement(run) for run in RUNS]

    probes = {"train": jax.tree.map(lambda x: x[:8], data)}
    components = {"first_two": jnp.arange(4) < 2, "last_two": jnp.arange(4) >= 2}
    chi = sj.estimate_susceptibilities(loss_fn, w_star, data, CONFIG, key=KEY, probes=probes, components=components,
                                       include_full=False, progress=False)
    out["chi_per_chain"] = np.asarray(chi.chi_per_chain).tolist()

    wide_loss, wide_params, wide_data = _wide_problem()
    RUNS.clear()
    wide = sj.estimate_llc(wide_loss, wide_params, wide_data, CONFIG.replace(step_size=1e-5, nbeta=20.0, localization=100.0),
                           key=KEY, progress=False, loss_estimator="paired")
    out["wide_llc"] = wide.llc_per_chain.tolist()
    out["wide_placement"] = [_placement(run) for run in RUNS]
    # The Leimkuhler-Matthews state carries the last increments, sliced over the model axis like the position.
    wide_lm = sj.estimate_llc(wide_loss, wide_params, wide_data,
                              CONFIG.replace(step_size=1e-5, nbeta=20.0, localization=100.0, scheme="leimkuhler-matthews"),
                              key=KEY, progress=False, loss_estimator="paired")
    out["wide_lm_llc"] = wide_lm.llc_per_chain.tolist()
    return out


def _closed_form() -> dict:
    """A full-batch LLC of the linear regression, long enough to meet its exact finite-nβ value
    (``theory.quadratic_llc`` with the step-size correction, as tests/test_llc.py checks on one device)."""
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=200)
    config = sj.SamplerConfig(step_size=3e-3, nbeta=200.0, localization=1.0, num_chains=8, num_draws=2000, num_burnin=1000,
                              batch_size=200, mala_every=0)
    result = sj.estimate_llc(loss_fn, w_star, data, config, key=0, progress=False)
    values = result.llc_per_chain
    return {"llc_mean": float(result.llc_mean), "standard_error": float(np.std(values, ddof=1) / np.sqrt(values.size)),
            "expected": float(sj.theory.quadratic_llc(EIGENVALUES, 200.0, 1.0, step_size=3e-3))}


def _refusals() -> dict:
    """The errors of a mesh whose chain axis does not divide num_chains, raised before compiling."""
    loss_fn, w_star, data = linear_regression([1.0, 0.5, 0.1, 0.0], n=200)
    before = program.compile_count()
    try:
        with jax.set_mesh(_layout(f"1,{jax.device_count()},1")):
            sj.run_chains(loss_fn, [w_star], data, CONFIG.replace(num_chains=3), key=KEY, progress=False)
    except ValueError as error:
        return {"chain_axis": str(error), "compiled": program.compile_count() - before}
    return {}


def _layout(name: str):
    if name == "default":
        return None
    return jax.make_mesh(tuple(int(s) for s in name.split(",")), ("config", "chain", "model"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)


if __name__ == "__main__":
    _capture_runs()
    results = {"device_count": jax.device_count()}
    for name in sys.argv[2:]:
        mesh = _layout(name)
        before = program.compile_count()
        if mesh is None:
            results[name] = _estimates()
        else:
            with jax.set_mesh(mesh):
                results[name] = _estimates()
        results[name]["compiles"] = program.compile_count() - before
        if jax.device_count() == 8:
            with jax.set_mesh(mesh):
                results[name]["closed_form"] = _closed_form()
    if jax.device_count() > 1:
        results["refusals"] = _refusals()
    with open(sys.argv[1], "w") as file:
        json.dump(results, file)
