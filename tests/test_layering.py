"""The package's structure holds by itself: layers only import downwards, no module imports itself in a circle.

Every import of every module counts, including those inside functions and under ``TYPE_CHECKING``: a
lazy import hides a circle from the interpreter, not from a reader. The layer order is the method's data
flow (README "Layout", docs/design.md): a new package must be placed here on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sangal"

#: Lowest first. A module may import its own layer or a lower one, never a higher one.
LAYERS = (
    "version", "errors", "choices", "config",  # foundation
    "runtime",  # device, process groups, precision
    "data",  # datasets (the synthetic folder's reader included), attributes, transforms, sampling
    "synthetic",  # the synthetic pedestrian renderer (reads data's attribute files for its label statistics)
    "metrics",  # CMC/mAP/mINP, distances, re-ranking, attribute mA
    "viz",  # heat-map overlays, ranked lists, localisation scores, the HTML report
    "models",  # backbones, attribute net, ASAM, Re-ID net, fast-map net
    "store",  # atomic files, checkpoints, run folders
    "aah",  # heat maps: Grad-CAM, fast maps, map modes, cache, distillation
    "evaluate",  # features and retrieval scores of a trained model
    "train",  # the training loops and losses
    "experiments",  # study, leak check, demo and its report, pseudo-labels
    "search",  # gallery index and queries
    "serve",  # the local search page and JSON API over an index
    "export",  # ONNX
    "cli", "__main__",  # the command line
)
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every sangal module ``name`` imports, wherever the import statement stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
            found.update(submodules)
            if len(submodules) < len(node.names):  # names defined by the package itself, not submodules of it
                found.add(base)
    return {m for m in found if m == "sangal" or m.startswith("sangal.")} - {name}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else "sangal"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_every_module_belongs_to_a_known_layer() -> None:
    unknown = sorted({_layer(m) for m in _modules()} - set(LAYERS) - {"sangal"})
    assert not unknown, f"place the new package(s) {unknown} in tests/test_layering.py LAYERS (and the README)"


def test_no_module_imports_a_higher_layer() -> None:
    order = {layer: i for i, layer in enumerate(LAYERS)}
    upward = []
    for module, imported in _graph().items():
        if module == "sangal":  # the facade re-exports lazily by name; it sits above everything
            continue
        for target in imported:
            if target == "sangal":
                upward.append(f"{module} imports the package facade `sangal` (import the module that defines it)")
            elif order[_layer(target)] > order[_layer(module)]:
                upward.append(f"{module} ({_layer(module)}) imports {target} ({_layer(target)})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in graph), None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_import_circles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "modules that import each other in a circle:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_source_files_stay_short(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines; split it by concept (max {MAX_LINES})"


def test_every_package_says_what_it_holds() -> None:
    """Each package's __init__ opens with a short docstring: the concept, where its data comes from and goes."""
    for init in sorted(SRC.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init.relative_to(SRC)} has no docstring"
        first_paragraph = doc.split("\n\n")[0]
        assert 1 <= len(first_paragraph.splitlines()) <= 3, f"{init.relative_to(SRC)}: open with 2-3 lines"


MAX_BODY_LINES = 60


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_functions_fit_a_screen(path: Path) -> None:
    """Every function's body (its docstring aside) fits a screen: split a longer one by what its parts do."""
    long = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]
            if body and node.end_lineno - body[0].lineno + 1 > MAX_BODY_LINES:
                long.append(f"{node.name} ({node.end_lineno - body[0].lineno + 1} lines)")
    assert not long, f"{path.relative_to(SRC)}: {', '.join(long)} over {MAX_BODY_LINES} lines"
