"""The package's shape: dependencies flow one way, and no import hides inside a function."""

import ast
import pathlib
import re

import slt_jax as sj

PACKAGE = pathlib.Path(sj.__file__).parent
# Lower layers first; a module may import only modules that appear before it.
LAYERS = [
    "types", "validation", "kernels", "restriction", "config", "program", "multihost", "checkpoint", "planning", "sampler",
    "traces", "plots", "theory", "masks", "adapters", "models", "tasks", "gridworld", "training",
    "diagnostics", "calibration", "llc", "stats", "reliability", "susceptibility", "bif", "patterning", "development", "analysis",
    "io", "sweep", "cli",
]


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("slt_jax"):
            names = [node.module.split(".")[1]] if "." in node.module else [a.name for a in node.names]
            yield node, names
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("slt_jax."):
                    yield node, [alias.name.split(".")[1]]


def test_no_slt_jax_import_inside_a_function():
    offenders = []
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "slt_jax" in ast.dump(node):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


def test_dependencies_flow_one_way():
    rank = {name: index for index, name in enumerate(LAYERS)}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules <= set(rank), f"place new modules in LAYERS: {sorted(modules - set(rank))}"
    upward = []
    for name in modules:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for node, targets in _imports(tree):
            for target in targets:
                if target in rank and rank[target] >= rank[name]:
                    upward.append(f"{name} imports {target} (line {node.lineno})")
    assert not upward, upward


# Issue 12, item 3: the conventions ship with the project (docs/conventions.md) and every citation
# of them names a section that exists; nothing cites a document outside the repository.
def test_code_and_docs_cite_the_projects_own_conventions():
    root = pathlib.Path(__file__).resolve().parents[1]
    conventions = (root / "docs" / "conventions.md").read_text()
    sections = set(re.findall(r"^## (\d+)\.", conventions, flags=re.MULTILINE))
    assert sections, "docs/conventions.md has no numbered sections"
    cited = 0
    for path in [*sorted((root / "slt_jax").glob("*.py")), root / "README.md"]:
        text = path.read_text()
        assert "SCIENCE.md" not in text, path
        for section in re.findall(r"docs/conventions\.md §(\d+)", text):
            assert section in sections, (path, section)
            cited += 1
    assert cited >= 10
