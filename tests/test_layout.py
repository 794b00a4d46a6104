"""The package's shape: dependencies flow one way, and no import hides inside a function."""

import ast
import pathlib
import re

import slt_jax as sj

PACKAGE = pathlib.Path(sj.__file__).parent
# Lower layers first; a module may import only modules that appear before it. ``_src`` is the
# private engine, ``zoo`` the instruments (models, tasks, closed forms): the sampler and the
# estimators never import the zoo.
LAYERS = [
    "types", "_src.validation", "_src.rng", "kernels", "restriction", "config", "_src.program", "_src.multihost",
    "_src.checkpoint", "_src.planning", "sampler", "traces", "stats", "results", "_src.frontdoor", "plots", "masks", "adapters",
    "zoo.theory", "zoo.decoder", "zoo.pretrained", "zoo.models", "zoo.tasks", "zoo.gridworld", "training",
    "diagnostics", "calibration", "llc", "reliability", "susceptibility", "bif", "patterning", "development", "analysis",
    "io", "_src.parts", "sweep", "cli",
]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if _module_name(p) not in ("", "__main__")}


def _imports(tree):
    """(node, [imported module names relative to slt_jax]) for every slt_jax import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("slt_jax"):
            base = node.module[len("slt_jax"):].lstrip(".")
            if base and base.split(".")[0] in ("_src", "zoo") and "." not in base:
                yield node, [f"{base}.{a.name}" for a in node.names]
            elif base:
                yield node, [base]
            else:
                yield node, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("slt_jax."):
                    yield node, [alias.name[len("slt_jax."):]]


def test_no_slt_jax_import_inside_a_function():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "slt_jax" in ast.dump(node):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


def test_dependencies_flow_one_way():
    rank = {name: index for index, name in enumerate(LAYERS)}
    modules = {name for name in _modules() if name not in ("_src", "zoo")}
    # A package that grew into a folder (e.g. ``calibration/``) ranks as its parent.
    ranked = lambda name: rank.get(name, rank.get(name.rsplit(".", 1)[0]) if "." in name else None)
    unplaced = sorted(m for m in modules if ranked(m) is None)
    assert not unplaced, f"place new modules in LAYERS: {unplaced}"
    upward = []
    for name in modules:
        tree = ast.parse(_modules()[name].read_text())
        for node, targets in _imports(tree):
            for target in targets:
                parent = name.rsplit(".", 1)[0] if "." in name else None
                if ranked(target) is None or (parent not in (None, "_src", "zoo") and target.startswith(parent)):
                    continue  # a name that is not a module, or a sibling inside one split module
                if ranked(target) >= ranked(name):
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
    for path in [*sorted((root / "slt_jax").rglob("*.py")), root / "README.md"]:
        text = path.read_text()
        assert "SCIENCE.md" not in text, path
        for section in re.findall(r"docs/conventions\.md §(\d+)", text):
            assert section in sections, (path, section)
            cited += 1
    assert cited >= 10


# Issue 18: a function fits on a screen and takes a handful of arguments (STYLE.md habit 13). The
# exceptions, each with its reason:
_ESTIMATOR = ("public estimator entry point: the options are keyword-only with defaults, each documented, and the "
              "first line packs them (the front door's Admission); nothing below it takes more than ~8 arguments")
LONG_FUNCTIONS: dict[str, str] = {
    "susceptibility.estimate_susceptibilities": _ESTIMATOR,
    "susceptibility.estimate_susceptibilities_table": _ESTIMATOR,
    "bif.estimate_bif": _ESTIMATOR,
    "bif.estimate_bif_table": _ESTIMATOR,
    "development.track_development": _ESTIMATOR,
    "calibration.driver.calibrate": "public entry point: the grid axes and the judging rule are keyword-only and packed "
                                    "on the first line into calibration.grid.Axes and calibration.judge.Rule",
    "patterning.evaluate_patterning": "public entry point: training settings (optimizer, steps, batch, seeds) and the "
                                      "prediction to compare against, all keyword-only",
    "plots.plot_llc_checkpoints": "a plotting function: keyword-only display options (labels, log axis, boundaries, "
                                  "unreliable markers, path), as matplotlib's own functions take them",
}
MAX_LINES, MAX_PARAMETERS = 80, 10


def _function_sizes():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args
                count = len(arguments.posonlyargs + arguments.args + arguments.kwonlyargs)
                count -= bool(arguments.args and arguments.args[0].arg in ("self", "cls"))
                body_start = node.body[0].lineno if not isinstance(node.body[0], ast.Expr) or len(node.body) == 1 else node.body[1].lineno
                yield f"{_module_name(path)}.{node.name}", node.end_lineno - body_start + 1, count


def test_functions_fit_on_a_screen():
    too_big = [f"{name}: {lines} lines, {count} parameters" for name, lines, count in _function_sizes()
               if (lines > MAX_LINES or count > MAX_PARAMETERS) and name not in LONG_FUNCTIONS]
    assert not too_big, "\n".join(too_big)


def test_all_is_the_readme_api_table():
    """``slt_jax.__all__`` is reviewed by hand and documented: it equals the README's first API table."""
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Public API"):]
    table = section[section.index("| area |"):].split("\n\n")[0]
    documented = {name for row in table.splitlines()[2:] for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", row)}
    assert len(sj.__all__) == len(set(sj.__all__))
    assert set(sj.__all__) == documented, (set(sj.__all__) ^ documented)
    assert all(hasattr(sj, name) for name in sj.__all__)
