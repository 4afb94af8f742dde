"""The package layout's rules (docs/design.md): imports point one way, modules stay readable in size."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "magihuman"

#: Layer of each subpackage, in data-flow order: a module may import only from its own layer or lower ones.
LAYERS = {
    "model": 0, "codecs": 1, "sampling": 2, "runtime": 3, "prompting": 4, "pipeline": 5, "demo": 6, "toy": 6,
    "serve": 7, "train": 7, "eval": 7, "cli": 8,
}
#: Lines per module (docs/design.md: about 500).
MAX_MODULE_LINES = 520


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def _imported_packages(path: Path) -> set[str]:
    """First-level magihuman subpackages imported anywhere in ``path`` (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{path.relative_to(PACKAGE)} uses a relative import; use magihuman.<package>.<module>")
        for name in names:
            parts = name.split(".")
            if parts[0] == "magihuman" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
    return found


def test_every_subpackage_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS and docs/design.md"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path):
    own = path.relative_to(PACKAGE).parts[0]
    upward = sorted(pkg for pkg in _imported_packages(path) if LAYERS[pkg] > LAYERS[own])
    assert not upward, f"{path.relative_to(PACKAGE)} ({own}) imports {upward}, which sit above it"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_size(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it by concept"


def test_presets_import_no_torch():
    code = "import sys, magihuman.pipeline.presets, magihuman.sampling.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
