"""Architecture rules: imports flow one way, checkers never import each other, __all__ is pinned."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import mtqa

PKG = Path(mtqa.__file__).resolve().parent
HEAVY = ("torch", "transformers", "language_tool_python", "sentence_transformers", "ray")
#: modules that are torch code through and through; only imported from inside functions
TORCH_MODULES = ("mtqa.llama",)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


MODULES = sorted(p for p in PKG.rglob("*.py"))


def _name(p: Path) -> str:
    return ".".join(("mtqa", *p.relative_to(PKG).with_suffix("").parts)).removesuffix(".__init__")


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_layering(path: Path) -> None:
    name = _name(path)
    mtqa_imports = {m for m in _imports(path) if m.startswith("mtqa.")}
    if name.startswith("mtqa.checkers.") and name != "mtqa.checkers.base":
        others = {m for m in mtqa_imports if m.startswith("mtqa.checkers.")
                  and m not in ("mtqa.checkers.base", "mtqa.checkers")}
        assert others == set(), "checkers never import each other"
        assert not mtqa_imports & {"mtqa.pipeline", "mtqa.aggregate", "mtqa.cli", "mtqa.gate"}
    if name.startswith("mtqa.render"):
        assert not any(m.startswith("mtqa.checkers") for m in mtqa_imports)
        assert not mtqa_imports & {"mtqa.pipeline", "mtqa.models"}
    if name in ("mtqa.types", "mtqa.errors"):
        assert mtqa_imports <= {"mtqa.types", "mtqa.errors"}


@pytest.mark.parametrize("path", [p for p in MODULES if _name(p) not in TORCH_MODULES], ids=_name)
def test_heavy_imports_are_lazy(path: Path) -> None:
    """Heavy packages are imported inside functions only, never at module level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert not top & set(HEAVY)


def test_importing_mtqa_loads_no_heavy_package() -> None:
    """The CLI, the pipeline and every checker module import without torch or transformers."""
    import subprocess
    import sys

    lazy = [m for m in map(_name, MODULES) if m not in TORCH_MODULES]
    code = (f"import sys\nfor m in {lazy!r}: __import__(m)\n"
            f"print(sorted(set(sys.modules) & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_every_module_declares_all(path: Path) -> None:
    module = importlib.import_module(_name(path))
    assert isinstance(getattr(module, "__all__", None), list | tuple)
    for name in module.__all__:
        assert hasattr(module, name), f"{_name(path)}.__all__ names missing {name}"


def test_public_api_pinned() -> None:
    assert sorted(mtqa.__all__) == sorted([
        "BatchSummary", "run_batch", "CheckerUnavailable", "Checker", "ConfigError", "Document", "DocumentReport",
        "InputError", "MtqaError", "Policy", "Report", "Settings", "__version__", "check",
        "load_policy",
    ])


def test_python_api_check() -> None:
    report = mtqa.check("The talks were successful. even as protests went on.",
                        checkers=["structure"])
    assert [s.text for s in report.spans] == ["successful. even"]
