"""Grammar checker: Harper on real text, LanguageTool by contract (recorded-format replay) and live.

Three kinds of tests live here:

* Harper (embedded) on the seed pair and the emoji/CJK fixture: real backend, real assertions.
* CONTRACT tests for the LanguageTool backend: a small HTTP server on 127.0.0.1 replays responses
  written in LanguageTool's documented ``/v2`` JSON format (``fixtures/lt/*.json``), and
  ``languagetool_url`` points the real language_tool_python client at it. They pin our request and
  response handling (endpoints, chunking, UTF-16 offsets, errors), not LanguageTool's judgement.
* ``@pytest.mark.languagetool``: a real LanguageTool server (``MTQA_LANGUAGETOOL_URL``) or local
  install, skipped with the reason when there is none.

Run as a script, this file is a stand-in ``java`` for the local-server lifecycle test: it serves
the same recorded responses on the port it is given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LT_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lt"


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class FakeLanguageTool(ThreadingHTTPServer):
    """Replays recorded LanguageTool ``/v2`` responses; records every request it gets."""

    daemon_threads = True

    def __init__(self, port: int = 0, *, max_text_length: int | None = None,
                 enforce_limit: int | None = None, fail_checks: bool = False) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.responses: dict[str, Any] = {}
        for name in ("check_emoji.json", "check_paragraphs.json"):
            for req in json.loads((LT_FIXTURES / name).read_text(encoding="utf-8"))["requests"]:
                self.responses[req["text"]] = req["response"]
        self.languages = json.loads((LT_FIXTURES / "languages.json").read_text("utf-8"))["response"]
        self.max_text_length = max_text_length  # None: /v2/maxtextlength answers 404 (older servers)
        self.enforce_limit = enforce_limit  # refuse longer texts with 413, as LanguageTool does
        self.fail_checks = fail_checks
        self.log: list[tuple[str, str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def checks(self) -> list[dict[str, str]]:
        return [params for method, path, params in self.log if path == "/v2/check"]


class _Handler(BaseHTTPRequestHandler):
    server: FakeLanguageTool

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base signature
        pass

    def _send(self, code: int, body: str, ctype: str = "application/json") -> None:
        data = body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", f"{ctype}; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        self.server.log.append(("GET", url.path, params))
        if url.path == "/v2/languages":
            self._send(200, json.dumps(self.server.languages))
        elif url.path == "/v2/maxtextlength" and self.server.max_text_length is not None:
            self._send(200, str(self.server.max_text_length), "text/plain")
        elif url.path == "/v2/info":
            any_response = next(iter(self.server.responses.values()))
            self._send(200, json.dumps({"software": any_response["software"]}))
        else:
            self._send(404, f"Error: Unsupported action: '{url.path}'", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        params = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode("utf-8")))
        path = urllib.parse.urlsplit(self.path).path
        self.server.log.append(("POST", path, params))
        text = params.get("text", "")
        limit = self.server.enforce_limit
        if path != "/v2/check":
            self._send(404, f"Error: Unsupported action: '{path}'", "text/plain")
        elif self.server.fail_checks:
            self._send(500, "Error: Internal Error: java.lang.OutOfMemoryError", "text/plain")
        elif limit is not None and _utf16_len(text) > limit:
            self._send(413, f"Error: Your text exceeds the limit of {limit} characters (it's "
                            f"{_utf16_len(text)} characters). Please submit a shorter text.",
                       "text/plain")
        elif text in self.server.responses:
            self._send(200, json.dumps(self.server.responses[text], ensure_ascii=False))
        else:
            self._send(500, f"Error: no recorded response for {text!r}", "text/plain")


def _serve_as_java(argv: list[str]) -> None:
    """``java -cp JAR org.languagetool.server.HTTPServer --port N``, played by the fake server."""
    port = int(argv[argv.index("--port") + 1])
    log = os.environ.get("FAKE_LT_STARTS")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
    FakeLanguageTool(port, max_text_length=2_147_483_647).serve_forever()


if __name__ == "__main__":
    _serve_as_java(sys.argv[1:])
    raise SystemExit(0)

# --- the tests ------------------------------------------------------------------------------

import pytest  # noqa: E402 - the stand-in java above needs none of this

from mtqa.checkers.grammar import (  # noqa: E402
    DEFAULT_DISABLED_RULES,
    MAX_TOKEN_CHARS,
    GrammarChecker,
    _broken_join,
    _chunks,
    _DocContext,
    _LocalServer,
    _mask_long_tokens,
    _utf16_advance,
    locate_languagetool,
)
from mtqa.errors import CheckerUnavailable, ConfigError  # noqa: E402
from mtqa.segment import segment  # noqa: E402
from mtqa.types import (  # noqa: E402
    CheckResult,
    Document,
    Kind,
    SegmentedDocument,
    Sentence,
    Severity,
)

EMOJI_LT = json.loads((LT_FIXTURES / "check_emoji.json").read_text("utf-8"))["requests"][0]["text"]
PARAGRAPHS_DOC = json.loads((LT_FIXTURES / "check_paragraphs.json").read_text("utf-8"))["doc"]


def seg(text: str, ref: tuple[str, ...] = (), doc_id: str = "d") -> SegmentedDocument:
    return segment(Document(id=doc_id, mt=text, ref=ref))


@pytest.fixture(scope="module")
def harper_checker() -> Iterator[GrammarChecker]:
    with GrammarChecker(backend="harper") as checker:
        yield checker


@pytest.fixture()
def fake_lt() -> Iterator[FakeLanguageTool]:
    server = FakeLanguageTool(max_text_length=2_147_483_647)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def spans(result: CheckResult, text: str) -> set[tuple[str, str]]:
    return {(f.rule or "", text[f.start:f.end]) for f in result.findings}


# --- Harper on real text --------------------------------------------------------------------


def test_harper_finds_broken_joins_in_the_abc_seed(
    harper_checker: GrammarChecker, abc_text: str, annotation: dict[str, Any]
) -> None:
    result = harper_checker.check([seg(abc_text)])[0]
    joins = [g for g in annotation["000_df5d74dac48ad764.txt"]["garbles"]
             if g["category"] == "broken-join"]
    major = [f for f in result.findings if f.severity is Severity.MAJOR]
    for g in joins:  # each annotated broken join is covered by a major finding on its second word
        assert any(g["start"] <= f.start and f.end <= g["end"] for f in major), g["text"]
    assert {abc_text[f.start:f.end] for f in major} == {"shortages", "even", "sanctions", "powerful"}
    assert result.signature.startswith("grammar|backend:harper|version:0.2.0|server:embedded|")


def test_harper_on_the_clean_hill_seed_has_no_major_finding(
    harper_checker: GrammarChecker, hill_text: str
) -> None:
    result = harper_checker.check([seg(hill_text)])[0]
    assert [f for f in result.findings if f.severity is not Severity.MINOR] == []
    # the words Harper does not know are names and a military term used twice: all filtered or
    # kept with a name's low confidence
    assert all(f.confidence <= 0.3 for f in result.findings if f.category == "spelling")
    assert "sustainment" not in {hill_text[f.start:f.end] for f in result.findings}


def test_boilerplate_sentences_are_not_checked(harper_checker: GrammarChecker, abc_text: str) -> None:
    doc = seg(abc_text)
    result = harper_checker.check([doc])[0]
    boiler = [s for s in doc.sentences if s.kind is Kind.BOILERPLATE]
    assert boiler, "the ABC seed has photo credits and site chrome"
    for f in result.findings:
        assert not any(s.start <= f.start < s.end for s in boiler)
    # "Klimentyev/SPUTNIK via AFP" is a credit line that Harper flags when given the text alone
    credit = abc_text.index("Mikhail Klimentyev")
    assert harper_checker._backend.check(abc_text[credit:credit + 60])  # the backend would flag it
    assert not [f for f in result.findings if credit <= f.start < credit + 60]


def test_boilerplate_sentence_inside_a_body_paragraph(harper_checker: GrammarChecker) -> None:
    text = "He go home. Credit: teh agency"
    doc = SegmentedDocument(
        doc=Document(id="mixed", mt=text), norm=text, paragraphs=((0, len(text)),),
        sentences=(Sentence(0, 11, 0), Sentence(12, len(text), 0, Kind.BOILERPLATE, "credit")))
    result = harper_checker.check([doc])[0]
    assert [text[f.start:f.end] for f in result.findings] == ["go"]
    assert result.sentence_scores[1] is None


def test_offsets_exact_with_emoji_and_cjk(harper_checker: GrammarChecker, emoji_text: str) -> None:
    result = harper_checker.check([seg(emoji_text)])[0]
    got = spans(result, emoji_text)
    assert ("SentenceCapitalization", "even") in got
    assert any(text == "the the" for _, text in got)
    text = "Fans 😀 cheered teh team in 東京 🇯🇵. He go home 👍."
    result = harper_checker.check([seg(text)])[0]
    assert {text[f.start:f.end] for f in result.findings} == {"teh", "go"}


def test_names_used_by_the_reference_or_twice_are_not_misspellings(
    harper_checker: GrammarChecker,
) -> None:
    text = "Minister Zhaoxuanyi spoke in Qiandongnan on Monday. He said the talks went well."
    twice_text = text + " Zhaoxuanyi and Qiandongnan officials agreed."
    alone, with_ref, twice = harper_checker.check([
        seg(text), seg(text, ref=("Zhaoxuanyi visited Qiandongnan.",)), seg(twice_text)])
    names = {"Zhaoxuanyi", "Qiandongnan"}
    flagged = {text[f.start:f.end]: f for f in alone.findings}
    assert set(flagged) == names
    assert all(f.confidence == pytest.approx(0.3) for f in flagged.values())
    assert not {text[f.start:f.end] for f in with_ref.findings} & names
    assert not {twice_text[f.start:f.end] for f in twice.findings} & names


def test_lowercase_misspelling_keeps_its_confidence(harper_checker: GrammarChecker) -> None:
    text = "The minister said the goverment would act. Nobody disagreed."
    result = harper_checker.check([seg(text)])[0]
    (f,) = result.findings
    assert (text[f.start:f.end], f.category, f.severity, f.confidence) == (
        "goverment", "spelling", Severity.MINOR, pytest.approx(0.8))
    assert "government" in f.suggestions


RULE_CASES = [
    # (enabled, disabled, expected rules) on "The  minister ... teh ..." (double space, typo)
    ((), (), {"The"}),
    (("Spaces",), (), {"The", "Spaces"}),
    ((), ("The",), {"SpellCheck"}),  # Harper's spell checker also knows "teh"
    ((), ("The", "SpellCheck"), set()),
    (("Spaces",), ("Spaces",), {"The"}),  # disabled wins
]


@pytest.mark.parametrize(("enabled", "disabled", "expected"), RULE_CASES,
                         ids=["default", "enable-typography", "disable-one", "disable-both",
                              "disable-wins"])
def test_rules_enabled_and_disabled_by_id(
    enabled: tuple[str, ...], disabled: tuple[str, ...], expected: set[str]
) -> None:
    text = "The  minister met teh press on Monday."
    with GrammarChecker(backend="harper", enabled_rules=enabled, disabled_rules=disabled) as g:
        result = g.check([seg(text)])[0]
        assert {f.rule for f in result.findings} == expected
        assert all(f.category == "typography" for f in result.findings if f.rule == "Spaces")


def test_default_disabled_rules_are_off(harper_checker: GrammarChecker) -> None:
    long = "The minister " + "and the deputy " * 20 + "met the press on Monday."
    result = harper_checker.check([seg(long)])[0]
    assert "LongSentences" in DEFAULT_DISABLED_RULES
    assert not [f for f in result.findings if f.rule == "LongSentences"]
    with GrammarChecker(backend="harper", enabled_rules=["LongSentences"]) as g:
        assert [f.rule for f in g.check([seg(long)])[0].findings] == ["LongSentences"]


def test_batch_results_are_in_order_and_independent_of_batching(
    harper_checker: GrammarChecker, abc_text: str, hill_text: str, emoji_text: str
) -> None:
    docs = [seg(t, doc_id=str(i)) for i, t in enumerate([abc_text, hill_text, emoji_text])]
    batch = harper_checker.check(docs)
    assert [r.doc_id for r in batch] == ["0", "1", "2"]
    assert batch == [harper_checker.check([d])[0] for d in docs]


def test_scores_and_features(harper_checker: GrammarChecker, abc_text: str) -> None:
    doc = seg(abc_text)
    result = harper_checker.check([doc])[0]
    assert len(result.sentence_scores) == len(doc.sentences)
    for s, score in zip(doc.sentences, result.sentence_scores):
        assert (score is None) == (s.kind is Kind.BOILERPLATE)
    words = result.features["body_words"]
    assert 600 < words < 800  # the ABC body is about 700 words
    n = len(result.findings)
    assert result.features["findings_per_100w"] == pytest.approx(100 * n / words)
    assert sum(result.features[f"{c}_per_100w"] for c in
               ("grammar", "spelling", "punctuation", "style", "typography")) == pytest.approx(
        100 * n / words)
    penalty = sum(5 * f.confidence if f.severity is Severity.MAJOR else f.confidence
                  for f in result.findings)
    assert result.doc_score == pytest.approx(100 * penalty / words)


def test_unknown_backend_and_non_english_harper() -> None:
    with pytest.raises(ConfigError, match="unknown grammar backend 'java'"):
        GrammarChecker(backend="java")
    with pytest.raises(CheckerUnavailable, match="Harper checks English only"):
        GrammarChecker(backend="harper", language="de-DE")


def test_explicit_harper_names_why_languagetool_is_skipped() -> None:
    with GrammarChecker(backend="harper") as g:
        assert g.backend == "harper"
        assert [(s.checker, s.reason) for s in g.skipped] == [
            ("grammar:languagetool", "backend 'harper' was requested")]


def test_importing_the_module_imports_no_backend() -> None:
    code = ("import sys, mtqa.checkers.grammar; "
            "print([m for m in ('language_tool_python', 'harper', 'wordfreq') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- chunking and UTF-16 offsets (units) ----------------------------------------------------


def test_utf16_advance() -> None:
    text = "a😀b𝐡𝐞c"
    assert _utf16_advance(text, 0, 3) == 2  # "a😀"
    assert _utf16_advance(text, 3, 4) == 5  # "𝐡𝐞"
    assert _utf16_advance(text, 5, 99) == len(text)


@pytest.mark.parametrize("limit", [None, 20_000, 400, 120, 40])
def test_chunks_split_on_paragraphs_and_map_back(abc_text: str, limit: int | None) -> None:
    doc = seg(abc_text)
    chunks = _chunks(doc, limit)
    body_paragraphs = {s.paragraph for s in doc.body}
    covered = set()
    for chunk in chunks:
        if limit is not None:
            assert _utf16_len(chunk.text) <= limit
        for start, end in zip(chunk.starts, chunk.ends):
            span = chunk.to_doc(start, end)
            assert span is not None
            assert abc_text[span[0]:span[1]] == chunk.text[start:end]
            covered.add(span)
    # every body paragraph is sent, whole when it fits
    for p in body_paragraphs:
        ps, pe = doc.paragraphs[p]
        if limit is None or _utf16_len(abc_text[ps:pe]) <= limit:
            assert (ps, pe) in covered
    if limit is None:
        assert len(chunks) == 1


# --- CONTRACT tests: LanguageTool's documented /v2 format, replayed -------------------------


def test_contract_emoji_offsets_and_typography_filter(fake_lt: FakeLanguageTool) -> None:
    """CONTRACT: UTF-16 offsets and lengths from /v2/check become exact Python spans."""
    with GrammarChecker(backend="languagetool", languagetool_url=fake_lt.url) as g:
        result = g.check([seg(EMOJI_LT)])[0]
        assert g.backend == "languagetool" and g.skipped == ()
    got = spans(result, EMOJI_LT)
    # "𝐡𝐞𝐥𝐥𝐨" is 5 code points but 10 UTF-16 units: its end needs the length converted too
    assert got == {("MORFOLOGIK_RULE_EN_US", "teh"), ("COMMA_PARENTHESIS_WHITESPACE", " ."),
                   ("MORFOLOGIK_RULE_EN_US", "𝐡𝐞𝐥𝐥𝐨")}
    by_rule = {f.rule: f for f in result.findings}
    assert by_rule["COMMA_PARENTHESIS_WHITESPACE"].category == "punctuation"
    assert by_rule["MORFOLOGIK_RULE_EN_US"].suggestions[:1] in (("the",), ())
    assert result.signature.startswith("grammar|backend:languagetool|version:6.4|server:remote|")
    with GrammarChecker(languagetool_url=fake_lt.url, enabled_rules=["WHITESPACE_RULE"]) as g:
        result = g.check([seg(EMOJI_LT)])[0]
    ws = [f for f in result.findings if f.rule == "WHITESPACE_RULE"]
    assert [(EMOJI_LT[f.start:f.end], f.category) for f in ws] == [("  ", "typography")]


def test_contract_endpoints_and_request_parameters(fake_lt: FakeLanguageTool) -> None:
    """CONTRACT: what we ask the server: languages, limits, then POST /v2/check with our rules."""
    g = GrammarChecker(languagetool_url=fake_lt.url + "/v2/", language="en-US",
                       disabled_rules=["EN_QUOTES"], enabled_rules=["PASSIVE_VOICE"])
    assert [p for _, p, _ in fake_lt.log] == ["/v2/languages"]  # the probe only: lazy client
    g.check([seg(EMOJI_LT)])
    g.check([seg(EMOJI_LT)])  # the client is reused
    g.close()
    g.close()
    paths = [p for _, p, _ in fake_lt.log]
    assert paths == ["/v2/languages", "/v2/languages", "/v2/maxtextlength", "/v2/info",
                     "/v2/check", "/v2/check"]
    params = fake_lt.checks()[0]
    assert params["language"] == "en-US"
    assert params["text"] == EMOJI_LT
    assert params["disabledRules"] == "EN_QUOTES"
    assert params["enabledRules"] == "PASSIVE_VOICE"


def test_contract_requests_split_on_paragraph_boundaries(fake_lt: FakeLanguageTool) -> None:
    """CONTRACT: a server limit (/v2/maxtextlength) splits requests between paragraphs."""
    fake_lt.max_text_length = 60
    fake_lt.enforce_limit = 60
    with GrammarChecker(languagetool_url=fake_lt.url) as g:
        result = g.check([seg(PARAGRAPHS_DOC)])[0]
    sent = [p["text"] for p in fake_lt.checks()]
    lines = PARAGRAPHS_DOC.split("\n")
    assert sent == [lines[0], lines[1], lines[3]]  # "Photo: Reuters" is a credit: not sent
    assert all(_utf16_len(t) <= 60 for t in sent)
    assert spans(result, PARAGRAPHS_DOC) == {("HE_VERB_AGR", "go"),
                                             ("ENGLISH_WORD_REPEAT_RULE", "The the")}
    severities = {f.rule: (f.category, f.severity) for f in result.findings}
    assert severities["HE_VERB_AGR"] == ("grammar", Severity.MAJOR)


def test_contract_413_makes_us_rechunk(fake_lt: FakeLanguageTool) -> None:
    """CONTRACT: a server without /v2/maxtextlength that answers 413 gets smaller requests."""
    fake_lt.max_text_length = None
    fake_lt.enforce_limit = 60
    with GrammarChecker(languagetool_url=fake_lt.url) as g:
        result = g.check([seg(PARAGRAPHS_DOC)])[0]
    sent = [p["text"] for p in fake_lt.checks()]
    lines = PARAGRAPHS_DOC.split("\n")
    assert sent[0] == "\n\n".join([lines[0], lines[1], lines[3]])  # refused with 413
    assert sent[1:] == [lines[0], lines[1], lines[3]]
    assert spans(result, PARAGRAPHS_DOC) == {("HE_VERB_AGR", "go"),
                                             ("ENGLISH_WORD_REPEAT_RULE", "The the")}


def test_contract_one_request_without_limit(fake_lt: FakeLanguageTool) -> None:
    """CONTRACT: without a small limit the whole body goes in one request, offsets mapped back."""
    with GrammarChecker(languagetool_url=fake_lt.url) as g:
        result = g.check([seg(PARAGRAPHS_DOC)])[0]
    assert len(fake_lt.checks()) == 1
    assert spans(result, PARAGRAPHS_DOC) == {("HE_VERB_AGR", "go"),
                                             ("ENGLISH_WORD_REPEAT_RULE", "The the")}


def test_contract_server_error_is_checker_unavailable(fake_lt: FakeLanguageTool) -> None:
    """CONTRACT: a 500 with LanguageTool's plain-text error becomes CheckerUnavailable."""
    fake_lt.fail_checks = True
    with GrammarChecker(languagetool_url=fake_lt.url) as g:
        with pytest.raises(CheckerUnavailable, match="OutOfMemoryError"):
            g.check([seg(EMOJI_LT)])


def test_contract_unsupported_language_is_a_config_error(fake_lt: FakeLanguageTool) -> None:
    """CONTRACT: a language missing from /v2/languages is a settings error."""
    with GrammarChecker(languagetool_url=fake_lt.url, language="xx-XX") as g:
        with pytest.raises(ConfigError, match="does not support language 'xx-XX'"):
            g.check([seg(EMOJI_LT)])


def _closed_port_url() -> str:
    server = FakeLanguageTool()
    url = server.url
    server.server_close()
    return url


def test_forced_languagetool_unreachable_raises() -> None:
    url = _closed_port_url()
    with pytest.raises(CheckerUnavailable, match="not reachable") as info:
        GrammarChecker(backend="languagetool", languagetool_url=url)
    assert info.value.checker == "grammar"


def test_auto_falls_back_to_harper_and_says_why(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    url = _closed_port_url()
    with GrammarChecker(languagetool_url=url) as g:
        assert g.backend == "harper"
        ((checker, reason),) = [(s.checker, s.reason) for s in g.skipped]
        assert checker == "grammar:languagetool" and url in reason and "not reachable" in reason
        assert g.check([seg("He go home.")])[0].signature.startswith("grammar|backend:harper|")
    monkeypatch.setenv("LTP_PATH", str(tmp_path))  # an empty download cache
    with GrammarChecker() as g:
        assert g.backend == "harper"
        assert "no local LanguageTool install found" in g.skipped[0].reason
        assert str(tmp_path) in g.skipped[0].reason
    with pytest.raises(CheckerUnavailable, match="MTQA_LANGUAGETOOL_URL"):
        GrammarChecker(backend="languagetool")


def test_injected_client(fake_lt: FakeLanguageTool) -> None:
    """An injected client is used as is; its matches go through the same conversion."""
    import language_tool_python

    client = language_tool_python.LanguageTool("en-US", remote_server=fake_lt.url)
    with GrammarChecker(client=client) as g:
        result = g.check([seg(EMOJI_LT)])[0]
        assert "server:injected" in g.signature
    assert ("MORFOLOGIK_RULE_EN_US", "𝐡𝐞𝐥𝐥𝐨") in spans(result, EMOJI_LT)
    with pytest.raises(ConfigError):
        GrammarChecker(backend="harper", client=client)


# --- the local server lifecycle, with a stand-in java ---------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_local_server_is_started_lazily_shared_and_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    jar_dir = tmp_path / "LanguageTool-6.4"
    jar_dir.mkdir()
    (jar_dir / "languagetool-server.jar").write_bytes(b"")  # the stand-in java ignores it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    java.chmod(0o755)
    starts = tmp_path / "starts.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LT_STARTS", str(starts))

    install = locate_languagetool(jar_dir)
    assert (install.version, install.java) == ("6.4", java)
    first = GrammarChecker(backend="languagetool", languagetool_jar_dir=jar_dir)
    second = GrammarChecker(languagetool_jar_dir=jar_dir)
    assert not starts.exists()  # nothing started before the first check
    assert first.check([seg(EMOJI_LT)])[0].findings
    assert second.check([seg(EMOJI_LT)])[0] == first.check([seg(EMOJI_LT)])[0]
    pids = [int(line) for line in starts.read_text().split()]
    assert len(pids) == 1 and _pid_alive(pids[0])  # one server for both checkers
    assert "server:local" in first.signature and "version:6.4" in first.signature
    first.close()
    first.close()
    assert _pid_alive(pids[0])  # the second checker still uses it
    second.close()
    assert not _pid_alive(pids[0])
    assert _LocalServer._running == {}


def test_local_server_that_dies_falls_back_in_auto_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    jar_dir = tmp_path / "LanguageTool-6.4"
    jar_dir.mkdir()
    (jar_dir / "languagetool-server.jar").write_bytes(b"")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text("#!/bin/sh\necho 'Error: Unable to access jarfile' >&2\nexit 1\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with GrammarChecker(languagetool_jar_dir=jar_dir) as g:
        assert g.backend == "languagetool"
        result = g.check([seg("He go home.")])[0]
        assert g.backend == "harper"
        assert "Unable to access jarfile" in g.skipped[0].reason
        assert result.signature.startswith("grammar|backend:harper|")
    with GrammarChecker(backend="languagetool", languagetool_jar_dir=jar_dir) as g:
        with pytest.raises(CheckerUnavailable, match="exited with code 1"):
            g.check([seg("He go home.")])


# --- a real LanguageTool, when there is one -------------------------------------------------


def _real_languagetool() -> dict[str, Any]:
    url = os.environ.get("MTQA_LANGUAGETOOL_URL")
    if url:
        return {"languagetool_url": url}
    try:
        locate_languagetool(os.environ.get("LTP_JAR_DIR_PATH"))
    except CheckerUnavailable as exc:
        pytest.skip(f"no LanguageTool server or install: {exc.reason}")
    return {"languagetool_jar_dir": os.environ.get("LTP_JAR_DIR_PATH")}


@pytest.mark.languagetool
def test_real_languagetool_on_the_seeds_and_emoji(
    abc_text: str, hill_text: str, emoji_text: str, annotation: dict[str, Any]
) -> None:
    kwargs = _real_languagetool()
    with GrammarChecker(backend="languagetool", **kwargs) as g:
        abc, hill, emoji = g.check([seg(abc_text), seg(hill_text), seg(emoji_text)])
    joins = [g_ for g_ in annotation["000_df5d74dac48ad764.txt"]["garbles"]
             if g_["category"] == "broken-join"]
    hit = [g_ for g_ in joins if any(g_["start"] <= f.start < g_["end"] for f in abc.findings)]
    assert len(hit) >= 3, "LanguageTool flags lowercase sentence starts"
    assert len(abc.findings) > len(hill.findings)
    for result, text in ((abc, abc_text), (hill, hill_text), (emoji, emoji_text)):
        for f in result.findings:
            assert 0 <= f.start < f.end <= len(text)
    assert any(emoji_text[f.start:f.end].lower() == "the the" for f in emoji.findings)


# --- what goes into the backend is bounded (issue 15 items 11 and 12) -------------------------


def test_long_tokens_are_masked_and_their_matches_dropped(harper_checker: GrammarChecker) -> None:
    blob = "QmFzZTY0" * 400  # 3,200 characters of base64: seconds and gigabytes in Harper unmasked
    text = f"The minister said teh talks would resume. {blob} He go home."
    result = harper_checker.check([seg(text)])[0]
    assert {text[f.start:f.end] for f in result.findings} == {"teh", "go"}
    (chunk,) = _chunks(seg(text), harper_checker._backend.max_chars)
    assert blob not in chunk.text and len(chunk.text) == len(text)
    masked = _mask_long_tokens(text)
    assert masked[text.index(blob) - 1 : text.index(blob) + len(blob) + 1].strip() == ""
    assert _mask_long_tokens("x" * MAX_TOKEN_CHARS) == "x" * MAX_TOKEN_CHARS


def test_a_150k_character_word_does_not_abort_the_process(tmp_path: Path) -> None:
    # before the fix Rust aborted the whole interpreter (SIGABRT, "memory allocation failed")
    path = tmp_path / "word.txt"
    path.write_text("The talks were successful. " + "a" * 150_000 + " He go home.\n", "utf-8")
    code = ("import sys; from mtqa.checkers.grammar import GrammarChecker; "
            "from mtqa.segment import segment; from mtqa.types import Document; "
            "t = open(sys.argv[1], encoding='utf-8').read(); "
            "g = GrammarChecker(backend='harper'); "
            "print(sorted(t[f.start:f.end] for f in g.check([segment(Document('w', t))])[0].findings))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "['go']"


def test_harper_requests_are_bounded(harper_checker: GrammarChecker, abc_text: str) -> None:
    big = "\n\n".join([abc_text] * 12)  # 70,000 characters of body
    limit = harper_checker._backend.max_chars
    assert limit is not None
    chunks = _chunks(seg(big), limit)
    assert len(chunks) > 1 and all(_utf16_len(c.text) <= limit for c in chunks)
    # bounded requests find, in every copy, what one request finds in the seed (misspellings
    # aside: twelve copies write each one twelve times, which makes it a name)
    one = harper_checker.check([seg(abc_text)])[0]
    many = harper_checker.check([seg(big)])[0]
    step = len(abc_text) + 2
    expected = {(f.start, f.end, f.rule) for f in one.findings if f.rule != "SpellCheck"}
    got = [(f.start % step, f.end % step, f.rule) for f in many.findings]
    assert set(got) == expected and len(got) == 12 * len(expected)


def test_broken_join_and_occurrences_match_the_plain_definitions() -> None:
    text = "He said “no.” even so, she said.\nlower start. Zed x-ray Zed x-ray zed"
    ctx = _DocContext.of(seg(text))
    assert _broken_join(ctx, text.index("even")) is True  # full stop, closing quote skipped
    assert _broken_join(ctx, text.index("lower")) is False  # a new paragraph
    assert ctx.occurrences("Zed") == 2 and ctx.occurrences("zed") == 1
    assert ctx.occurrences("x-ray") == 2 and ctx.occurrences("ray") == 2


def test_lone_surrogate_reaches_the_backend_as_a_replacement_character(
    harper_checker: GrammarChecker,
) -> None:
    # found by tests/test_fuzz.py: a JSON "\ud800" in mt made the grammar checker raise
    text = "The minister said teh talks \ud800 would resume. He go home."
    result = harper_checker.check([seg(text)])[0]
    assert {text[f.start:f.end] for f in result.findings} == {"teh", "go"}
