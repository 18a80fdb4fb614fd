"""Grammar and spelling checks: LanguageTool (a local or remote server) or Harper (embedded).

Backends (``GrammarChecker(backend=...)``):

* ``"languagetool"``: LanguageTool through language_tool_python, on a server given by URL
  (``languagetool_url``) or on a local install that mtqa starts on first use. The local install is
  looked up in language_tool_python's download cache (``LTP_PATH``, which language_tool_python
  reads) or in ``languagetool_jar_dir``. mtqa never downloads LanguageTool: it checks that an
  install exists before anything that could start a download. One server runs per process. It is
  shared by every checker, reused across batches, and stopped by the last ``close()`` or at exit.
* ``"harper"``: Harper (harper-py), in-process, with no Java and no network.
* ``"auto"`` (the default): LanguageTool when a URL or a local install is there, else Harper.
  ``GrammarChecker.skipped`` says why LanguageTool was not used.

Matches are then filtered for news text. Findings in boilerplate sentences are dropped. A
"misspelled" word is dropped when the reference uses it, when the document spells it the same way
twice (names, places, terms), or when it is capitalised inside a sentence and attested in wordfreq's
English lists; other unknown capitalised or quoted words are kept with a low confidence.
Typography rules (curly quotes, dashes, whitespace) and rules that go against news house style
(long sentences, the serial comma) are off unless named in ``enabled_rules``.

Offsets: Harper gives code-point spans. LanguageTool counts UTF-16 units. language_tool_python
converts a match's start to a code-point index but not its length, so the end is converted here
(``_utf16_advance``).
"""

from __future__ import annotations

import atexit
import bisect
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, ClassVar, Protocol, Self

from mtqa.checkers.base import BaseChecker
from mtqa.errors import CheckerUnavailable, ConfigError
from mtqa.types import CheckResult, Finding, Kind, SegmentedDocument, Sentence, Severity, Skipped
from mtqa.version import __version__

if TYPE_CHECKING:
    import harper
    import language_tool_python

    from mtqa.config import Settings
    from mtqa.models import ModelPool

__all__ = [
    "CATEGORIES",
    "DEFAULT_DISABLED_RULES",
    "GrammarChecker",
    "LanguageToolClient",
    "LanguageToolInstall",
    "LanguageToolMatch",
    "locate_languagetool",
]

logger = logging.getLogger(__name__)

CATEGORIES = ("grammar", "spelling", "punctuation", "style", "typography")

# Off unless named in enabled_rules. Typography rules (the "typography" category) are off too.
DEFAULT_DISABLED_RULES = frozenset({
    # news sentences of 40+ words are house style, not translation errors
    "LongSentences", "TOO_LONG_SENTENCE",
    # AP style, which most English news follows, omits the serial comma and writes "re-election"
    "OxfordComma", "SERIAL_COMMA_ON", "DisjointPrefixes",
    # Harper rules no better than chance against MQM gold spans on the first 41 documents of
    # shared/data/mqm_2021_zhen.jsonl (benchmarks/grammar.py): "hard core" -> "hardcore",
    # "kind-hearted" -> "kindhearted", "up to now" -> "up too now"
    "CompoundNouns", "SplitWords", "ToTwoToo",
})

_SKIP_NAME = "grammar:languagetool"
_MINOR, _MAJOR = Severity.MINOR, Severity.MAJOR
_WEIGHT = {Severity.MINOR: 1.0, Severity.MAJOR: 5.0, Severity.CRITICAL: 10.0}  # MQM weights
# Prior confidences by category. They are not calibrated: benchmarks/grammar.py measures precision.
_CONFIDENCE = {"grammar": 0.7, "spelling": 0.8, "punctuation": 0.6, "style": 0.4, "typography": 0.5}
_NAME_CONFIDENCE = 0.3  # an unknown capitalised or quoted word: most likely a name
_NAME_ZIPF = 1.0  # wordfreq Zipf frequency from which a capitalised word counts as an attested name

# Harper's lint kinds, mapped to the report vocabulary (MQM counts capitalisation as spelling).
_HARPER_KIND: Mapping[str, tuple[str, Severity]] = MappingProxyType({
    "Spelling": ("spelling", _MINOR), "Typo": ("spelling", _MINOR),
    "Capitalization": ("spelling", _MINOR),
    "Punctuation": ("punctuation", _MINOR), "Formatting": ("typography", _MINOR),
    "Agreement": ("grammar", _MAJOR), "Grammar": ("grammar", _MAJOR),
    "Repetition": ("grammar", _MAJOR), "BoundaryError": ("grammar", _MAJOR),
    "Malapropism": ("grammar", _MAJOR),
    "Miscellaneous": ("grammar", _MINOR), "Usage": ("grammar", _MINOR),
    "WordChoice": ("grammar", _MINOR), "Eggcorn": ("grammar", _MINOR),
    "Nonstandard": ("grammar", _MINOR),
    "Readability": ("style", _MINOR), "Style": ("style", _MINOR), "Redundancy": ("style", _MINOR),
    "Enhancement": ("style", _MINOR), "Regionalism": ("style", _MINOR),
})
# LanguageTool's category ids, mapped the same way.
_LT_CATEGORY: Mapping[str, tuple[str, Severity]] = MappingProxyType({
    "TYPOS": ("spelling", _MINOR), "CASING": ("spelling", _MINOR),
    "COMPOUNDING": ("spelling", _MINOR),
    "GRAMMAR": ("grammar", _MAJOR),
    "CONFUSED_WORDS": ("grammar", _MINOR), "COLLOCATIONS": ("grammar", _MINOR),
    "MISC": ("grammar", _MINOR), "SEMANTICS": ("grammar", _MINOR),
    "FALSE_FRIENDS": ("grammar", _MINOR),
    "PUNCTUATION": ("punctuation", _MINOR), "TYPOGRAPHY": ("typography", _MINOR),
    **{c: ("style", _MINOR) for c in (
        "STYLE", "REDUNDANCY", "PLAIN_ENGLISH", "REPETITIONS_STYLE", "NONSTANDARD_PHRASES",
        "WIKIPEDIA", "AMERICAN_ENGLISH_STYLE", "BRITISH_ENGLISH", "GENDER_NEUTRALITY",
        "CREATIVE_WRITING", "TEXT_ANALYSIS", "MISUSED_TERMS_EU_PUBLICATIONS")},
})
_LT_ISSUE_TYPE: Mapping[str, tuple[str, Severity]] = MappingProxyType({
    "misspelling": ("spelling", _MINOR), "grammar": ("grammar", _MINOR),
    "duplication": ("grammar", _MAJOR), "typographical": ("typography", _MINOR),
    "whitespace": ("typography", _MINOR), "style": ("style", _MINOR),
    "register": ("style", _MINOR), "locale-violation": ("style", _MINOR),
})
# Rules whose backend category hides what they find in translations.
_RULE_CATEGORY: Mapping[str, tuple[str, Severity]] = MappingProxyType({
    # NOTE: LanguageTool files "space before the full stop" (``Ukraine.” .``) under
    # TYPOGRAPHY/whitespace; in machine translation it is a punctuation error, so it stays on.
    "COMMA_PARENTHESIS_WHITESPACE": ("punctuation", _MINOR),
    "DOUBLE_PUNCTUATION": ("punctuation", _MINOR),
    "ENGLISH_WORD_REPEAT_RULE": ("grammar", _MAJOR),
    "UnclosedQuotes": ("punctuation", _MINOR), "EllipsisLength": ("punctuation", _MINOR),
    "QuoteSpacing": ("punctuation", _MINOR),
})
# A lowercase word after a full stop inside a paragraph is a broken join (``supply”. shortages``).
_SENTENCE_START_RULES = frozenset({"SentenceCapitalization", "UPPERCASE_SENTENCE_START"})

_HARPER_DIALECTS = MappingProxyType({
    "en": "AMERICAN", "en-US": "AMERICAN", "en-GB": "BRITISH", "en-AU": "AUSTRALIAN",
    "en-CA": "CANADIAN", "en-IN": "INDIAN",
})
_JAR_NAMES = ("languagetool-server.jar", "languagetool.jar", "LanguageTool.jar")
_TOO_LONG = re.compile(r"exceeds the limit of (\d+) characters")
_LETTERS = re.compile(r"[^\W\d_]+")
_WORD_RUN = re.compile(r"\w+")
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*|\d+(?:[.,]\d+)*")
_OPEN_QUOTES = frozenset("\"'“‘«‹„‚")
_LEAD = "\"'“‘«‹„‚([{ \t"


class LanguageToolMatch(Protocol):
    """What a LanguageTool client returns per match (language_tool_python's ``Match``).

    ``offset`` is a code-point index into the checked text; ``error_length`` is in UTF-16 units,
    as LanguageTool sends it.
    """

    offset: int
    error_length: int
    rule_id: str
    category: str
    rule_issue_type: str
    message: str
    replacements: list[str]


class LanguageToolClient(Protocol):
    """A LanguageTool client: ``language_tool_python.LanguageTool`` or a test double."""

    def check(self, text: str) -> Sequence[LanguageToolMatch]:
        """The matches LanguageTool finds in ``text``."""
        ...


@dataclass(frozen=True, slots=True)
class LanguageToolInstall:
    """A local LanguageTool: its server jar, its version and the java that runs it."""

    jar: Path
    version: str
    java: Path


@dataclass(frozen=True, slots=True)
class _Match:
    """A backend's match in the report vocabulary, offsets in code points of the checked text."""

    start: int
    end: int
    rule: str
    category: str
    severity: Severity
    message: str
    suggestions: tuple[str, ...]
    misspelling: bool = False


class _TextTooLong(Exception):
    """The server refused a request as too long and said its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"text longer than {limit} characters")
        self.limit = limit


# --- offsets and chunks ---------------------------------------------------------------------


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _utf16_advance(text: str, start: int, units: int) -> int:
    """The code-point index ``units`` UTF-16 units after code-point index ``start``."""
    i = start
    while units > 0 and i < len(text):
        units -= 2 if ord(text[i]) > 0xFFFF else 1
        i += 1
    return i


@dataclass(frozen=True, slots=True)
class _Chunk:
    """Text sent in one request: pieces of ``doc.mt`` joined by blank lines."""

    text: str
    starts: tuple[int, ...]  # where each piece starts in ``text``
    ends: tuple[int, ...]
    doc_starts: tuple[int, ...]  # where each piece starts in ``doc.mt``

    def to_doc(self, start: int, end: int) -> tuple[int, int] | None:
        """Map a span of ``text`` to ``doc.mt``; None when it starts in a separator."""
        i = bisect.bisect_right(self.starts, start) - 1
        if i < 0 or start >= self.ends[i]:
            return None
        shift = self.doc_starts[i] - self.starts[i]
        return start + shift, min(end, self.ends[i]) + shift


_SEP = "\n\n"
#: longer runs of non-space characters are not words (base64 blobs, URLs, rows of dots); the
#: backend sees spaces in their place, and a match touching one is dropped (``_long_tokens``)
MAX_TOKEN_CHARS = 40
_LONG_TOKEN = re.compile(rf"\S{{{MAX_TOKEN_CHARS + 1},}}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _mask_long_tokens(text: str) -> str:
    """``text`` with long runs of non-space characters blanked and lone surrogates as U+FFFD.

    NOTE: Harper's spelling suggestions cost time and memory quadratic in a word's length: a
    20,000-character base64 blob took 79 s and 19.4 GB, a 150,000-character word aborted the
    process (issue 15). Same-length spaces keep every offset.
    """
    text = _LONG_TOKEN.sub(lambda m: " " * len(m.group()), text)
    # a lone surrogate (a JSON "\\ud800" becomes one) cannot cross into Rust or onto the wire
    return _SURROGATE.sub("\ufffd", text)


def _long_tokens(text: str) -> tuple[tuple[int, int], ...]:
    """``[start, end)`` of every run ``_mask_long_tokens`` blanks, in order."""
    return tuple(m.span() for m in _LONG_TOKEN.finditer(text))


def _windows(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """Cut ``text[start:end]`` into spans of at most ``limit`` UTF-16 units, at spaces if any."""
    out = []
    while start < end:
        cut = min(end, start + max(1, limit // 2))  # a code point is at most 2 units
        if cut < end:
            space = text.rfind(" ", start + (cut - start) // 2, cut)
            cut = space + 1 if space > start else cut
        out.append((start, cut))
        start = cut
    return out


def _chunks(seg: SegmentedDocument, limit: int | None) -> list[_Chunk]:
    """The body text of ``seg`` in requests of at most ``limit`` UTF-16 units.

    Paragraphs with at least one body sentence are packed whole; a paragraph over the limit is
    split into sentences, and a sentence over it at spaces.
    """
    mt = seg.doc.mt
    body_paragraphs = sorted({s.paragraph for s in seg.body})
    by_paragraph: dict[int, list[Sentence]] = {}
    for s in seg.sentences:
        by_paragraph.setdefault(s.paragraph, []).append(s)
    pieces: list[tuple[int, int]] = []
    for p in body_paragraphs:
        ps, pe = seg.paragraphs[p]
        if limit is None or _utf16_len(mt[ps:pe]) <= limit:
            pieces.append((ps, pe))
            continue
        for s in by_paragraph[p]:
            if _utf16_len(mt[s.start:s.end]) <= limit:
                pieces.append((s.start, s.end))
            else:
                pieces.extend(_windows(mt, s.start, s.end, limit))
    chunks: list[_Chunk] = []
    group: list[tuple[int, int]] = []
    size = 0
    for ps, pe in pieces:
        n = _utf16_len(mt[ps:pe])
        if group and limit is not None and size + len(_SEP) + n > limit:
            chunks.append(_make_chunk(mt, group))
            group, size = [], 0
        size += n + (len(_SEP) if group else 0)
        group.append((ps, pe))
    if group:
        chunks.append(_make_chunk(mt, group))
    return chunks


def _make_chunk(mt: str, group: Sequence[tuple[int, int]]) -> _Chunk:
    starts: list[int] = []
    ends: list[int] = []
    parts: list[str] = []
    pos = 0
    for ps, pe in group:
        if parts:
            pos += len(_SEP)
        starts.append(pos)
        pos += pe - ps
        ends.append(pos)
        parts.append(_mask_long_tokens(mt[ps:pe]))
    return _Chunk(_SEP.join(parts), tuple(starts), tuple(ends), tuple(s for s, _ in group))


# --- backends -------------------------------------------------------------------------------


def _dist_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


class _HarperBackend:
    """Harper in-process; the linter is built on first use (about a second) and reused."""

    name = "harper"
    # NOTE: Harper takes any length, but its time per character grows with the request: 200 KB
    # of seed text took 2.8 s in one request and 1.5 s in 20,000-character ones, same 1,040 lints
    max_chars: int | None = 20_000

    def __init__(self, language: str, enabled: frozenset[str], disabled: frozenset[str]) -> None:
        dialect = _HARPER_DIALECTS.get(language)
        if dialect is None:
            err = (f"Harper checks English only ({', '.join(_HARPER_DIALECTS)}), not {language!r}; "
                   "use a LanguageTool server for other languages")
            raise CheckerUnavailable("grammar", err)
        self._dialect = dialect
        self._enabled = enabled
        self._disabled = disabled
        self._linter: harper.Linter | None = None
        self.version = _dist_version("harper-py")
        self.where = "embedded"

    def _get_linter(self) -> harper.Linter:
        if self._linter is None:
            import harper

            t0 = time.perf_counter()
            linter = harper.Linter(harper.Dialect[self._dialect])
            config: dict[str, bool | None] = {}
            for rule in linter.get_default_lint_config():
                if rule in self._disabled:
                    config[rule] = False
                elif rule in self._enabled:
                    config[rule] = True
                elif rule in DEFAULT_DISABLED_RULES:
                    config[rule] = False
            linter.set_lint_config(config)
            self._linter = linter
            logger.debug("built the Harper linter in %.2fs", time.perf_counter() - t0)
        return self._linter

    def start(self) -> None:
        """Build the linter if it is not built yet."""
        self._get_linter()

    def check(self, text: str) -> list[_Match]:
        """Harper's lints on ``text`` (plain text, not Markdown)."""
        from harper import SuggestionKind

        out = []
        for rule, lints in self._get_linter().organized_lints(text, language="plaintext").items():
            for lint in lints:
                category, severity = _RULE_CATEGORY.get(rule) or _HARPER_KIND.get(
                    lint.lint_kind, ("grammar", _MINOR))
                suggestions = []
                for s in lint.suggestions[:5]:
                    if s.kind == SuggestionKind.REMOVE:
                        suggestions.append("")
                    elif s.kind == SuggestionKind.INSERT_AFTER:
                        suggestions.append(lint.problem_text + s.replacement_text)
                    else:
                        suggestions.append(s.replacement_text)
                out.append(_Match(lint.span.start, lint.span.end, rule, category, severity,
                                  lint.message, tuple(suggestions), misspelling=rule == "SpellCheck"))
        return out

    def close(self) -> None:
        self._linter = None


def _http_get(url: str, timeout: float) -> str:
    """GET ``url`` and return the body (stdlib, so that probing needs no extra package)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only
        body: bytes = resp.read()
    return body.decode("utf-8")


def _base_url(url: str) -> str:
    """``host:8081``, ``http://host:8081/v2/`` → ``http://host:8081/`` (language_tool_python adds v2/)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    if url.endswith("/v2"):
        url = url[: -len("/v2")]
    return url + "/"


def _probe(base: str, timeout: float) -> None:
    """Raise OSError or ValueError unless ``base`` answers LanguageTool's ``/v2/languages``."""
    languages = json.loads(_http_get(base + "v2/languages", timeout))
    if not isinstance(languages, list):
        err = f"{base}v2/languages did not return a list of languages"
        raise ValueError(err)


class _LocalServer:
    """A LanguageTool HTTP server on 127.0.0.1, started from a local jar, shared per process."""

    # NOTE: process-wide on purpose (as language_tool_python's RUNNING_SERVER_PROCESSES): starting
    # a JVM takes seconds and a few hundred MB, so every checker of the process shares one.
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _running: ClassVar[dict[Path, _LocalServer]] = {}
    _atexit_registered: ClassVar[bool] = False

    def __init__(self, install: LanguageToolInstall, proc: subprocess.Popen[bytes],
                 url: str, log: IO[bytes]) -> None:
        self.install = install
        self.url = url
        self._proc = proc
        self._log = log
        self._users = 0

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._proc.pid

    @classmethod
    def acquire(cls, install: LanguageToolInstall, timeout: float) -> _LocalServer:
        """The running server for ``install``, started if there is none."""
        with cls._lock:
            server = cls._running.get(install.jar)
            if server is None or server._proc.poll() is not None:
                server = cls._start(install, timeout)
                cls._running[install.jar] = server
                if not cls._atexit_registered:
                    atexit.register(cls.stop_all)
                    cls._atexit_registered = True
            server._users += 1
            return server

    def release(self) -> None:
        """Stop the server once its last user has released it."""
        with self._lock:
            self._users -= 1
            if self._users <= 0:
                self._stop()

    @classmethod
    def stop_all(cls) -> None:
        """Stop every server this process started (registered with atexit)."""
        with cls._lock:
            for server in list(cls._running.values()):
                server._stop()

    def _stop(self) -> None:
        if self._running.get(self.install.jar) is self:
            del self._running[self.install.jar]
        if self._proc.poll() is None:
            logger.info("stopping the LanguageTool server at %s", self.url)
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._log.close()

    @classmethod
    def _start(cls, install: LanguageToolInstall, timeout: float) -> _LocalServer:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [str(install.java), "-cp", str(install.jar), "org.languagetool.server.HTTPServer",
               "--port", str(port)]
        log = tempfile.TemporaryFile()
        logger.info("starting LanguageTool %s on port %d: %s", install.version, port, " ".join(cmd))
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,  # noqa: S603
                                stderr=subprocess.STDOUT)
        server = cls(install, proc, f"http://127.0.0.1:{port}/", log)
        t0 = time.monotonic()
        while True:
            code = proc.poll()
            if code is not None:
                log.seek(0)
                tail = log.read()[-500:].decode("utf-8", "replace").strip()
                log.close()
                err = (f"the LanguageTool server ({install.jar}) exited with code {code} "
                       f"before answering: {tail or 'no output'}")
                raise CheckerUnavailable("grammar", err)
            try:
                _probe(server.url, timeout=2.0)
                logger.info("LanguageTool answered after %.1fs", time.monotonic() - t0)
                return server
            except (OSError, ValueError):
                pass
            if time.monotonic() - t0 > timeout:
                server._stop()
                err = (f"the LanguageTool server ({install.jar}) did not answer within "
                       f"{timeout:.0f}s; raise GrammarChecker.SERVER_START_TIMEOUT_S on slow machines")
                raise CheckerUnavailable("grammar", err)
            time.sleep(0.25)


def locate_languagetool(jar_dir: str | Path | None = None) -> LanguageToolInstall:
    """Find a local LanguageTool and java without downloading anything.

    Looks in ``jar_dir`` when given, else in language_tool_python's download cache (``LTP_PATH``,
    default ``~/.cache/language_tool_python``), newest version first.

    Raises:
        CheckerUnavailable: no install, or no ``java`` on PATH; the reason says which.
    """
    jar: Path | None = None
    version = "unknown"
    if jar_dir is not None:
        where = Path(jar_dir)
        jar = next((where / n for n in _JAR_NAMES if (where / n).is_file()), None)
        m = re.search(r"LanguageTool-(.+)", where.name)
        version = m.group(1) if m else version
    else:
        from language_tool_python.download_lt import LocalLanguageTool
        from language_tool_python.utils import get_language_tool_download_path

        where = get_language_tool_download_path()
        try:
            installed = sorted(LocalLanguageTool.get_installed_versions(), reverse=True)
        except TypeError:  # a mix of releases and snapshots that do not compare
            installed = LocalLanguageTool.get_installed_versions()
        for lt in installed:
            try:
                jar = lt.get_jar_path()
            except FileNotFoundError:
                continue
            version = lt.version_name
            break
    if jar is None:
        err = (f"no LanguageTool server URL given and no local LanguageTool install found in {where} "
               "(set MTQA_LANGUAGETOOL_URL, or LTP_PATH / LTP_JAR_DIR_PATH to an unpacked "
               "LanguageTool)")
        raise CheckerUnavailable(_SKIP_NAME, err)
    java = shutil.which("java")
    if java is None:
        err = f"LanguageTool {version} found at {jar}, but no java on PATH (it needs Java 17+)"
        raise CheckerUnavailable(_SKIP_NAME, err)
    return LanguageToolInstall(jar=jar, version=version, java=Path(java))


class _LanguageToolBackend:
    """LanguageTool on a remote server, a local server started on first use, or a given client."""

    name = "languagetool"

    def __init__(self, language: str, enabled: frozenset[str], disabled: frozenset[str], *,
                 url: str | None = None, install: LanguageToolInstall | None = None,
                 client: LanguageToolClient | None = None, max_chars: int,
                 start_timeout: float) -> None:
        self.language = language
        self._enabled = enabled
        self._disabled = disabled
        self._url = url
        self._install = install
        self._client = client
        self._owned: language_tool_python.LanguageTool | None = None
        self._server: _LocalServer | None = None
        self._start_timeout = start_timeout
        self.max_chars: int | None = max_chars
        self.where = "injected" if client is not None else "remote" if url else "local"
        self.version = install.version if install is not None else "unknown"

    def _get_client(self) -> LanguageToolClient:
        if self._client is not None:
            return self._client
        import language_tool_python

        if self._install is not None:
            self._server = _LocalServer.acquire(self._install, self._start_timeout)
            base = self._server.url
        else:
            assert self._url is not None  # noqa: S101 - set by the constructor when no install
            base = self._url
        try:
            client = language_tool_python.LanguageTool(self.language, remote_server=base)
        except ValueError as exc:
            self.close()
            err = f"LanguageTool at {base} does not support language {self.language!r}: {exc}"
            raise ConfigError(err) from exc
        except language_tool_python.exceptions.LanguageToolError as exc:
            self.close()
            err = f"LanguageTool at {base} failed: {exc}"
            raise CheckerUnavailable("grammar", err) from exc
        client.disabled_rules = set(self._disabled)
        client.enabled_rules = set(self._enabled)
        self._owned = client
        self._client = client
        # NOTE: /v2/maxtextlength and /v2/info are optional (older servers, proxies); the
        # default limit stands and a refusal is handled in check().
        try:
            server_max = int(_http_get(base + "v2/maxtextlength", 5.0).strip())
            self.max_chars = min(self.max_chars or server_max, server_max)
        except (OSError, ValueError):
            logger.debug("%s has no /v2/maxtextlength; keeping %s", base, self.max_chars)
        if self.version == "unknown":
            try:
                self.version = str(json.loads(_http_get(base + "v2/info", 5.0))["software"]["version"])
            except (OSError, ValueError, KeyError, TypeError):
                logger.debug("%s has no /v2/info", base)
        return client

    def start(self) -> None:
        """Build the client (and start the local server) if not done yet."""
        self._get_client()

    def check(self, text: str) -> list[_Match]:
        """LanguageTool's matches on ``text`` (at most ``max_chars`` UTF-16 units).

        Raises:
            _TextTooLong: the server refused the text and said its limit.
            CheckerUnavailable: the server failed.
        """
        client = self._get_client()
        from language_tool_python.exceptions import LanguageToolError

        try:
            matches = client.check(text)
        except LanguageToolError as exc:
            limit = _TOO_LONG.search(str(exc))
            if limit:
                raise _TextTooLong(int(limit.group(1))) from exc
            err = f"LanguageTool ({self.where}) failed on a {len(text)}-character request: {exc}"
            raise CheckerUnavailable("grammar", err) from exc
        out = []
        for m in matches:
            start = m.offset
            end = _utf16_advance(text, start, m.error_length)
            category, severity = _RULE_CATEGORY.get(m.rule_id) or _LT_CATEGORY.get(
                m.category) or _LT_ISSUE_TYPE.get(m.rule_issue_type, ("grammar", _MINOR))
            out.append(_Match(start, end, m.rule_id, category, severity, m.message,
                              tuple(m.replacements[:5]),
                              misspelling=m.rule_issue_type == "misspelling"))
        return out

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None
            self._client = None
        if self._server is not None:
            self._server.release()
            self._server = None


_Backend = _HarperBackend | _LanguageToolBackend


# --- news-aware filtering -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _DocContext:
    """What filtering needs to know about one document."""

    mt: str
    body: tuple[tuple[int, int], ...]  # body sentence spans, sorted
    sentence_starts: frozenset[int]  # first letter of every sentence
    paragraph_starts: frozenset[int]
    ref_words: frozenset[str]  # casefolded words of the references
    word_counts: Mapping[str, int]  # how often each maximal ``\w+`` run occurs in ``mt``
    long_tokens: tuple[tuple[int, int], ...]  # what the backend did not see (``_long_tokens``)

    @classmethod
    def of(cls, seg: SegmentedDocument) -> _DocContext:
        mt = seg.doc.mt
        starts = set()
        for s in seg.sentences:
            text = mt[s.start:s.end]
            starts.add(s.start + len(text) - len(text.lstrip(_LEAD)))
        ref_words = frozenset(w.casefold() for r in seg.doc.ref for w in _LETTERS.findall(r))
        return cls(mt=mt, body=tuple((s.start, s.end) for s in seg.body),
                   sentence_starts=frozenset(starts),
                   paragraph_starts=frozenset(p for p, _ in seg.paragraphs), ref_words=ref_words,
                   word_counts=Counter(_WORD_RUN.findall(mt)), long_tokens=_long_tokens(mt))

    def in_body(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` overlaps a body sentence."""
        i = bisect.bisect_left(self.body, (end,))  # body sentences that start before ``end``
        return i > 0 and self.body[i - 1][1] > start

    def touches_long_token(self, start: int, end: int) -> bool:
        """Whether ``[start, end]`` overlaps or touches a token the backend saw as spaces."""
        i = bisect.bisect_right(self.long_tokens, (end, sys.maxsize))
        return i > 0 and self.long_tokens[i - 1][1] >= start

    def occurrences(self, word: str) -> int:
        """How often ``word`` occurs in ``mt`` with no word character on either side."""
        if _WORD_RUN.fullmatch(word):
            return self.word_counts.get(word, 0)
        return len(re.findall(rf"(?<!\w){re.escape(word)}(?!\w)", self.mt))


def _zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return float(zipf_frequency(word, "en"))


def _spelling_confidence(ctx: _DocContext, start: int, end: int) -> float | None:
    """The confidence of a misspelling at ``[start, end)``, or None when it is a name or term.

    A word is not a misspelling when the reference uses it, when the document writes it the same
    way twice, or (capitalised mid-sentence) when wordfreq knows it. Other capitalised or quoted
    unknown words keep a low confidence: most are names.
    """
    word = ctx.mt[start:end]
    parts = _LETTERS.findall(word)
    if parts and all(p.casefold() in ctx.ref_words for p in parts):
        return None
    # NOTE: a word the spell checker does not know but the document writes the same way twice is
    # a name or a term ("sustainment" in the Hill seed); machine translation does not repeat typos.
    if ctx.occurrences(word) >= 2:
        return None
    capital = word[:1].isupper()
    quoted = start > 0 and ctx.mt[start - 1] in _OPEN_QUOTES and (
        start < 2 or not ctx.mt[start - 2].isalnum())
    if capital and start not in ctx.sentence_starts:
        return None if _zipf(word) >= _NAME_ZIPF else _NAME_CONFIDENCE
    return _NAME_CONFIDENCE if quoted else _CONFIDENCE["spelling"]


def _broken_join(ctx: _DocContext, start: int) -> bool:
    """Whether the lowercase sentence start at ``start`` follows a full stop in the same paragraph."""
    if start in ctx.paragraph_starts:
        return False
    # NOTE: scan back from ``start`` rather than strip ``mt[:start]``: a copy of the text before
    # every match was quadratic on long documents
    mt, i = ctx.mt, start
    while i > 0 and mt[i - 1] in " \t\"'”’»)]":
        i -= 1
    return i > 0 and mt[i - 1] in ".!?" and "\n" not in mt[i:start]


# --- the checker ----------------------------------------------------------------------------


class GrammarChecker(BaseChecker):
    """Grammar, spelling, punctuation and style findings from LanguageTool or Harper.

    ``sentence_scores`` are MQM-style penalties (minor 1, major 5, each times its confidence; 0 is
    clean, higher is worse; None for boilerplate). ``doc_score`` is that penalty per 100 body words.
    ``features`` hold finding counts per 100 body words by category and severity.

    Args:
        backend: ``"auto"``, ``"languagetool"`` or ``"harper"``.
        language: a LanguageTool language code; Harper takes ``en``, ``en-US``, ``en-GB``,
            ``en-AU``, ``en-CA`` and ``en-IN``.
        languagetool_url: a LanguageTool server (``http://host:8081``); takes precedence over a
            local install.
        languagetool_jar_dir: a directory holding ``languagetool-server.jar`` (what
            ``LTP_JAR_DIR_PATH`` names); else language_tool_python's download cache is searched.
        enabled_rules: rule ids to turn on, including ones off by default (typography,
            ``DEFAULT_DISABLED_RULES``). Harper's and LanguageTool's ids can be mixed.
        disabled_rules: rule ids to turn off; this wins over ``enabled_rules``.
        client: a LanguageTool client to use instead of building one (tests, custom transports).

    Raises:
        CheckerUnavailable: ``backend="languagetool"`` with no reachable server or install, or a
            language Harper cannot check with no LanguageTool.
        ConfigError: an unknown backend.
    """

    name: ClassVar[str] = "grammar"
    BACKENDS: ClassVar[tuple[str, ...]] = ("auto", "languagetool", "harper")
    DEFAULT_BACKEND: ClassVar[str] = "auto"
    DEFAULT_LANGUAGE: ClassVar[str] = "en-US"
    MAX_REQUEST_CHARS: ClassVar[int] = 20_000  # UTF-16 units; the public API's limit
    PROBE_TIMEOUT_S: ClassVar[float] = 5.0
    SERVER_START_TIMEOUT_S: ClassVar[float] = 180.0  # a JVM on two busy cores is slow to start

    @classmethod
    def from_settings(cls, settings: Settings, *, models: ModelPool) -> Self:
        """The checker ``settings`` describe (it reads no model of the pool)."""
        return cls(backend=settings.grammar_backend, language=settings.language,
                   languagetool_url=settings.languagetool_url,
                   languagetool_jar_dir=settings.languagetool_jar_dir,
                   enabled_rules=settings.enabled_rules, disabled_rules=settings.disabled_rules)

    def __init__(
        self,
        *,
        backend: str = DEFAULT_BACKEND,
        language: str = DEFAULT_LANGUAGE,
        languagetool_url: str | None = None,
        languagetool_jar_dir: str | Path | None = None,
        enabled_rules: Iterable[str] = (),
        disabled_rules: Iterable[str] = (),
        client: LanguageToolClient | None = None,
    ) -> None:
        if backend not in self.BACKENDS:
            err = f"unknown grammar backend {backend!r}; choose one of {', '.join(self.BACKENDS)}"
            raise ConfigError(err)
        if backend == "harper" and client is not None:
            err = "a LanguageTool client was given with backend='harper'; use 'languagetool' or 'auto'"
            raise ConfigError(err)
        self.language = language
        self.disabled_rules = frozenset(disabled_rules)
        self.enabled_rules = frozenset(enabled_rules) - self.disabled_rules
        self._requested = backend
        self._lt_reason: str | None = None
        self._backend: _Backend = self._choose(backend, languagetool_url, languagetool_jar_dir, client)
        self._closed = False

    def _choose(self, backend: str, url: str | None, jar_dir: str | Path | None,
                client: LanguageToolClient | None) -> _Backend:
        if client is not None:
            return self._languagetool(client=client)
        if backend == "harper":
            self._lt_reason = "backend 'harper' was requested"
            return _HarperBackend(self.language, self.enabled_rules, self.disabled_rules)
        try:
            if url:
                base = _base_url(url)
                try:
                    _probe(base, self.PROBE_TIMEOUT_S)
                except (OSError, ValueError) as exc:
                    err = f"the LanguageTool server at {base} is not reachable: {exc}"
                    raise CheckerUnavailable(_SKIP_NAME, err) from exc
                return self._languagetool(url=base)
            return self._languagetool(install=locate_languagetool(jar_dir))
        except CheckerUnavailable as exc:
            if backend == "languagetool":
                raise CheckerUnavailable("grammar", exc.reason) from exc
            self._lt_reason = exc.reason
            logger.info("grammar: using Harper: %s", exc.reason)
        return _HarperBackend(self.language, self.enabled_rules, self.disabled_rules)

    def _languagetool(self, *, url: str | None = None, install: LanguageToolInstall | None = None,
                      client: LanguageToolClient | None = None) -> _LanguageToolBackend:
        return _LanguageToolBackend(
            self.language, self.enabled_rules, self.disabled_rules, url=url, install=install,
            client=client, max_chars=self.MAX_REQUEST_CHARS,
            start_timeout=self.SERVER_START_TIMEOUT_S)

    @property
    def backend(self) -> str:
        """The backend that runs: ``"languagetool"`` or ``"harper"``."""
        return self._backend.name

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """Why LanguageTool is not used, for the report's ``skipped`` list (empty when it is)."""
        if self._lt_reason is None:
            return ()
        return (Skipped(checker=_SKIP_NAME, reason=self._lt_reason),)

    @property
    def signature(self) -> str:
        """Backend, its version, where it runs, language and rule changes, as ``key:value|...``."""
        b = self._backend
        rules = ",".join([f"+{r}" for r in sorted(self.enabled_rules)]
                         + [f"-{r}" for r in sorted(self.disabled_rules)]) or "default"
        return (f"grammar|backend:{b.name}|version:{b.version}|server:{b.where}"
                f"|lang:{self.language}|rules:{rules}|mtqa:{__version__}")

    def check(self, docs: Sequence[SegmentedDocument]) -> list[CheckResult]:
        """Check a batch; one CheckResult per document, in input order."""
        t0 = time.perf_counter()
        results = [self._check_one(seg) for seg in docs]
        logger.debug("grammar (%s) checked %d documents in %.2fs", self.backend, len(docs),
                     time.perf_counter() - t0)
        return results

    def _backend_matches(self, seg: SegmentedDocument) -> list[tuple[_Match, tuple[int, int]]]:
        """Every backend match on the body of ``seg``, with its span in ``doc.mt``."""
        while True:
            out = []
            try:
                self._backend.start()  # a server's size limit is known once its client is built
                for chunk in _chunks(seg, self._backend.max_chars):
                    for m in self._backend.check(chunk.text):
                        span = chunk.to_doc(m.start, m.end)
                        if span is not None and span[0] < span[1]:
                            out.append((m, span))
                return out
            except _TextTooLong as exc:
                limit = exc.limit
                if self._backend.max_chars is not None and limit >= self._backend.max_chars:
                    err = f"LanguageTool refused a request within its own limit ({limit} characters)"
                    raise CheckerUnavailable("grammar", err) from exc
                logger.info("LanguageTool allows %d characters per request; re-chunking", limit)
                self._backend.max_chars = limit
            except CheckerUnavailable as exc:
                # A local server that cannot start: in auto mode, fall back to Harper for the run.
                local = isinstance(self._backend, _LanguageToolBackend) and self._backend.where == "local"
                if self._requested != "auto" or not local:
                    raise
                logger.warning("grammar: LanguageTool failed, using Harper: %s", exc.reason)
                self._backend.close()
                self._lt_reason = exc.reason
                self._backend = _HarperBackend(self.language, self.enabled_rules, self.disabled_rules)

    def _is_on(self, rule: str, category: str) -> bool:
        if rule in self.disabled_rules:
            return False
        if rule in self.enabled_rules:
            return True
        return category != "typography" and rule not in DEFAULT_DISABLED_RULES

    def _check_one(self, seg: SegmentedDocument) -> CheckResult:
        ctx = _DocContext.of(seg)
        found: dict[tuple[int, int, str], Finding] = {}
        for m, (start, end) in self._backend_matches(seg):
            if not self._is_on(m.rule, m.category) or not ctx.in_body(start, end):
                continue
            if ctx.long_tokens and ctx.touches_long_token(start, end):
                continue
            confidence = _CONFIDENCE.get(m.category, 0.5)
            if m.misspelling:
                name_checked = _spelling_confidence(ctx, start, end)
                if name_checked is None:
                    continue
                confidence = name_checked
            severity = m.severity
            if m.rule in _SENTENCE_START_RULES and _broken_join(ctx, start):
                severity = _MAJOR
            found[(start, end, m.rule)] = Finding(
                start=start, end=end, category=m.category, severity=severity, checker=self.name,
                message=m.message, confidence=confidence, rule=m.rule, suggestions=m.suggestions)
        findings = tuple(sorted(found.values(), key=lambda f: (f.start, f.end, f.rule or "")))
        return self._result(seg, findings)

    def _result(self, seg: SegmentedDocument, findings: tuple[Finding, ...]) -> CheckResult:
        mt = seg.doc.mt
        starts = [s.start for s in seg.sentences]
        penalty = [0.0] * len(seg.sentences)
        for f in findings:
            i = max(0, bisect.bisect_right(starts, f.start) - 1)
            penalty[i] += _WEIGHT[f.severity] * f.confidence
        scores = tuple(p if s.kind is Kind.BODY else None for s, p in zip(seg.sentences, penalty))
        words = sum(len(_WORD.findall(mt[s.start:s.end])) for s in seg.body)
        per100 = 100.0 / max(words, 1)
        features = {"body_words": float(words), "findings_per_100w": len(findings) * per100}
        for cat in CATEGORIES:
            features[f"{cat}_per_100w"] = sum(f.category == cat for f in findings) * per100
        for sev in (_MINOR, _MAJOR):
            features[f"{sev.value}_per_100w"] = sum(f.severity is sev for f in findings) * per100
        total = sum(p for p in scores if p is not None)
        features["penalty_per_100w"] = total * per100
        return CheckResult(checker=self.name, doc_id=seg.doc.id, signature=self.signature,
                           findings=findings, sentence_scores=scores,
                           doc_score=total * per100, features=MappingProxyType(features))

    def close(self) -> None:
        """Release the backend (and the shared local server, when this was its last user)."""
        if not self._closed:
            self._closed = True
            self._backend.close()
