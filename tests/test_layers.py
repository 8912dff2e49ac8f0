"""The layers import downwards only: `inlet.v1` (the generated contract) <- `service/` (the
core) <- `http_bridge/` (the HTTP side) <- `inlet_app/` (the command line and the wiring of
`inlet serve`). The core must run without the HTTP side (`inlet serve core`), and the
contract without either, so an import the other way is a design change, not a shortcut.
`inlet_tools/` (send-test, contract-test) is a client of any deployment beside them:
`inlet.v1` <- `inlet_tools/` <- `inlet_app/`; it knows nothing of the server's code, and the
server nothing of it.
Read from the source with `ast`, every import (function-level ones too), without
importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Each layer, where its source is, and the first-party packages it must not import.
LAYERS = {
    "inlet.v1": (ROOT / "proto" / "inlet", ("service", "http_bridge", "inlet_app", "inlet_tools")),
    "service": (ROOT / "service", ("http_bridge", "inlet_app", "inlet_tools")),
    "http_bridge": (ROOT / "http_bridge", ("inlet_app", "inlet_tools")),
    "inlet_tools": (ROOT / "inlet_tools", ("service", "http_bridge", "inlet_app")),
}


def imported_modules(source: str) -> set[str]:
    """Every module an absolute import statement in `source` names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def violations(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for module in sorted(imported_modules(path.read_text(encoding="utf-8"))):
            if module.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    return found


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    folder, forbidden = LAYERS[layer]
    assert violations(folder, forbidden) == []


def test_the_check_sees_imports_in_functions_and_from_forms() -> None:
    source = (
        "import http_bridge.server\n"
        "def f():\n"
        "    from inlet_app.cli import main\n"
        "from . import sibling\n"
    )
    assert imported_modules(source) == {"http_bridge.server", "inlet_app.cli"}
