"""Layers point one way: shared/ is the floor, services/ stand on it, commands/ (the CLI,
training and the papers' experiments) drive both. Read from the source, not from what a
test run happens to import: a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: package → the top-level packages of ours it must never import
FORBIDDEN = {"shared": ("services", "commands"), "services": ("commands",)}


def imported_packages(path: Path) -> set[str]:
    """The top-level package of every module ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(package: str) -> None:
    offenders = [f"{path.relative_to(ROOT)} imports {name}"
                 for path in sorted((ROOT / package).rglob("*.py"))
                 if "_pb2" not in path.name
                 for name in sorted(imported_packages(path) & set(FORBIDDEN[package]))]
    assert not offenders, "\n".join(offenders)


def test_import_scan_sees_lazy_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from services.vision.model import FEATURE_DIM\n"
                      "    import commands.cli\n")
    assert imported_packages(module) == {"services", "commands"}


@pytest.mark.parametrize("server", ["services.word.server", "services.graph.server",
                                    "services.user.server",
                                    "services.recommender.server"])
def test_a_service_that_scores_in_numpy_never_loads_torch(server: str) -> None:
    """torch costs a process 0.9 s and ~150 MB: only vision runs it at serving."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {server}; print('torch' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()[-1]
    assert loaded == "False"
