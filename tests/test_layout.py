"""The package's layers, checked from the source: data/ -> models/ -> train/ -> ensemble/, study/, report/ -> cli."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "resbudget"
# a module may import from its own layer and the layers below it
LAYERS = {"version": 0, "_io": 0, "_types": 0, "_defaults": 0, "_clock": 0, "_memory": 0, "compat": 0, "data": 1,
          "models": 2, "train": 3, "ensemble": 4, "study": 4, "report": 4, "search": 4, "deploy": 5, "cli": 6,
          "__main__": 6, "__init__": 6}
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path, source: str | None = None) -> list[tuple[str, list[str]]]:
    """(resbudget layer imported from, names) of every relative or absolute import of the package in ``path``."""
    out = []
    package = list(path.relative_to(PACKAGE).parent.parts)
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "resbudget":
                parts = node.module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names]
            out.append((parts[0] if parts else names[0], names))
    return out


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_module_imports_a_higher_layer_or_a_private_name_of_another(path):
    here = _part(path)
    for layer, names in _imports(path):
        assert LAYERS[layer] <= LAYERS[here], f"{path.name} ({here}) imports from the higher layer {layer}"
        if layer != here and layer not in ("_io", "_types", "_clock"):  # the leaf helpers every layer shares
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{path.name} imports private names of {layer}: {private}"


def test_the_check_sees_upward_and_private_imports():
    fake = PACKAGE / "models" / "fake.py"
    found = _imports(fake, "from ..train.config import _resolve\nfrom resbudget.cli import main\nfrom .spec import X\n")
    assert found == [("train", ["_resolve"]), ("cli", ["main"]), ("models", ["X"])]
