"""The architecture, checked: dependencies flow one way (core -> data -> tracking -> training ->
evaluation -> stages -> flows -> the CLI), there are no import cycles, and every list of stages and
methods derives from the registry."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.fast

# Package folders as installed (pyproject maps stages/ and flows/ under alignpipe).
FOLDERS = {"alignpipe": ROOT / "alignpipe", "alignpipe.stages": ROOT / "stages", "alignpipe.flows": ROOT / "flows"}
# Lower first; a module may import its own layer and the layers below it, never one above.
LAYERS = [
    "alignpipe.core",
    "alignpipe.data",
    "alignpipe.tracking",
    "alignpipe.training",
    "alignpipe.evaluation",
    "alignpipe.stages",
    "alignpipe.flows",
    "alignpipe.servers",
    "alignpipe.cli",
]


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for f in folder.rglob("*.py"):
            parts = f.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = f
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every alignpipe module `name` imports, at the top or inside a function."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in out if m in MODULES}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    return (
        max(i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + "."))
        if module != "alignpipe"
        else -1
    )


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "alignpipe"))
def test_no_module_imports_a_higher_layer(module):
    upward = sorted(m for m in GRAPH[module] if m != "alignpipe" and _layer(m) > _layer(module))
    assert not upward, f"{module} ({LAYERS[_layer(module)]}) imports a higher layer: {upward}"


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(GRAPH[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_module_has_a_layer():
    assert all(_layer(m) >= 0 for m in MODULES if m != "alignpipe")


def test_method_and_stage_lists_derive_from_the_registry():
    from alignpipe.cli import STAGE_NAMES
    from alignpipe.core import trl_api
    from alignpipe.core.config import PREFERENCE_METHODS
    from alignpipe.core.registry import METHODS, STAGES, entry

    assert PREFERENCE_METHODS == tuple(METHODS)
    assert set(STAGE_NAMES) == set(STAGES) | set(METHODS)
    for name in [*METHODS, *(s for s in STAGES if s != "preference")]:
        assert callable(entry(name)), name
    for m in METHODS.values():
        assert m.trl_kind == "ppo" or m.trl_kind in trl_api._TRL, m


def test_each_format_has_one_normaliser():
    from alignpipe.core.config import DATA_FORMATS
    from alignpipe.data.formats import NORMALISERS

    assert set(NORMALISERS) == {(kind, fmt) for kind, fmts in DATA_FORMATS.items() for fmt in fmts}
