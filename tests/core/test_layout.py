"""The package's architecture as the README's "Project layout" states it: every module listed in
its layer, and no module importing from a layer below it in that list (lower layers never import
higher ones; the layers form no circle)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "droid_pipeline"
# A layer's line in the README's layout block: "  <folder>/   <modules> ... <description>".
_LAYER_LINE = re.compile(r"^  (?P<layer>[a-z]+)/\s+(?P<rest>.*)$")
_ROOT_LINE = re.compile(r"^  (?P<rest>[a-z_ ]+?)\s{2,}`python -m droid_pipeline")


def readme_layout() -> tuple[list[str], dict[str, set[str]]]:
    """The layers in README order, and the module names each lists (root entry points as "")."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Project layout", 1)[1].split("```", 2)[1]
    order, modules = [], {}
    for line in block.splitlines():
        match = _LAYER_LINE.match(line)
        if match:
            order.append(match["layer"])
            modules[match["layer"]] = {word for word in re.split(r"\s+", match["rest"])
                                       if (PACKAGE / match["layer"] / f"{word}.py").is_file()}
        elif root := _ROOT_LINE.match(line):
            modules[""] = set(root["rest"].split())
    return order, modules


def package_modules() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py":
            continue
        layer = rel.parts[0] if len(rel.parts) > 1 else ""
        found.setdefault(layer, set()).add(rel.stem)
    return found


def imported_layers(path: Path) -> set[str]:
    """Layers of droid_pipeline this module imports (at any depth of the module: lazy imports count)."""
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "droid_pipeline" and len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
                layers.add(parts[1])
    return layers


def test_the_readme_lists_every_module_in_its_layer():
    order, listed = readme_layout()
    found = package_modules()
    assert set(order) == {layer for layer in found if layer}, "every package folder is a layer of the README"
    for layer, modules in found.items():
        assert listed.get(layer, set()) == modules, f"README layout of {layer or 'the package root'}"


def test_no_layer_imports_a_layer_below_it_in_the_readme():
    order, _ = readme_layout()
    rank = {layer: index for index, layer in enumerate(order)}
    upward = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            continue  # the package face and the python -m entry points may import anything
        for layer in imported_layers(path):
            if rank[layer] > rank[rel.parts[0]]:
                upward.append(f"{rel} imports {layer}/")
    assert not upward, "\n".join(upward)
