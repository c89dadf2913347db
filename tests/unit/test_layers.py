"""The package's layers only look down (ARCHITECTURE.md): no module imports from a layer above its own.

Read from the source (every ``import`` and ``from ... import``, at the top of a module or inside a
function), so that an import made lazily to dodge a cycle counts as well.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lpmnet"

#: Lowest first. A module may import from its own layer and the layers before it.
LAYERS = [
    ("foundation", ("lpmnet", "lpmnet.errors", "lpmnet.precision", "lpmnet.runtime", "lpmnet.memory")),
    ("volumes", ("lpmnet.volumes",)),
    ("kernels", ("lpmnet.ops",)),
    ("metrics", ("lpmnet.metrics",)),
    ("methods", ("lpmnet.methods",)),
    ("engine", ("lpmnet.engine",)),
    ("evaluation", ("lpmnet.evaluation",)),
    ("workflow", ("lpmnet.workflow",)),
    # The command line, and the README's published import paths that re-export from below.
    ("interface", ("lpmnet.cli", "lpmnet.models", "lpmnet.slicewise")),
]
#: Layers of one rank that must not import each other either.
SIBLINGS = {"volumes": {"kernels"}, "kernels": {"volumes"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "lpmnet" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/unit/test_layers.py: add it to one")
    return best[0]


def imported_modules(path: Path, source=None):
    """(line, module) of every lpmnet module that ``path`` (with the text ``source``, else its own) imports."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "lpmnet")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "lpmnet":
                continue
            for alias in node.names:  # ``from lpmnet.methods import lpmnet`` imports a module
                candidate = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or \
                    (PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py").is_file()
                yield node.lineno, candidate if is_module else base


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
    for path in SOURCES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_only_look_down(path):
    here = layer_of(module_name(path))
    name = LAYERS[here][0]
    upward = []
    for line, module in imported_modules(path):
        there = layer_of(module)
        if there > here or LAYERS[there][0] in SIBLINGS.get(name, ()):
            upward.append(f"line {line}: {module} ({LAYERS[there][0]})")
    assert not upward, f"{module_name(path)} ({name}) imports from above or beside its layer: {upward}"


def test_the_check_sees_upward_and_relative_imports():
    io = PACKAGE / "volumes" / "io.py"
    source = "from lpmnet.engine.train import train\nfrom . import dicom\nfrom .normalize import minmax01\n"
    assert [m for _, m in imported_modules(io, source)] == [
        "lpmnet.engine.train", "lpmnet.volumes.dicom", "lpmnet.volumes.normalize"]
    assert layer_of("lpmnet.engine.train") > layer_of(module_name(io))
