"""Every notebook's code cells run top to bottom (headless), so the notebooks cannot rot.

They run in their fast mode (``SLT_JAX_FAST_NOTEBOOKS=1``: the same code with short chains).
"""

import json
import pathlib

import matplotlib.figure
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("SLT_JAX_FAST_NOTEBOOKS", "1")
    cells = json.loads(path.read_text())["cells"]
    namespace = {}
    last = None
    for index, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
        last = exec(compile("".join(cell["source"]), f"{path.name} cell {index}", "exec"), namespace)
    assert last is None
    assert NOTEBOOKS and isinstance(namespace.get("figure"), matplotlib.figure.Figure)


def test_there_is_a_notebook():
    assert NOTEBOOKS, "notebooks/ must hold at least one notebook"
