"""The source tree's shape: no import circles, vit_train never imports hpc, small modules, and every
folder says what it holds (issue: a house a newcomer can read).

Static (``ast``): every import statement counts, module-level or inside a function, since a lazy
import that closes a circle is still a circle between the two modules' responsibilities.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vit_train", "hpc")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports (``from a import b`` counts a.b when that is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # an attribute of a module: its module
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not an edge
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_has_no_circles() -> None:
    graph = _graph()
    assert len(graph) > 40  # the walk found the tree
    assert _cycles(graph) == []


def test_vit_train_never_imports_hpc() -> None:
    """One direction only: the login-node package uses the training package, never the reverse."""
    bad = {m: sorted(d for d in deps if d.split(".")[0] == "hpc")
           for m, deps in _graph().items() if m.split(".")[0] == "vit_train"}
    assert {m: d for m, d in bad.items() if d} == {}


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_is_small(name: str) -> None:
    lines = len(_modules()[name].read_text().splitlines())
    assert lines < MAX_LINES, f"{name}: {lines} lines; split it by concern (limit {MAX_LINES})"


def test_every_folder_says_what_it_holds() -> None:
    folders = [p for pkg in PACKAGES for p in [REPO / pkg, *(REPO / pkg).rglob("*")] if p.is_dir() and p.name != "__pycache__"]
    assert len(folders) >= 7
    for folder in folders:
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder}: not a package"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split("\n")[0]) > 20, f"{init}: needs a docstring saying what the folder holds"
