"""``mtqa serve``: a real server (uvicorn in a subprocess, loopback) called with httpx.

Most tests run the structure checker only, so they are fast; ``test_default_checkers`` loads the
models (marked ``model``). The micro-batcher is also tested alone, with a checker that blocks.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mtqa import Checker, Document, Settings
from mtqa.render.json import document_to_dict
from mtqa.serve.batcher import MicroBatcher, QueueFull
from mtqa.types import SCHEMA, Report

from conftest import ABC, HILL, read
from serve_util import ServerProcess

STRUCTURE = ("--checkers", "structure")
BROKEN = "The talks were successful. even as protests went on in the capital."
STRICT_POLICY = 'schema = "mtqa.policy/1"\nname = "strict"\nmin_score = 99.5\nmax_critical = 0\n'
PROBLEM = "application/problem+json"


def _expected(docs: list[Document]) -> list[dict[str, Any]]:
    with Checker(Settings(checkers=("structure",))) as checker:
        report = checker.check_many(docs)
    return [{**document_to_dict(d), "schema": SCHEMA} for d in report.documents]


def _is_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= set(body)
    return body


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("policies")
    (d / "strict.toml").write_text(STRICT_POLICY, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, policy_dir: Path) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("serve")
    srv = ServerProcess(tmp / "server.log", *STRUCTURE, "--policy-dir", str(policy_dir),
                        "--state-dir", str(tmp / "state"), "--max-chars", "200000",
                        "--max-body-bytes", "300000", "--max-items", "4")
    srv.start()
    yield srv
    srv.terminate()


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


# -- the package -------------------------------------------------------------------------------


def test_importing_the_cli_does_not_import_the_web_stack() -> None:
    code = ("import sys, mtqa, mtqa.cli\n"
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'httpx') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_serve_help_lists_the_service_options() -> None:
    from typer.testing import CliRunner

    from mtqa.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--port", "--policy-dir", "--state-dir", "--token-file", "--max-batch",
                   "--max-wait-ms", "--timeout", "--max-body-bytes", "--checkers"):
        assert option in result.stdout


def test_serve_bad_option_is_a_config_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mtqa.cli import app

    empty = tmp_path / "token"
    empty.write_text("\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["serve", "--token-file", str(empty)])
    assert result.exit_code == 2
    assert "token file is empty" in result.stderr
    result = CliRunner().invoke(app, ["serve", "--max-batch", "0", *STRUCTURE])
    assert result.exit_code == 2
    assert "max-batch must be at least 1" in result.stderr


def test_serve_port_in_use_and_bad_state_dir_exit_2(tmp_path: Path) -> None:
    import socket

    from typer.testing import CliRunner

    from mtqa.cli import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = CliRunner().invoke(app, ["serve", *STRUCTURE, "--port", port])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    state = tmp_path / "state"
    state.mkdir()
    (state / "jobs.sqlite").write_text("not a database", encoding="utf-8")
    result = CliRunner().invoke(app, ["serve", *STRUCTURE, "--state-dir", str(state)])
    assert result.exit_code == 2
    assert "jobs.sqlite: cannot use this file" in result.stderr


# -- probes and info ---------------------------------------------------------------------------


def test_probes_info_and_openapi(client: httpx.Client, policy_dir: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    info = client.get("/v1/info").json()
    assert info["ready"] is True
    assert info["checkers"] == ["structure"]
    assert info["signature"].startswith("mtqa:")
    assert info["calibration"]
    assert {"checker": "fluency", "reason": "turned off in the settings"} in info["skipped"]
    strict_sha = hashlib.sha256((policy_dir / "strict.toml").read_bytes()).hexdigest()
    assert {"name": "strict", "sha256": strict_sha} in info["policies"]
    assert info["limits"]["max_items"] == 4
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/check", "/v1/gate", "/v1/check:batch", "/v1/jobs", "/v1/jobs/{job_id}",
                 "/v1/jobs/{job_id}/results", "/healthz", "/readyz", "/metrics", "/v1/info"):
        assert path in paths


def test_metrics_count_requests_and_documents(client: httpx.Client) -> None:
    client.post("/v1/check", json={"mt": "A short text to count."})
    client.get("/nowhere")
    text = client.get("/metrics").text
    assert 'mtqa_http_requests_total{method="POST",route="/v1/check",status="200"}' in text
    assert 'mtqa_http_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert "mtqa_http_request_duration_seconds_bucket{route=\"/v1/check\",le=\"+Inf\"}" in text
    assert "mtqa_queue_depth 0" in text
    checked = next(line for line in text.splitlines()
                   if line.startswith("mtqa_documents_checked_total "))
    assert int(checked.split()[1]) >= 1
    assert "mtqa_batch_size_count" in text


# -- /v1/check ---------------------------------------------------------------------------------


def test_check_is_the_report_of_check_many(client: httpx.Client) -> None:
    r = client.post("/v1/check", json={"id": "a", "mt": BROKEN, "meta": {"site": "x"}})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    expected = _expected([Document("a", BROKEN, meta={"site": "x"})])[0]
    assert r.json() == expected
    assert [s["text"] for s in r.json()["spans"]] == ["successful. even"]
    assert r.json()["verdict"]["passed"] is False


def test_html_ish_text_comes_back_verbatim(client: httpx.Client) -> None:
    mt = '<script>alert("x")</script> The talks were successful. even as <b>protests</b> & more.'
    r = client.post("/v1/check", json={"id": "<i>id</i>", "mt": mt,
                                       "meta": {"title": "<b>T&amp;C</b>"}})
    data = r.json()
    assert data["id"] == "<i>id</i>"
    assert data["meta"] == {"title": "<b>T&amp;C</b>"}
    assert '"<i>id</i>"' in r.text  # not \u003c-escaped, not HTML-escaped
    for span in data["spans"]:
        assert mt[span["start"]:span["end"]] == span["text"]


def test_utf16_offsets_on_emoji_text(client: httpx.Client, emoji_text: str) -> None:
    mt = "👍🏽 中国 😀😀 " + BROKEN + "\n" + emoji_text
    plain = client.post("/v1/check", json={"mt": mt}).json()
    assert all("start_utf16" not in s for s in plain["spans"])
    data = client.post("/v1/check", params={"offsets": "utf16"}, json={"mt": mt}).json()
    assert data["spans"], "the fixture has a broken join"
    units = mt.encode("utf-16-le")
    for span in data["spans"]:
        assert mt[span["start"]:span["end"]] == span["text"]
        assert units[2 * span["start_utf16"]:2 * span["end_utf16"]].decode("utf-16-le") == span["text"]
    join = next(s for s in data["spans"] if s["text"] == "successful. even")
    assert join["start_utf16"] - join["start"] == 4  # 👍, 🏽 and two 😀 take two units each


VALIDATION_CASES = [
    ({"mt": 5}, "body.mt"),
    ({"id": "x"}, "body.mt"),
    ({"mt": "   "}, "body.mt"),
    ({"mt": "ok text", "ref": [1]}, "body.ref"),
    ({"mt": "ok text", "colour": "red"}, "body.colour"),
]


@pytest.mark.parametrize(("body", "field"), VALIDATION_CASES,
                         ids=["mt-number", "mt-missing", "mt-blank", "ref-number", "unknown-field"])
def test_validation_errors_name_the_field(client: httpx.Client, body: dict[str, Any],
                                          field: str) -> None:
    problem = _is_problem(client.post("/v1/check", json=body), 422)
    assert field in problem["detail"]
    assert any(e["field"].startswith(field) for e in problem["errors"])


@pytest.mark.parametrize("raw", [
    b'{"mt": "ok text", "meta": {"a": "\\ud800"}}',
    b'{"mt": "ok \\udc00 text"}',
    b'{"mt": "ok text", "meta": {"a": NaN}}',
    b'{"mt": "ok text", "meta": {"a": Infinity}}',
], ids=["surrogate-meta", "surrogate-mt", "nan", "infinity"])
def test_json_that_cannot_be_written_back_is_422_not_500(client: httpx.Client, raw: bytes) -> None:
    r = client.post("/v1/check", content=raw, headers={"content-type": "application/json"})
    _is_problem(r, 422)


def test_malformed_json_is_422(client: httpx.Client) -> None:
    r = client.post("/v1/check", content=b'{"mt": ', headers={"content-type": "application/json"})
    _is_problem(r, 422)


def test_limits_413(client: httpx.Client) -> None:
    problem = _is_problem(client.post("/v1/check", json={"mt": "word " * 40_001}), 413)
    assert problem["field"] == "mt"
    assert "200,000" in problem["detail"]
    big = json.dumps({"mt": "x" * 400_000}).encode()
    _is_problem(client.post("/v1/check", content=big,
                            headers={"content-type": "application/json"}), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies as it streams in
        yield b'{"mt": "'
        for _ in range(40):
            yield b"y" * 10_000
        yield b'"}'

    _is_problem(client.post("/v1/check", content=chunks(),
                            headers={"content-type": "application/json"}), 413)


def test_unknown_route_and_method_are_problems(client: httpx.Client) -> None:
    assert "/v1/nothing" in _is_problem(client.get("/v1/nothing"), 404)["detail"]
    _is_problem(client.get("/v1/check"), 405)


def test_idempotency_key_replays_the_first_answer(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": f"key-{time.time_ns()}"}
    first = client.post("/v1/check", json={"id": "i", "mt": BROKEN}, headers=headers)
    again = client.post("/v1/check", json={"id": "i", "mt": BROKEN}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.content == first.content
    other = client.post("/v1/check", json={"id": "i", "mt": "Another text."}, headers=headers)
    assert "different request" in _is_problem(other, 422)["detail"]


# -- /v1/gate ----------------------------------------------------------------------------------


def test_gate_default_and_named_policy(client: httpx.Client, policy_dir: Path) -> None:
    r = client.post("/v1/gate", json={"id": "g", "mt": BROKEN})
    assert r.status_code == 200
    data = r.json()
    assert data["id"] == "g" and data["passed"] is False and data["decision"] == "fail"
    assert data["policy"]["name"] == "default"
    reason = next(x for x in data["reasons"] if x["rule"] == "max_major_per_100_words")
    assert reason["threshold"] == 0.5 and reason["value"] > 0.5
    assert [s["text"] for s in reason["spans"]] == ["successful. even"]
    clean = "Officials said on Monday that the talks in Geneva had been a success."
    default = client.post("/v1/gate", json={"mt": clean}).json()
    strict = client.post("/v1/gate", json={"mt": clean, "policy": "strict"}).json()
    assert strict["policy"] == {
        "name": "strict", "sha256": hashlib.sha256((policy_dir / "strict.toml").read_bytes()).hexdigest()}
    assert default["passed"] is True
    assert strict["passed"] is False and strict["reasons"][0]["rule"] == "min_score"


def test_gate_unknown_policy_is_404(client: httpx.Client) -> None:
    problem = _is_problem(client.post("/v1/gate", json={"mt": BROKEN, "policy": "nope"}), 404)
    assert "strict" in problem["detail"]


# -- /v1/check:batch ---------------------------------------------------------------------------


def test_batch_in_order_with_per_item_errors(client: httpx.Client) -> None:
    docs = [{"id": "a", "mt": BROKEN}, {"id": "b", "mt": ""}, {"id": "c", "mt": "Fine text here."},
            {"id": "d", "mt": "z" * 200_001}]
    r = client.post("/v1/check:batch", json={"documents": docs})
    assert r.status_code == 200
    results = r.json()["results"]
    expected = _expected([Document("a", BROKEN), Document("c", "Fine text here.")])
    assert results[0] == expected[0] and results[2] == expected[1]
    assert results[1]["error"]["status"] == 422
    assert results[1]["error"]["errors"][0]["field"] == "documents.1.mt"
    assert results[3]["error"]["status"] == 413
    assert results[3]["error"]["field"] == "documents.3.mt"


def test_batch_over_max_items_is_413(client: httpx.Client) -> None:
    r = client.post("/v1/check:batch", json={"documents": [{"mt": "Text."}] * 5})
    assert "at most 4" in _is_problem(r, 413)["detail"]


# -- concurrency -------------------------------------------------------------------------------


def test_32_concurrent_checks_equal_one_check_many(server: ServerProcess, abc_text: str) -> None:
    texts = [f"{abc_text}\nParagraph {i}: the talks were successful. even so." if i % 2
             else f"Short text {i}. The talks were successful. even as protests went on."
             for i in range(32)]
    docs = [Document(f"d{i}", t) for i, t in enumerate(texts)]
    barrier = threading.Barrier(32)

    def call(i: int) -> dict[str, Any]:
        with server.client() as c:
            barrier.wait()
            r = c.post("/v1/check", json={"id": f"d{i}", "mt": texts[i]})
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        got = list(pool.map(call, range(32)))
    assert got == _expected(docs)


# -- jobs --------------------------------------------------------------------------------------


def _wait_done(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done after {timeout}s")


def test_job_jsonl_with_a_bad_line(client: httpx.Client) -> None:
    lines = [json.dumps({"id": "j1", "mt": BROKEN, "site": "x"}), "{not json",
             json.dumps({"id": "j3", "mt": "Another fine sentence."}), "",
             json.dumps({"id": "j4", "mt": BROKEN})]
    r = client.post("/v1/jobs", content="\n".join(lines).encode(),
                    headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    job = _wait_done(client, job_id)
    assert job["counts"] == {"total": 4, "done": 4, "errors": 1, "pending": 0}
    assert job["progress"] == 1.0
    out = client.get(f"/v1/jobs/{job_id}/results")
    assert out.status_code == 200 and out.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(x) for x in out.text.splitlines()]
    assert [r.get("id") for r in rows] == ["j1", None, "j3", "j4"]
    assert "malformed JSON" in rows[1]["error"] and "line 2" in rows[1]["error"]
    assert rows[0]["meta"] == {"site": "x"}
    expected = _expected([Document("j1", BROKEN, meta={"site": "x"})])[0]
    assert rows[0] == expected


def test_job_json_list_policy_and_idempotency(client: httpx.Client) -> None:
    clean = "Officials said on Monday that the talks in Geneva had been a success."
    body = [{"id": "p", "mt": clean}, {"mt": 3}]
    headers = {"Idempotency-Key": f"job-{time.time_ns()}"}
    r = client.post("/v1/jobs", params={"policy": "strict"}, json=body, headers=headers)
    assert r.status_code == 202
    again = client.post("/v1/jobs", params={"policy": "strict"}, json=body, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == r.json()["id"]
    other = client.post("/v1/jobs", json=body, headers=headers)
    _is_problem(other, 422)
    _wait_done(client, r.json()["id"])
    rows = [json.loads(x) for x in client.get(r.json()["results"]).text.splitlines()]
    assert rows[0]["verdict"]["policy"] == "strict" and rows[0]["verdict"]["passed"] is False
    assert "record 2" in rows[1]["error"] and "mt" in rows[1]["error"]


def test_job_errors(client: httpx.Client) -> None:
    _is_problem(client.get("/v1/jobs/nope"), 404)
    _is_problem(client.get("/v1/jobs/nope/results"), 404)
    _is_problem(client.post("/v1/jobs", params={"policy": "nope"}, json=[{"mt": "x"}]), 404)
    _is_problem(client.post("/v1/jobs", json=[]), 422)
    _is_problem(client.post("/v1/jobs", json={"mt": "not a list"}), 422)
    _is_problem(client.post("/v1/jobs", content=b"[{", headers={"content-type": "application/json"}),
                400)


def test_job_killed_midway_resumes_without_loss_or_rescoring(tmp_path: Path, abc_text: str) -> None:
    state = tmp_path / "state"
    args = (*STRUCTURE, "--state-dir", str(state), "--max-batch", "2")
    n = 120
    records = [{"id": f"k{i}", "mt": f"{abc_text}\nParagraph {i}: the talks were successful. even so."}
               for i in range(n)]
    first = ServerProcess(tmp_path / "first.log", *args).start()
    try:
        with first.client() as c:
            r = c.post("/v1/jobs", json=records)
            assert r.status_code == 202
            job_id = r.json()["id"]
            seen = 0
            until = time.monotonic() + 120
            while seen < 6 and time.monotonic() < until:
                seen = c.get(f"/v1/jobs/{job_id}").json()["counts"]["done"]
                time.sleep(0.01)
            assert 6 <= seen < n, "the job must be killed mid-way"
            _is_problem(c.get(f"/v1/jobs/{job_id}/results"), 409)
    finally:
        first.kill9()
    second = ServerProcess(tmp_path / "second.log", *args).start()
    try:
        with second.client() as c:
            job = _wait_done(c, job_id)
            assert job["status"] == "done"
            assert job["counts"] == {"total": n, "done": n, "errors": 0, "pending": 0}
            rows = [json.loads(x) for x in c.get(f"/v1/jobs/{job_id}/results").text.splitlines()]
            metrics = c.get("/metrics").text
    finally:
        second.terminate()
    assert [r["id"] for r in rows] == [f"k{i}" for i in range(n)]
    checked = int(next(x for x in metrics.splitlines()
                       if x.startswith("mtqa_documents_checked_total ")).split()[1])
    assert checked <= n - seen, "documents committed before the kill were scored again"
    sample = [0, seen - 1, n - 1]
    expected = _expected([Document(records[i]["id"], records[i]["mt"]) for i in sample])
    assert [rows[i] for i in sample] == expected


# -- auth, queue, deadline, shutdown -----------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "file"])
def test_bearer_token(tmp_path: Path, how: str) -> None:
    token = "s3cret-Token-that-must-not-be-logged"
    if how == "env":
        srv = ServerProcess(tmp_path / "auth.log", *STRUCTURE, env={"MTQA_SERVE_TOKEN": token})
    else:
        path = tmp_path / "token"
        path.write_text(token + "\n", encoding="utf-8")
        srv = ServerProcess(tmp_path / "auth.log", *STRUCTURE, "--token-file", str(path),
                            "--access-log")
    srv.start()
    try:
        with srv.client() as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 200
            missing = c.post("/v1/check", json={"mt": BROKEN})
            assert "missing" in _is_problem(missing, 401)["detail"]
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = c.post("/v1/check", json={"mt": BROKEN},
                           headers={"Authorization": "Bearer nope"})
            _is_problem(wrong, 401)
            _is_problem(c.get("/v1/info"), 401)
            _is_problem(c.get("/metrics"), 401)
            ok = c.post("/v1/check", json={"mt": BROKEN},
                        headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200
            assert c.get("/v1/info", headers={"Authorization": f"Bearer {token}"}).json()["auth"]
    finally:
        srv.terminate()
    assert token not in srv.log_text()


def test_auth_off_by_default(client: httpx.Client) -> None:
    assert client.post("/v1/check", json={"mt": BROKEN}).status_code == 200
    assert client.get("/v1/info").json()["auth"] is False


#: a request that keeps the worker busy for seconds: structure checking is linear and fast
#: (a few CPU seconds per MB), so the text is about 1 MB, and the limits let it in
_LONG = 160
_BIG = ("--max-chars", "2000000", "--max-body-bytes", "8000000")


def test_full_queue_is_429_with_retry_after_and_not_ready(tmp_path: Path, abc_text: str) -> None:
    srv = ServerProcess(tmp_path / "q.log", *STRUCTURE, "--max-queue", "1", "--max-batch", "1",
                        *_BIG)
    srv.start()
    long_text = (abc_text + "\n") * _LONG  # seconds of structure checking
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool, srv.client() as c:
            busy = pool.submit(c.post, "/v1/check", json={"mt": long_text})  # the worker runs it
            time.sleep(0.5)
            queued = pool.submit(c.post, "/v1/check", json={"mt": BROKEN})  # fills the queue
            time.sleep(0.3)
            key = {"Idempotency-Key": "refused-once"}
            refused = c.post("/v1/check", json={"mt": BROKEN}, headers=key)
            ready = c.get("/readyz")
            assert busy.result().status_code == 200 and queued.result().status_code == 200
            after = c.get("/readyz")
            retried = c.post("/v1/check", json={"mt": BROKEN}, headers=key)  # 429 is not kept
            metrics = c.get("/metrics").text
        _is_problem(refused, 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert "queue is full" in _is_problem(ready, 503)["detail"]
        assert after.status_code == 200
        assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
        assert 'mtqa_rejected_total{reason="queue_full"} 1' in metrics
    finally:
        srv.terminate()


def test_deadline_is_504(tmp_path: Path, abc_text: str) -> None:
    srv = ServerProcess(tmp_path / "t.log", *STRUCTURE, "--timeout", "0.0005")
    srv.start()
    try:
        with srv.client() as c:
            problem = _is_problem(c.post("/v1/check", json={"mt": abc_text * 3}), 504)
            assert "deadline" in problem["detail"]
            assert c.get("/healthz").status_code == 200
    finally:
        srv.terminate()


def test_sigterm_drains_in_flight_finish_new_get_503(tmp_path: Path, abc_text: str) -> None:
    srv = ServerProcess(tmp_path / "d.log", *STRUCTURE, *_BIG)
    srv.start()
    long_text = (abc_text + "\n") * _LONG  # seconds of structure checking
    result: list[httpx.Response] = []

    def slow() -> None:
        with srv.client() as c:
            result.append(c.post("/v1/check", json={"mt": long_text}))

    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(0.5)
    assert srv.proc is not None
    srv.proc.send_signal(15)
    time.sleep(0.2)
    with srv.client() as c:
        refused = c.post("/v1/check", json={"mt": BROKEN})
        ready = c.get("/readyz")
    worker.join(60)
    assert _is_problem(refused, 503)["detail"].startswith("the server is shutting down")
    _is_problem(ready, 503)
    assert result and result[0].status_code == 200
    assert srv.proc.wait(60) in (-15, 0)


# -- fuzzing -----------------------------------------------------------------------------------


def test_openapi_fuzzing_finds_no_server_error(server: ServerProcess, tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "schemathesis"
    out = subprocess.run(
        [str(cli), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "15", "--seed", "20", "--workers", "1", "--request-timeout", "60",
         "--phases", "examples,coverage,fuzzing"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


# -- the default checkers (models) -------------------------------------------------------------


@pytest.mark.model
@pytest.mark.slow
def test_default_checkers(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "m.log", "--max-wait-ms", "5", "--timeout", "900")
    srv.start(ready=False)
    try:
        with srv.client() as c:
            first = c.get("/readyz")
            srv.wait("/readyz", 600)
            assert first.status_code == 503 and "loading models" in first.json()["detail"]
            info = c.get("/v1/info").json()
            assert "fluency|" in info["signature"]
            r = c.post("/v1/check", json={"id": "abc", "mt": read(ABC), "ref": read(HILL)})
            assert r.status_code == 200
            data = r.json()
            assert data["fluency"] is not None and data["reference"] is not None
            for span in data["spans"]:
                assert read(ABC)[span["start"]:span["end"]] == span["text"]
    finally:
        srv.terminate()


# -- the micro-batcher alone -------------------------------------------------------------------


class _GatedChecker:
    """Records each batch; blocks until released; fails on a document whose text is 'boom'."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.closed = False
        self._real = Checker(Settings(checkers=("structure",)))

    def check_many(self, docs: Any) -> Report:
        docs = list(docs)
        self.gate.wait(10)
        self.batches.append([d.id for d in docs])
        if any(d.mt == "boom" for d in docs):
            raise RuntimeError("boom")
        return self._real.check_many(docs)

    def close(self) -> None:
        self.closed = True
        self._real.close()


def test_batcher_batches_queued_requests_and_refuses_when_full() -> None:
    fake = _GatedChecker()
    b = MicroBatcher(fake, max_batch=3, max_wait=0.0, max_queue=5, max_batch_chars=10_000)
    b.start()
    first = b.submit([Document("0", "First text.")], timeout=30)  # the worker blocks on it
    time.sleep(0.2)
    queued = b.submit([Document(str(i), f"Text number {i}.") for i in range(1, 6)], timeout=30)
    assert b.full
    with pytest.raises(QueueFull):
        b.submit([Document("x", "One too many.")], timeout=30)
    fake.gate.set()
    outcomes = [f.result(10) for f in first + queued]
    assert [o.id for o in outcomes] == [str(i) for i in range(6)]  # type: ignore[union-attr]
    assert fake.batches == [["0"], ["1", "2", "3"], ["4", "5"]]
    b.stop()
    assert fake.closed


def test_batcher_a_failing_document_costs_only_itself() -> None:
    fake = _GatedChecker()
    fake.gate.set()
    b = MicroBatcher(fake, max_batch=8, max_wait=0.05, max_queue=8, max_batch_chars=10_000)
    b.start()
    futures = b.submit([Document("a", "Fine."), Document("b", "boom"), Document("c", "Fine too.")],
                       timeout=30)
    a, boom, c = (f.result(10) for f in futures)
    assert isinstance(boom, str) and "boom" in boom
    assert a.id == "a" and c.id == "c"  # type: ignore[union-attr]
    b.stop()


class _SlowChecker:
    """Records each batch; each batch takes ``seconds`` (a model's run time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.batches: list[list[str]] = []
        self._real = Checker(Settings(checkers=("structure",)))

    def check_many(self, docs: Any) -> Report:
        docs = list(docs)
        self.batches.append([d.id for d in docs])
        time.sleep(self.seconds)
        return self._real.check_many(docs)

    def close(self) -> None:
        self._real.close()


def test_batcher_waits_for_the_clients_of_the_last_batch_to_come_back() -> None:
    """Closed-loop clients answered by one batch send their next requests one after another;
    a pause longer than max_wait between them must not split them into a batch of one and a
    batch of the rest (which then alternate forever). A lone client is not held back."""
    fake = _SlowChecker(0.6)
    inflight = {"n": 0}
    b = MicroBatcher(fake, max_batch=8, max_wait=0.001, max_queue=64, max_batch_chars=10_000,
                     in_flight=lambda: inflight["n"])
    b.start()
    inflight["n"] = 4
    first = b.submit([Document(f"a{i}", f"Text {i}.") for i in range(4)], timeout=30)
    [f.result(10) for f in first]
    futures = []
    for i in range(4):  # they come back 6 ms apart (6 x max_wait); in flight once they arrive
        inflight["n"] = i + 1
        futures += b.submit([Document(f"b{i}", f"Again {i}.")], timeout=30)
        time.sleep(0.006)
    [f.result(10) for f in futures]
    assert fake.batches == [["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"]]
    b.stop()
    # a lone client (nobody else in flight, its last batch held one document) is answered at
    # once, though max_wait is long
    lone = _SlowChecker(0.0)
    b = MicroBatcher(lone, max_batch=8, max_wait=5.0, max_queue=64, max_batch_chars=10_000,
                     in_flight=lambda: 1)
    b.start()
    for i in range(3):
        (f,) = b.submit([Document(f"c{i}", "Alone.")], timeout=30)
        f.result(2)  # raises TimeoutError if held back by max_wait
    assert lone.batches == [["c0"], ["c1"], ["c2"]]
    b.stop()


def test_batcher_respects_the_character_budget() -> None:
    fake = _GatedChecker()
    b = MicroBatcher(fake, max_batch=8, max_wait=0.0, max_queue=8, max_batch_chars=25)
    b.start()
    time.sleep(0.1)
    futures = b.submit([Document(str(i), "x" * 10 + f" {i}.") for i in range(4)], timeout=30)
    fake.gate.set()
    [f.result(10) for f in futures]
    assert all(sum(len("x" * 10 + " 0.") for _ in batch) <= 25 for batch in fake.batches)
    assert [i for batch in fake.batches for i in batch] == ["0", "1", "2", "3"]
    b.stop()
