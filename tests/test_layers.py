"""The package's layer order (docs/architecture.md) holds: no module imports one in a higher
layer, and no import circle exists, type-only imports included. Read from the source with
``ast``, so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "alltalk_host"

# Lowest first; one line each in docs/architecture.md. A module may import its own layer and
# those below it. Matched by the longest prefix of its dotted name inside the package.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("contract", ("", "backend", "errors", "text", "languages", "blends", "numbers", "audio",
                  "hookspecs", "logs")),
    ("base", ("plugins", "events", "limits", "outputs")),
    ("config", ("config",)),
    ("workers", ("workers",)),
    ("serving", ("serving",)),
    ("change", ("change",)),
    ("host", ("host", "metrics")),
    ("apis", ("apis",)),
    ("fronts", ("web", "wyoming", "ray", "webui")),
    ("commands", ("commands", "testing", "__main__")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank is None:
        raise AssertionError(f"alltalk_host.{module} is in no layer: add it to LAYERS and to "
                             "docs/architecture.md")
    return rank


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports, at any depth of its code."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "alltalk_host"
                                  or node.module.startswith("alltalk_host.")):
                target = node.module.removeprefix("alltalk_host").lstrip(".")
            else:
                continue
            for alias in node.names:
                child = f"{target}.{alias.name}".lstrip(".")
                found.add(child if child in MODULES else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("alltalk_host."):
                    found.add(alias.name.removeprefix("alltalk_host."))
    found.discard(module)
    return {m for m in found if m in MODULES}


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_import_runs_up_the_layers() -> None:
    against = [f"alltalk_host.{m} ({LAYERS[layer_of(m)][0]}) imports alltalk_host.{t} "
               f"({LAYERS[layer_of(t)][0]})"
               for m, targets in sorted(GRAPH.items()) for t in sorted(targets)
               if layer_of(t) > layer_of(m)]
    assert not against, "imports against the layer order:\n" + "\n".join(against)


def test_no_import_circles() -> None:
    # Tarjan's strongly connected components: any with more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


@pytest.mark.parametrize("layer", [name for name, _ in LAYERS])
def test_the_architecture_doc_names_each_layer(layer: str) -> None:
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert f"**{layer}**" in doc, f"docs/architecture.md does not describe the {layer} layer"
