"""Several processes (``jax.distributed``, gloo CPU collectives): every process returns the result of
one process, and checkpoints are written once, by process 0.

Three runs of tests/multihost_worker.py, started together: 2 processes x 2 CPU devices, 1 process x 4
devices, 1 process x 1 device, with the same key and data. Tolerances: 2 x 2 runs the same SPMD
program as 1 x 4 (one chain per device, four partitions), so their numbers are compared exactly;
against 1 device, where XLA vectorises four chains on one device, to float32 rounding (rtol 1e-6,
as tests/test_sampler.py compares device counts), though they are usually exact too.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
TIMEOUT_SECONDS = 240
RUNS = {"two_processes": (2, 2), "four_devices": (1, 4), "one_device": (1, 1)}  # name: (processes, devices each)
RESULTS = ["llc", "checkpointed", "resumed", "repeated", "chi_per_chain", "uneven"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _commands(directory: pathlib.Path, name: str, processes: int) -> list[list[str]]:
    base = [sys.executable, str(WORKER), str(directory / name), "--checkpoint-dir", str(directory / f"{name}_checkpoints")]
    if processes == 1:
        return [base]
    port = str(_free_port())
    return [base + ["--processes", str(processes), "--process-id", str(i), "--port", port] for i in range(processes)]


def _stderr(path: pathlib.Path) -> str:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("[Gloo]")]
    return "\n".join(lines[-40:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run's per-process results ``{name: [result of process 0, ...]}`` and the directory."""
    directory = tmp_path_factory.mktemp("multihost")
    started = []  # (name, index, process, stderr path)
    for name, (processes, devices) in RUNS.items():
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        for index, command in enumerate(_commands(directory, name, processes)):
            err = directory / f"{name}.{index}.stderr"
            with open(err, "w") as stderr:
                process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=WORKER.parent)
            started.append((name, index, process, err))
    deadline = time.monotonic() + TIMEOUT_SECONDS
    failures = []
    try:
        for name, index, process, err in started:
            try:
                code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = f"timed out after {TIMEOUT_SECONDS} s"
            if code != 0:
                failures.append(f"--- {name} process {index}: exit {code}\n{_stderr(err)}")
    finally:
        for _, _, process, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert not failures, "\n".join(failures)
    results = {}
    for name, (processes, _) in RUNS.items():
        results[name] = [json.loads((directory / f"{name}.{i}.json").read_text()) for i in range(processes)]
    return results, directory


def _assert_same(a: dict, b: dict, rtol: float = 0.0):
    for key in RESULTS:
        for field in a[key] if isinstance(a[key], dict) else [None]:
            left = a[key] if field is None else a[key][field]
            right = b[key] if field is None else b[key][field]
            if rtol:
                np.testing.assert_allclose(np.array(left), np.array(right), rtol=rtol, atol=1e-7, err_msg=f"{key} {field}")
            else:
                np.testing.assert_array_equal(np.array(left), np.array(right), err_msg=f"{key} {field}")


def test_the_runs_used_the_devices_they_were_given(runs):
    results, _ = runs
    assert [(r["process_count"], r["device_count"]) for r in results["two_processes"]] == [(2, 4), (2, 4)]
    assert [r["process_index"] for r in results["two_processes"]] == [0, 1]
    assert (results["four_devices"][0]["process_count"], results["four_devices"][0]["device_count"]) == (1, 4)
    assert results["one_device"][0]["device_count"] == 1


def test_every_process_returns_the_whole_result(runs):
    results, _ = runs
    first, second = results["two_processes"]
    _assert_same(first, second)
    assert np.shape(first["llc"]["llc_per_chain"]) == (4,) and np.shape(first["llc"]["llc_trace_0"]) == (120,)
    assert np.shape(first["chi_per_chain"])[0] == 4


def test_two_processes_give_the_numbers_of_one_process_with_four_devices_exactly(runs):
    results, _ = runs
    _assert_same(results["two_processes"][0], results["four_devices"][0])


def test_and_of_one_device_to_float32_rounding(runs):
    results, _ = runs
    _assert_same(results["two_processes"][0], results["one_device"][0], rtol=1e-6)


def test_checkpoints_are_written_once_by_process_0_and_resume_identically(runs):
    """A checkpointed run (4 chunks of 30 draws), the same run resumed after its state was rolled
    back to 2 chunks (an interruption), and once more (everything restored)."""
    results, directory = runs
    first, second = results["two_processes"]
    records = [f"records_{i:05d}.npz" for i in range(4)]
    assert first["writes_checkpointed"] == [name for i in range(4) for name in (records[i], "state.npz")]
    assert first["writes_resumed"] == [records[2], "state.npz", records[3], "state.npz"]
    assert first["writes_repeated"] == []
    assert second["writes_checkpointed"] == second["writes_resumed"] == second["writes_repeated"] == [], "only process 0 writes"
    [run_directory] = (directory / "two_processes_checkpoints").iterdir()
    assert sorted(p.name for p in run_directory.iterdir()) == records + ["state.npz"]
    for result in (first, second):  # checkpointing, resuming and restoring change nothing
        for run in ("checkpointed", "resumed", "repeated"):
            for field, value in result["llc"].items():
                np.testing.assert_array_equal(result[run][field], value, err_msg=f"{run} {field}")


def test_chains_not_divisible_by_the_devices_spread_over_the_config_axis_with_a_warning(runs):
    """3 chains on 4 devices: the default mesh puts every device on the config axis (one configuration,
    padded to 4), so each device repeats the whole run, and the run says so."""
    results, _ = runs
    for result in results["two_processes"]:
        assert np.shape(result["uneven"]) == (3,)
        [message] = [w for w in result["warnings"] if "repeating the work" in w]
        assert "num_chains=3 on 4 devices" in message and "config=4, chain=1" in message


def test_a_different_key_in_each_process_is_refused_before_compiling(runs):
    results, _ = runs
    for result in results["two_processes"]:
        assert "key differs between the 2 processes" in result["different_keys"]
        assert "jax.process_index()" in result["different_keys"]
        assert result["compiled_for_different_keys"] == 0
