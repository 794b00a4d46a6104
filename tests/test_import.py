"""``import slt_jax`` loads the sampler and nothing a plain sampling run does not use (issue 22, item 3).

Each check runs in a fresh interpreter: this test process has long since imported everything.
"""

import subprocess
import sys

# Loaded on first use only: plots (matplotlib), exports (pandas), diagnostics (numpyro, scipy), the
# Flax adapters and zoo (flax, safetensors), analysis (scikit-learn, umap-learn).
DEFERRED = ("matplotlib", "pandas", "scipy", "numpyro", "flax", "safetensors", "sklearn", "umap")


def _run(code: str) -> None:
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_import_loads_no_deferred_library_and_starts_no_backend():
    _run(
        "import sys, slt_jax as sj\n"
        "from jax._src import xla_bridge\n"
        f"loaded = sorted(name for name in {DEFERRED!r} if name in sys.modules)\n"
        "assert not loaded, f'eager imports: {loaded}'\n"
        "assert not xla_bridge._backends, 'import slt_jax initialised a JAX backend'\n"
        "assert {'from_nnx', 'models', 'gridworld', 'analysis'} <= set(dir(sj))\n"
    )


def test_deferred_names_load_on_first_use():
    _run(
        "import sys, numpy as np, slt_jax as sj\n"
        "figure = sj.plot_llc_checkpoints(np.arange(3), np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.1, 0.2]))\n"
        "assert type(figure).__name__ == 'Figure' and 'matplotlib' in sys.modules\n"
        "assert 'flax' not in sys.modules\n"
        "from slt_jax import models\n"
        "assert models is sj.models and sj.from_nnx is sj.adapters.from_nnx and 'flax' in sys.modules\n"
        "assert type(sj.gridworld).__name__ == 'module' and sj.gridworld.__name__ == 'slt_jax.zoo.gridworld'\n"
        "namespace = {}\n"
        "exec('from slt_jax import *', namespace)\n"
        "missing = sorted(set(sj.__all__) - set(namespace))\n"
        "assert not missing, missing\n"
        "try:\n"
        "    sj.no_such_name\n"
        "except AttributeError as error:\n"
        "    assert 'no_such_name' in str(error)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
