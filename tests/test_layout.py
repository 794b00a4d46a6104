"""The package's shape: dependencies flow one way, and no import hides inside a function."""

import ast
import pathlib

import slt_jax as sj

PACKAGE = pathlib.Path(sj.__file__).parent
# Lower layers first; a module may import only modules that appear before it.
LAYERS = [
    "types", "validation", "kernels", "restriction", "config", "program", "checkpoint", "planning", "sampler",
    "traces", "plots", "theory", "masks", "adapters", "models", "tasks", "training",
    "diagnostics", "calibration", "llc", "stats", "susceptibility", "bif", "patterning", "io", "cli",
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
