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
        assert not mtqa_imports & {"mtqa.pipeline", "mtqa.aggregate", "mtqa.calibrate",
                                   "mtqa.cli", "mtqa.gate", "mtqa.batch", "mtqa.evaluate"}
    if name in ("mtqa.ter", "mtqa.facts", "mtqa.encoders", "mtqa.align", "mtqa.version"):
        # the reference checker's rooms: below every checker, knowing none
        assert not any(m.startswith("mtqa.checkers") for m in mtqa_imports)
        assert not mtqa_imports & {"mtqa.pipeline", "mtqa.aggregate", "mtqa.calibrate"}
    if name == "mtqa.version":
        assert _imports(path) == {"__future__"} or _imports(path) == set(), "imports nothing"
    if name.startswith("mtqa.render"):
        assert not any(m.startswith("mtqa.checkers") for m in mtqa_imports)
        assert not mtqa_imports & {"mtqa.pipeline", "mtqa.models"}
    if name in ("mtqa.types", "mtqa.errors"):
        assert mtqa_imports <= {"mtqa.types", "mtqa.errors"}
    # the service sits on top: it uses the pipeline, batch store and renderers; only the CLI
    # imports it, and the CLI only its framework-free options (FastAPI loads when serving)
    serve = {m for m in mtqa_imports if m == "mtqa.serve" or m.startswith("mtqa.serve.")}
    if name.startswith("mtqa.serve"):
        assert "mtqa.cli" not in mtqa_imports
    elif name == "mtqa.cli":
        assert serve <= {"mtqa.serve", "mtqa.serve.options"}
    else:
        assert serve == set(), "nothing below the service imports it"


#: a Metric's private methods and sacreBLEU's TER internals; only mtqa.ter may touch them, so a
#: sacreBLEU upgrade breaks one module (pinned in pyproject.toml)
SACREBLEU_PRIVATE = ("_preprocess_segment", "_extract_reference_info", "_compute_segment_statistics",
                     "_aggregate_and_compute", "_extract_corpus_statistics", "_cache_references",
                     "_compute_score_from_stats")


def _sacrebleu_internals(path: Path) -> list[str]:
    """Where a module imports ``lib_ter`` or calls a Metric's private methods."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sacrebleu"):
            if "lib_ter" in (node.module or "") or any(a.name == "lib_ter" for a in node.names):
                found.append(f"line {node.lineno}: imports lib_ter")
        elif isinstance(node, ast.Import):
            found.extend(f"line {node.lineno}: imports {a.name}" for a in node.names
                         if a.name.startswith("sacrebleu") and "lib_ter" in a.name)
        elif isinstance(node, ast.Attribute) and node.attr in SACREBLEU_PRIVATE:
            found.append(f"line {node.lineno}: {node.attr}")
    return found


@pytest.mark.parametrize("path", [p for p in MODULES if _name(p) != "mtqa.ter"], ids=_name)
def test_only_the_ter_module_touches_sacrebleu_internals(path: Path) -> None:
    assert _sacrebleu_internals(path) == []


def test_the_sacrebleu_rule_catches_private_use(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from sacrebleu.metrics import lib_ter\nx = metric._aggregate_and_compute([])\n",
                   encoding="utf-8")
    assert _sacrebleu_internals(bad) == ["line 1: imports lib_ter", "line 2: _aggregate_and_compute"]
    assert _sacrebleu_internals(PKG / "ter.py") != []  # the one module that may


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_every_module_has_a_docstring(path: Path) -> None:
    """Each module says its one job in its first line."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert doc and doc.split("\n", 1)[0].strip(), f"{_name(path)} has no docstring"


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


def _rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _assert_emits_what_it_declares(fluency: object, reference: object, mt: str, ref: str) -> None:
    """The feature names the calibration imports are the ones the checkers emit."""
    from mtqa.checkers import fluency as fl
    from mtqa.checkers import reference as rf
    from mtqa.segment import segment
    from mtqa.types import Document

    doc = segment(Document(id="d", mt=mt, ref=(ref,)))
    f = fluency.check([doc])[0]  # type: ignore[attr-defined]
    r = reference.check([doc])[0]  # type: ignore[attr-defined]
    assert {k for m in f.sentence_features for k in m} == {*fl.SENTENCE_SUMS, fl.SENTENCE_MAX}
    assert f.words is not None and set(f.words.values) == {fl.WORD_SURPRISAL}
    assert {k for m in r.sentence_features for k in m} == set(rf.SENTENCE_SUMS)
    assert r.words is not None and set(r.words.values) == {
        rf.WORD_UNMATCHED, rf.WORD_ABSENT, rf.WORD_CHRF, rf.WORD_LM_COND}


@pytest.mark.model
@pytest.mark.slow
def test_closing_a_checker_frees_its_language_model() -> None:
    """Five Checkers built, used and closed in one process: RSS stays flat, the model is freed.

    The fluency and reference checkers of one Checker read one copy of the model (its pool's).
    """
    import gc
    import weakref

    from mtqa.config import load_settings

    if not Path("/proc/self/statm").exists():
        pytest.skip("needs /proc/self/statm (Linux)")
    settings = load_settings(overrides={"checkers": ["fluency", "reference"]})
    mt = "The company said on Monday that its profit rose by one fifth.\nIts shares dropped."
    ref = "The company said on Monday that profits rose by a fifth.\nIts shares fell."
    sizes = []
    for k in range(5):
        with mtqa.Checker(settings) as checker:
            report = checker.check(mt, ref)
            assert [s.checker for s in report.skipped] == ["structure", "grammar"]
            fluency, reference = checker._built["fluency"], checker._built["reference"]
            if k == 0:
                _assert_emits_what_it_declares(fluency, reference, mt, ref)
            assert len(checker.models) == 1
            model = fluency._model  # type: ignore[attr-defined]
            assert reference._lm is not None and reference._lm.model is model  # type: ignore[attr-defined]
            alive = weakref.ref(model)
            del model, fluency, reference
        assert len(checker.models) == 0
        gc.collect()
        assert alive() is None, "the closed Checker's model is still reachable"
        sizes.append(_rss_bytes())
    # the model alone is ~0.5 GB: a leak would add that per Checker
    assert max(sizes[1:]) - sizes[1] < 150 * 2**20, [s // 2**20 for s in sizes]
