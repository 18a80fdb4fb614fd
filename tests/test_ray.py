"""``mtqa batch --engine ray``: the same files as the local engine, resumable exactly once.

Runs on a local Ray instance (``ray.init(num_cpus=4, ...)``: with only the 2 logical CPUs of a
small machine, the actors can hold every CPU and starve Ray Data's own tasks). The tests that
need no Ray (the engine must not import it; a clear error without it) run in subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ABC, HILL, ROOT
from mtqa.batch import ResultStore, config_signature, default_store, run_batch
from mtqa.cli import app
from mtqa.config import Settings
from mtqa.errors import ConfigError
from mtqa.pipeline import Checker

runner = CliRunner()
STRUCTURE = Settings(checkers=("structure",))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}


def _paragraphs() -> list[str]:
    out = []
    for path in (ABC, HILL):
        out += [p for p in path.read_text(encoding="utf-8").split("\n") if p.strip()]
    return out


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """~50 records of real news text: 2 malformed lines, 3 duplicates, one with a reference."""
    paras = _paragraphs()[:42]
    records = [{"id": f"p{i:02d}", "mt": t, "n": i} for i, t in enumerate(paras)]
    records[5]["ref"] = _paragraphs()[-1]
    records[9]["meta_note"] = "ünïcode “quotes” 中文"
    for j, src in ((42, 0), (43, 7), (44, 30)):  # same text under another id: scored once
        records.append({"id": f"dup-of-p{src:02d}", "mt": paras[src]})
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines.insert(3, '{"id": "broken", "mt": ')
    lines.insert(20, '{"id": "no-mt"}')
    path = tmp_path / "in" / "records.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


N_UNIQUE = 42  # distinct texts the corpus holds (the duplicates are scored once)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    ray = pytest.importorskip("ray", reason="the Ray engine needs the extra: pip install 'mtqa[ray]'")
    pytest.importorskip("ray.data")
    # NOTE: a local instance otherwise turns on token authentication, which the driver
    # subprocesses that join it by address do not (Ray 2.60)
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".sqlite") and "-wal" not in p.name
            and "-shm" not in p.name}


def _local(corpus: Path, root: Path, settings: Settings = STRUCTURE) -> None:
    run_batch([corpus], root / "r.jsonl", settings, csv_out=root / "r.csv", html_dir=root / "html",
              chunk_size=4)


@pytest.mark.slow
def test_ray_engine_writes_the_local_engines_files_byte_for_byte(
        corpus: Path, tmp_path: Path, ray_address: str) -> None:
    _local(corpus, tmp_path / "local")
    result = runner.invoke(app, ["batch", str(corpus), "-o", str(tmp_path / "ray" / "r.jsonl"),
                                 "--csv", str(tmp_path / "ray" / "r.csv"),
                                 "--html", str(tmp_path / "ray" / "html"), "--chunk-size", "4",
                                 "--checkers", "structure", "--engine", "ray", "--workers", "2",
                                 "--address", ray_address])
    assert result.exit_code == 2, result.output  # the two malformed lines
    local, remote = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert sorted(local) == sorted(remote)
    assert len([k for k in local if k.startswith("html/")]) == 45 + 1  # pages and index.html
    for name in local:
        assert remote[name] == local[name], name
    lines = [json.loads(x) for x in (tmp_path / "ray" / "r.jsonl").read_text("utf-8").split("\n")
             if x]
    assert len(lines) == 47
    assert lines[3]["error"].startswith(f"{corpus}:4: malformed JSON")
    assert lines[20]["origin"] == f"{corpus}:21"
    assert [x["id"] for x in lines if "error" not in x][:3] == ["p00", "p01", "p02"]
    with ResultStore(default_store(tmp_path / "ray" / "r.jsonl")) as db:
        assert db.count() == N_UNIQUE
    assert not (tmp_path / "ray" / "r.parts").exists()  # every part is in the store now


@pytest.mark.slow
def test_engines_share_the_store(corpus: Path, tmp_path: Path, ray_address: str) -> None:
    out = tmp_path / "r.jsonl"
    run_batch([corpus], out, STRUCTURE, chunk_size=4)
    again = run_batch([corpus], out, STRUCTURE, chunk_size=4, engine="ray", workers=2)
    assert (again.scored, again.reused) == (0, 45)


def _wait_for_idle_cluster(timeout: float = 120.0) -> None:
    import ray

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the killed driver's actors never went away"
        time.sleep(0.5)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from mtqa.batch import run_batch
    from mtqa.config import Settings

    calls = [0]
    def tick(done, total):
        calls[0] += 1  # the first call comes before any batch
        if calls[0] == 1 + int(sys.argv[4]):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: like kill -9

    run_batch([Path(sys.argv[1])], Path(sys.argv[2]), Settings(checkers=("structure",)),
              chunk_size=4, engine="ray", address=sys.argv[3], workers=2, on_progress=tick)
""")


@pytest.mark.slow
def test_kill_the_driver_mid_run_then_resume_scores_each_input_exactly_once(
        corpus: Path, tmp_path: Path, ray_address: str) -> None:
    out = tmp_path / "killed" / "r.jsonl"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(corpus), str(out), ray_address,
                           "3"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not out.exists()
    _wait_for_idle_cluster()  # the dead driver's actors may finish a batch or two first
    with sqlite3.connect(default_store(out)) as db:
        committed = {c for (c,) in db.execute("SELECT content FROM results")}
    # batches the workers finished and committed to their parts while the driver was dead or
    # before it had taken them in
    parts = {json.loads(line)["content"]
             for p in out.parent.glob("r.parts/*/*/*.jsonl")
             for line in p.read_text("utf-8").split("\n") if line}
    assert len(committed) >= 9  # three batches (of 3 or 4) reached the store before the kill
    assert len(committed | parts) < N_UNIQUE

    resumed = run_batch([corpus], out, STRUCTURE, chunk_size=4, engine="ray", workers=2)
    assert resumed.scored == N_UNIQUE - len(committed | parts)  # nothing already scored again
    with ResultStore(default_store(out)) as db:
        assert db.count() == N_UNIQUE
    clean = tmp_path / "clean" / "r.jsonl"
    run_batch([corpus], clean, STRUCTURE, chunk_size=4)
    assert out.read_bytes() == clean.read_bytes()
    ids = [json.loads(x).get("id") for x in out.read_text("utf-8").split("\n") if x]
    assert len(ids) == 47 and len({i for i in ids if i}) == 45


@pytest.mark.slow
def test_parts_a_killed_driver_left_are_imported_not_rescored(
        corpus: Path, tmp_path: Path, ray_address: str) -> None:
    # what a worker commits while its driver is dead: a part file the store never saw
    first = tmp_path / "first" / "r.jsonl"
    run_batch([corpus], first, STRUCTURE, chunk_size=4, engine="ray", workers=2)
    with ResultStore(default_store(first)) as db, Checker(STRUCTURE) as checker:
        config = db.config(config_signature(STRUCTURE, checker.calibration.fingerprint()))
        rows = db._db.execute("SELECT content, doc_id, report, seconds FROM results LIMIT 10").fetchall()
    out = tmp_path / "second" / "r.jsonl"
    part = out.with_name("r.parts") / config / "ab" / "ab-test.jsonl"
    part.parent.mkdir(parents=True)
    part.write_text("".join(json.dumps({"content": c, "doc_id": i, "report": r, "seconds": s}) + "\n"
                            for c, i, r, s in rows), encoding="utf-8")
    summary = run_batch([corpus], out, STRUCTURE, chunk_size=4, engine="ray", workers=2)
    assert summary.scored == N_UNIQUE - 10
    assert out.read_bytes() == first.read_bytes()
    assert not part.exists()


@pytest.mark.slow
def test_settings_reach_the_actors(corpus: Path, tmp_path: Path, ray_address: str) -> None:
    policy = tmp_path / "strict.toml"
    policy.write_text('name = "strict-ray"\nmin_score = 99.5\n', encoding="utf-8")
    settings = Settings(checkers=("structure",), policy=str(policy), disabled_rules=("X",))
    out = tmp_path / "r.jsonl"
    summary = run_batch([corpus], out, settings, chunk_size=4, engine="ray", workers=2)
    # the store holds what the actors returned: their verdicts and their checker list
    with sqlite3.connect(default_store(out)) as db:
        reports = [json.loads(r) for (r,) in db.execute("SELECT report FROM results")]
    assert len(reports) == N_UNIQUE
    assert {r["verdict"]["policy"] for r in reports} == {"strict-ray"}
    assert all({s["checker"] for s in r["skipped"]} == {"fluency", "grammar", "reference"}
               for r in reports)
    assert all("structure|" in r["signature"] and "fluency|" not in r["signature"]
               for r in reports)
    assert summary.policy == "strict-ray"
    assert summary.failed > summary.passed  # 99.5 is strict: the default policy passes most
    local = tmp_path / "local" / "r.jsonl"
    run_batch([corpus], local, settings, chunk_size=4)
    assert out.read_bytes() == local.read_bytes()


@pytest.mark.slow
def test_a_worker_with_other_settings_is_refused(
        corpus: Path, tmp_path: Path, ray_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.cloudpickle

    from mtqa import ray_engine

    class Drifted(ray_engine.CheckBatch):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.signature = self.signature.replace('"mtqa":', '"mtqa": "other", "was":')

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(ray_engine, "CheckBatch", Drifted)
    with pytest.raises(ConfigError, match="other settings than this driver"):
        run_batch([corpus], tmp_path / "r.jsonl", STRUCTURE, chunk_size=4, engine="ray",
                  workers=1)


@pytest.mark.slow
def test_a_document_that_kills_its_worker_becomes_an_error_line(
        tmp_path: Path, ray_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.cloudpickle

    from mtqa import ray_engine

    class Poisoned(ray_engine.CheckBatch):
        def __call__(self, batch):  # type: ignore[no-untyped-def]
            if any(b"POISON" in bytes(d) for d in batch["doc"]):
                os._exit(1)  # a native crash: the worker process dies, no Python exception
            return super().__call__(batch)

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(ray_engine, "CheckBatch", Poisoned)
    paras = _paragraphs()[:8]
    paras.insert(5, "POISON " + paras[0])
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "mt": t}) + "\n"
                            for i, t in enumerate(paras)), encoding="utf-8")
    out = tmp_path / "r.jsonl"
    summary = run_batch([path], out, STRUCTURE, chunk_size=4, engine="ray", workers=1)
    lines = [json.loads(x) for x in out.read_text("utf-8").split("\n") if x]
    assert [x.get("id") for x in lines] == [f"d{i}" for i in range(9)]
    assert [x["error"] for x in lines if "error" in x] == [
        f"{path}:6: checking failed: the Ray worker checking it died 3 times"]
    assert summary.scored == 8 and len(summary.errors) == 1


@pytest.mark.slow
@pytest.mark.model
def test_ray_engine_with_the_language_model_matches_local(tmp_path: Path, ray_address: str) -> None:
    paras = _paragraphs()
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "mt": t}) + "\n"
                            for i, t in enumerate(paras[:6])), encoding="utf-8")
    settings = Settings(checkers=("structure", "fluency"))
    local = run_batch([path], tmp_path / "local" / "r.jsonl", settings, chunk_size=3)
    remote = run_batch([path], tmp_path / "ray" / "r.jsonl", settings, chunk_size=3,
                       engine="ray", workers=2)
    assert remote.scored == local.scored == 6
    lines = (tmp_path / "ray" / "r.jsonl").read_text("utf-8").split("\n")
    assert all(json.loads(x)["fluency"] is not None for x in lines if x)  # the LM ran in the actors
    assert (tmp_path / "ray" / "r.jsonl").read_bytes() == (tmp_path / "local" / "r.jsonl").read_bytes()


# -- without Ray ------------------------------------------------------------------------------

NO_RAY_IMPORT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import mtqa, mtqa.cli
    from mtqa.config import Settings
    s = mtqa.run_batch([Path(sys.argv[1])], Path(sys.argv[2]), Settings(checkers=("structure",)))
    print(s.scored, sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
""")


def test_import_and_the_local_engine_never_import_ray(corpus: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", NO_RAY_IMPORT, str(corpus), str(tmp_path / "r.jsonl")],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(N_UNIQUE), "[]"]


WITHOUT_RAY = textwrap.dedent("""
    import sys
    sys.modules["ray"] = None  # as if it were not installed: `import ray` raises ImportError
    from mtqa.cli import main
    sys.argv = ["mtqa", "batch", *sys.argv[1:]]
    main()
""")


def test_engine_ray_without_ray_is_one_clear_error(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "r.jsonl"
    proc = subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(corpus), "-o", str(out),
                           "--engine", "ray", "--checkers", "structure"],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --engine ray needs Ray")
    assert "pip install 'mtqa[ray]'" in proc.stderr
    assert not out.parent.exists()  # refused before anything was read or written


@pytest.mark.parametrize("flags", [["--workers", "2"], ["--address", "ray://x:10001"]],
                         ids=["workers", "address"])
def test_ray_flags_with_the_local_engine_are_usage_errors(corpus: Path, tmp_path: Path,
                                                          flags: list[str]) -> None:
    result = runner.invoke(app, ["batch", str(corpus), "-o", str(tmp_path / "r.jsonl"),
                                 "--checkers", "structure", *flags])
    assert result.exit_code == 2
    assert "apply to --engine ray only" in result.output


@pytest.mark.parametrize(("documents", "chunk", "actors", "expected"),
                         [(40, 32, 2, 5), (200, 32, 2, 25), (2000, 32, 2, 32), (3, 32, 2, 1),
                          (40, 32, 1, 10), (1, 1, 4, 1)])
def test_ray_batches_even_out_the_actors_loads(documents: int, chunk: int, actors: int,
                                                expected: int) -> None:
    # 40 documents in chunks of 32 gave one actor 32 documents and the other 8: with 2 actors
    # the run took 2.2x the local engine's time; every actor now gets at least 4 batches
    from mtqa.ray_engine import BATCHES_PER_ACTOR, _batch_size

    size = _batch_size(documents, chunk, actors)
    assert size == expected
    assert size <= chunk
    batches = -(-documents // size)
    assert batches >= min(documents, actors * BATCHES_PER_ACTOR)
