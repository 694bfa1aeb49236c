"""The package is laid out by layer (docs/design.md, "Layers"): no module imports from a layer above
its own, and no modules import each other in a circle. Read from the source with ``ast``, so an import
inside a function or under ``TYPE_CHECKING`` counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "venvfs"

# The one table of layers, lowest first: a module may import its own layer and the ones before it.
# A module belongs to the layer of the longest prefix that names it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("helpers", ("venvfs", "venvfs.errors", "venvfs.fsutil", "venvfs.fsflags", "venvfs.progress")),
    ("store", ("venvfs.store",)),
    ("hooks", ("venvfs.hooks",)),
    ("venv", ("venvfs.venv",)),
    ("mount", ("venvfs.mount",)),
    ("bench", ("venvfs.bench",)),
    ("cli", ("venvfs.cli",)),
    ("entry points", ("venvfs.__main__", "venvfs.daemon")),
)


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank)
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best[1]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """Every venvfs module ``module`` imports, wherever the import statement is, with its line."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name``, mod.
                yield (f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source), node.lineno


def graph() -> dict[str, dict[str, int]]:
    known = modules()
    edges: dict[str, dict[str, int]] = {m: {} for m in known}
    for module, path in known.items():
        for target, line in imports(module, path, known):
            if target in known and target != module:
                edges[module].setdefault(target, line)
    return edges


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [f"{m} (layer {LAYERS[layer_of(m)][0]}) imports {t} (layer {LAYERS[layer_of(t)][0]}) "
              f"at line {line}"
              for m, targets in graph().items() for t, line in targets.items() if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def strongly_connected(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    circles = [c for c in strongly_connected(graph()) if len(c) > 1]
    assert not circles, "\n".join(" <-> ".join(c) for c in circles)


# House rule: no class longer than one can hold in one's head (about 400 lines).
MAX_CLASS_LINES = 420


def test_no_class_is_too_long_to_read() -> None:
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert not long, "split these: " + "; ".join(long)


@pytest.mark.parametrize("source, expected", [
    ("import venvfs.mount.daemon\n", ["venvfs.mount.daemon"]),
    ("def f():\n    from venvfs.mount import daemon\n", ["venvfs.mount.daemon"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from venvfs.cli.app import main\n", ["venvfs.cli.app"]),
    ("from ..mount import daemon\n", ["venvfs.mount.daemon"]),
])
def test_the_walk_sees_every_kind_of_import(tmp_path: Path, source: str, expected: list[str]) -> None:
    # The checks above pass vacuously if the walk misses imports: it must see these, and the layer
    # check must call each of them upward from the store.
    path = tmp_path / "probe.py"
    path.write_text(source)
    found = [t for t, _ in imports("venvfs.store.probe", path, modules()) if t.startswith("venvfs")]
    assert found == expected
    assert all(layer_of(t) > layer_of("venvfs.store.probe") for t in found)


def test_a_circle_is_found() -> None:
    assert strongly_connected({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}})[0] == ["a", "b", "c"]


@pytest.mark.parametrize("argv", [
    # What venvs set up before the package was laid out by layer still run: hooks and .pth files
    # run ``python -m venvfs`` or ``from venvfs.cli import main``, and a venvfs upgraded while it
    # started a daemon finds ``python -m venvfs.daemon``.
    ["-m", "venvfs", "--version"],
    ["-c", "import sys; from venvfs.cli import main; sys.exit(main())", "--version"],
    ["-m", "venvfs.daemon", "--help"],
])
def test_old_entry_points_still_run(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr
