"""The layers of docs/internals.md, checked on the source: no import reaches upward.

Every module of the package has a layer; a module may import only from its own
layer or the layers below. ``shm`` and ``net`` share layer 2 but never import
each other: the wire package is the first to know both. Imports under
``if TYPE_CHECKING:`` are annotations only and do not count.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import rlmesh

PACKAGE = pathlib.Path(rlmesh.__file__).parent

#: Module (or package prefix) -> layer. The longest matching prefix wins.
LAYERS: dict[str, int] = {
    # 0: stdlib only
    "rlmesh.errors": 0,
    "rlmesh.types": 0,
    "rlmesh._dtypes": 0,
    "rlmesh._shape": 0,
    "rlmesh._spin": 0,
    "rlmesh._deadline": 0,
    "rlmesh._lifecycle": 0,
    "rlmesh._restart": 0,
    # 1: the data model, no I/O (the C extension included)
    "rlmesh._native": 1,
    "rlmesh._buffers": 1,
    "rlmesh._dlpack": 1,
    "rlmesh.tensor": 1,
    "rlmesh.values": 1,
    "rlmesh._bridge": 1,
    "rlmesh.spaces": 1,
    "rlmesh.specs": 1,
    # 2: bytes and offsets; addresses, frames, sockets
    "rlmesh.shm": 2,
    "rlmesh.net": 2,
    # 3: values <-> arrays (backends); messages over rings or sockets (wire);
    #    the served env's adapter and its value checks
    "rlmesh.backends": 3,
    "rlmesh.wire": 3,
    "rlmesh.wire.kinds": 3,
    "rlmesh.wire.handshake": 3,
    "rlmesh.wire.step_codec": 3,
    "rlmesh.testing": 3,
    "rlmesh._adapter": 3,
    "rlmesh._codecs": 3,
    "rlmesh._conformance": 3,
    "rlmesh._framework": 3,
    # 4: endpoints
    "rlmesh.server": 4,
    "rlmesh._env_sources": 4,
    "rlmesh._env_sessions": 4,
    "rlmesh.client": 4,
    "rlmesh._client_base": 4,
    "rlmesh.models": 4,
    "rlmesh._model_base": 4,
    "rlmesh.model_server": 4,
    "rlmesh.remote_model": 4,
    "rlmesh._corners": 4,
    "rlmesh._results": 4,
    "rlmesh._targets": 4,
    "rlmesh._vector_runs": 4,
    "rlmesh.numpy": 4,
    "rlmesh.jax": 4,
    "rlmesh.torch": 4,
    "rlmesh.vector": 4,
    "rlmesh.vector._shard_book": 4,
    "rlmesh.vector._lane_commands": 4,
    # 5: Gymnasium faces
    "rlmesh.gymnasium": 5,
    # 6: applications: command line, demo, sandboxes, fleets; the package's
    #    own __init__, which gathers the public surface from every layer
    "rlmesh.cli": 6,
    "rlmesh.__main__": 6,
    "rlmesh._demo": 6,
    "rlmesh.sandbox": 6,
    "rlmesh.ray": 6,
    "rlmesh": 6,
}

#: Pairs of the same layer that must not know each other.
STRANGERS = [("rlmesh.shm", "rlmesh.net")]


def layer_of(module: str) -> tuple[str, int]:
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)
    return best, LAYERS[best]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imports_in(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) for every runtime import of an rlmesh module in ``source``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in _runtime_imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "rlmesh"]
            continue
        if node.level == 0:
            if node.module and node.module.split(".")[0] == "rlmesh":
                out.append((node.lineno, node.module))
            continue
        base = package[: len(package) - node.level + 1]
        if node.module:
            out.append((node.lineno, ".".join([*base, node.module])))
        else:  # from . import a, b: each name is a module (or a name of the package)
            for alias in node.names:
                target = ".".join([*base, alias.name])
                known = (PACKAGE.parent / target.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / target.replace(".", "/") / "__init__.py"
                ).exists()
                out.append((node.lineno, target if known or target == "rlmesh._native" else ".".join(base)))
    return out


def violations(module: str, imports: list[tuple[int, str]]) -> list[str]:
    """What is wrong with ``module`` importing ``imports``, one line per offence."""
    own_prefix, own = layer_of(module)
    wrong = []
    for line, target in imports:
        target_prefix, theirs = layer_of(target)
        if theirs > own:
            wrong.append(f"line {line}: {module} (layer {own}) imports {target} (layer {theirs})")
        for a, b in STRANGERS:
            if {own_prefix, target_prefix} == {a, b}:
                wrong.append(f"line {line}: {module} imports {target}; {a} and {b} never import each other")
    return wrong


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    assert SOURCES, "no sources found"
    for path in SOURCES:
        layer_of(module_name(path))  # raises ValueError (max of nothing) when unlisted


def test_no_layer_entry_is_stale() -> None:
    modules = {module_name(p) for p in SOURCES} | {"rlmesh._native"}
    planned = {
        "rlmesh.vector",
        "rlmesh.gymnasium",
        "rlmesh.sandbox",
        "rlmesh.ray",
    }
    stale = [
        prefix
        for prefix in LAYERS
        if prefix not in planned and not any(m == prefix or m.startswith(prefix + ".") for m in modules)
    ]
    assert stale == [], f"layer table names modules that do not exist: {stale}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_go_down_the_layers(path: pathlib.Path) -> None:
    module = module_name(path)
    assert violations(module, imports_in(path.read_text(), module, path.name == "__init__.py")) == []


def test_the_checker_catches_back_edges_and_strangers() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from ..server import EnvServer\n"
        "from ..shm import Handle\n"
        "import rlmesh.client\n"
        "if TYPE_CHECKING:\n"
        "    from ..models import Model\n"
        "def later():\n"
        "    from .. import cli\n"
    )
    found = violations("rlmesh.spaces._probe", imports_in(source, "rlmesh.spaces._probe", False))
    assert [f.split(":")[0] for f in found] == ["line 2", "line 3", "line 4", "line 8"]
    assert "rlmesh.server (layer 4)" in found[0] and "rlmesh.shm (layer 2)" in found[1]
    assert "rlmesh.cli (layer 6)" in found[3]
    stranger = violations(
        "rlmesh.shm.ring", imports_in("from ..net import stream\n", "rlmesh.shm.ring", False)
    )
    assert len(stranger) == 1 and "never import each other" in stranger[0]
    assert violations("rlmesh.server", imports_in("from .shm import Handle\n", "rlmesh.server", False)) == []
