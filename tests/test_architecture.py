"""The house kept by a test: every import in ``src/cnnkit`` — at module level, inside functions and under
``TYPE_CHECKING`` alike — obeys the floors of docs/architecture.md, forms no circle, and takes no ``_private``
name from another package.

The floors are read from the import-linter contract in pyproject.toml (``make test`` also runs ``lint-imports``
on it), so the plan is written once. The checker is plain ``ast``; the tests at the end feed it made-up modules
to show that each rule fails when broken.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "cnnkit"


def floors() -> list[list[str]]:
    """The floors of the import-linter ``layers`` contract, top first: each a list of room names (optional
    rooms, in parentheses there, included)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [[room.strip().strip("()") for room in re.split(r"[:|]", layer)] for layer in contract["layers"]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module
    name: str | None  # the name taken from it (``from target import name``), if it is not a module
    line: int


def imports_of(source: str, text: str, modules: set[str], is_package: bool = False) -> list[Import]:
    """Every import statement of one module, wherever it stands, resolved to modules of ``modules``."""
    found = []
    package = source if is_package else source.rpartition(".")[0]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [Import(source, alias.name, None, node.lineno) for alias in node.names
                      if alias.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    found.append(Import(source, full, None, node.lineno))
                else:
                    found.append(Import(source, base, alias.name, node.lineno))
    return found


def scan(sources: dict[str, tuple[str, bool]]) -> list[Import]:
    modules = set(sources)
    return [imp for name, (text, is_package) in sources.items() for imp in imports_of(name, text, modules, is_package)]


def the_package() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(), p.name == "__init__.py") for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def room_of(module: str, plan: list[list[str]]) -> tuple[str | None, int | None]:
    """The room a module lives in and its floor (0 = top), or (None, None) for the package's own entry points
    (``cnnkit/__init__.py``, ``__main__``), which stand above every floor."""
    best = (None, None)
    for floor, rooms in enumerate(plan):
        for room in rooms:
            if (module == room or module.startswith(room + ".")) and (best[0] is None or len(room) > len(best[0])):
                best = (room, floor)
    return best


def upward(found: list[Import], plan: list[list[str]]) -> list[str]:
    bad = []
    for imp in found:
        room, floor = room_of(imp.source, plan)
        if room is None:
            continue
        if imp.target == PACKAGE and imp.name == "__version__":
            continue
        if imp.target == PACKAGE:  # the root package re-exports every floor: importing it hides an upward import
            bad.append(f"{imp.source}:{imp.line} imports the root package {PACKAGE} (import the room instead)")
            continue
        target_room, target_floor = room_of(imp.target, plan)
        if target_room is None:
            bad.append(f"{imp.source}:{imp.line} imports {imp.target}, which is on no floor of the plan")
        elif target_floor < floor:
            bad.append(f"{imp.source}:{imp.line} ({room}, floor {len(plan) - 1 - floor}) imports {imp.target} "
                       f"({target_room}, floor {len(plan) - 1 - target_floor}): upward")
    return list(dict.fromkeys(bad))  # one line per statement and module, however many names it takes


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def private_across(found: list[Import], plan: list[list[str]]) -> list[str]:
    """A ``_name`` (or a name inside a ``_module``) of one room imported by another. The ground floor's own
    underscore modules (``cnnkit._checks``, ``cnnkit._tensors``, …) are rooms of the plan: importing them is
    allowed, their ``_names`` are not."""
    bad = []
    for imp in found:
        source_room, _ = room_of(imp.source, plan)
        target_room, _ = room_of(imp.target, plan)
        if source_room is None or target_room is None or source_room == target_room:
            continue
        inside = imp.target[len(target_room):].split(".")[1:]
        if any(_private(part) for part in inside) or (imp.name is not None and _private(imp.name)):
            what = f"{imp.target}.{imp.name}" if imp.name else imp.target
            bad.append(f"{imp.source}:{imp.line} ({source_room}) imports the private {what} of {target_room}")
    return bad


def circles(found: list[Import]) -> list[list[str]]:
    """Strongly connected groups of more than one module in the graph of all imports (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in found:
        graph.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


@pytest.fixture(scope="module")
def package_imports() -> list[Import]:
    return scan(the_package())


def test_every_room_is_on_a_floor():
    plan = floors()
    lost = [m for m in the_package() if room_of(m, plan)[0] is None and m not in (PACKAGE, f"{PACKAGE}.__main__")]
    assert lost == [], "modules on no floor of the plan (add their room to pyproject.toml's layers contract)"


def test_no_upward_import(package_imports):
    assert upward(package_imports, floors()) == []


def test_no_private_name_across_rooms(package_imports):
    assert private_across(package_imports, floors()) == []


def test_no_import_circle(package_imports):
    assert circles(package_imports) == []


# The checker itself: each rule fails on a module made to break it.

def _fake(modules: dict[str, str]) -> list[Import]:
    sources = {name: (text, name in ("cnnkit.nn", "cnnkit.explainers")) for name, text in modules.items()}
    return scan({**{"cnnkit.nn": ("", True), "cnnkit.explainers": ("", True)}, **sources})


def test_checker_sees_an_upward_import_inside_a_function_and_under_type_checking():
    found = _fake({
        "cnnkit.nn.fake": "def f():\n    from cnnkit.explainers.registry import register_explainer\n",
        "cnnkit.nn.typed": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..explainers import x\n",
        "cnnkit.explainers.registry": "",
        "cnnkit.explainers.ok": "from cnnkit.nn import fake\n",
    })
    bad = upward(found, floors())
    assert len(bad) == 2 and "cnnkit.nn.fake:2" in bad[0] and "cnnkit.nn.typed:3" in bad[1], bad


def test_checker_sees_a_private_name_and_a_private_module():
    found = _fake({
        "cnnkit.explainers.fake": "from cnnkit.nn.conv import _helper\nfrom cnnkit.nn._common import y\n"
                                  "from cnnkit._checks import check_int, _hidden\n",
        "cnnkit.nn.conv": "", "cnnkit.nn._common": "", "cnnkit._checks": "",
        "cnnkit.nn.same_room": "from cnnkit.nn._common import z\nfrom cnnkit.nn.conv import _helper\n",
    })
    bad = private_across(found, floors())
    assert len(bad) == 3 and all(b.startswith("cnnkit.explainers.fake") for b in bad), bad


def test_checker_sees_a_circle():
    found = _fake({"cnnkit.nn.a": "import cnnkit.nn.b\n", "cnnkit.nn.b": "def f():\n    from . import c\n",
                   "cnnkit.nn.c": "from .a import thing\n", "cnnkit.nn.d": "from . import a\n"})
    assert circles(found) == [["cnnkit.nn.a", "cnnkit.nn.b", "cnnkit.nn.c"]]
