"""The publish gate: a TOML policy of thresholds, and ``decide`` that explains every failure.

The gate fails closed: a document passes only when the checks the policy relies on ran on it and
it breaks no rule. A required checker that did not run, a checker that was asked for but could not
run (or failed on this document), and a body too short to judge each block, with the reason.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

from mtqa.aggregate import count_words
from mtqa.config import CHECKERS, read_config_text
from mtqa.errors import ConfigError
from mtqa.types import DocumentReport, Kind, Reason, Severity, Verdict

__all__ = [
    "KNOWN_CATEGORIES",
    "NO_REFERENCE",
    "POLICY_SCHEMA",
    "SKIP_FAILED",
    "SKIP_TURNED_OFF",
    "Policy",
    "decide",
    "load_policy",
]

POLICY_SCHEMA = "mtqa.policy/1"

#: every span category a checker reports: structure (structure, untranslated, mojibake), fluency
#: (garbled, unnatural-phrasing), grammar (``mtqa.checkers.grammar.CATEGORIES``), reference
#: (reference-mismatch, fact-mismatch) and the calibrated word model (mistranslation)
KNOWN_CATEGORIES: tuple[str, ...] = (
    "structure", "untranslated", "mojibake", "garbled", "unnatural-phrasing", "grammar",
    "spelling", "punctuation", "style", "typography", "reference-mismatch", "fact-mismatch",
    "mistranslation",
)
#: the ``Skipped.reason`` of a checker the settings turned off: the only skip that is a choice
SKIP_TURNED_OFF = "turned off in the settings"
#: the start of the ``Skipped.reason`` of a checker that raised on this document
SKIP_FAILED = "failed on this document"
#: why the reference checker did not run on a document that has no reference
NO_REFERENCE = "the document has no reference"


@dataclass(frozen=True, slots=True)
class Policy:
    """Thresholds a document must meet to be published; ``None`` (or empty) turns a rule off."""

    name: str = "default"
    min_score: float | None = None
    min_fluency: float | None = None
    max_major_per_100_words: float | None = None
    #: major/critical spans any document may have, however short, before the rate applies
    major_spans_allowed: int | None = None
    max_critical: int | None = None
    blocking_categories: tuple[str, ...] = ()
    min_ref_coverage: float | None = None
    min_chrf: float | None = None
    #: body words (outside boilerplate) a document needs for a verdict
    min_body_words: int | None = None
    #: a share of the words labelled boilerplate above this is a warning (it does not block)
    warn_boilerplate_share: float | None = None
    #: checkers that must have run on a document for it to pass
    required_checkers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)


def _number(lo: float, hi: float | None = None, *, integer: bool = False
            ) -> Callable[[str, object], str | None]:
    """A check: None when the value is a finite number in [lo, hi], else what it must be."""
    what = "a whole number" if integer else "a number"
    bound = f"from {lo:g} to {hi:g}" if hi is not None else f"of at least {lo:g}"

    def check(key: str, value: object) -> str | None:
        problem = f"{key} must be {what} {bound}, not {value!r}"
        # NOTE: bool is an int subclass: `max_critical = true` must not read as 1
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or (integer and not isinstance(value, int))):
            return problem
        in_range = math.isfinite(value) and value >= lo and (hi is None or value <= hi)
        return None if in_range else problem

    return check


def _names(known: tuple[str, ...]) -> Callable[[str, object], str | None]:
    def check(key: str, value: object) -> str | None:
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            return f"{key} must be a list of strings such as [{known[0]!r}], not {value!r}"
        unknown = [v for v in value if v not in known]
        if unknown:
            return f"{key}: unknown {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
        return None

    return check


def _name(key: str, value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return None
    return f"{key} must be a non-empty string, not {value!r}"


_CHECKS: Mapping[str, Callable[[str, object], str | None]] = {
    "name": _name,
    "min_score": _number(0, 100),
    "min_fluency": _number(0, 100),
    "max_major_per_100_words": _number(0),
    "major_spans_allowed": _number(0, integer=True),
    "max_critical": _number(0, integer=True),
    "blocking_categories": _names(KNOWN_CATEGORIES),
    "min_ref_coverage": _number(0, 1),
    "min_chrf": _number(0, 100),
    "min_body_words": _number(0, integer=True),
    "warn_boilerplate_share": _number(0, 1),
    "required_checkers": _names(CHECKERS),
}


def _validate(policy: Policy) -> None:
    for f in fields(policy):
        value = getattr(policy, f.name)
        if value is None and f.name != "name":
            continue
        problem = _CHECKS[f.name](f.name, value)
        if problem is not None:
            raise ConfigError(problem)


def load_policy(path: Path | None = None) -> Policy:
    """Read a policy file; without a path, the default policy shipped with mtqa.

    Raises:
        ConfigError: unreadable file, invalid TOML, unknown key or a value of the wrong type or
            range; the message names the file and the key.
    """
    if path is None:
        text = resources.files("mtqa").joinpath("data/default_policy.toml").read_text("utf-8")
        where = "default policy"
    else:
        where = str(path)
        text = read_config_text(path, "policy file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        err = f"{where}: invalid TOML: {exc}"
        raise ConfigError(err) from exc
    schema = data.pop("schema", POLICY_SCHEMA)
    if schema != POLICY_SCHEMA:
        err = f"{where}: policy schema {schema!r} is not {POLICY_SCHEMA!r}"
        raise ConfigError(err)
    known = {f.name for f in fields(Policy)}
    unknown = sorted(set(data) - known)
    if unknown:
        err = f"{where}: unknown policy key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        raise ConfigError(err)
    for key in ("blocking_categories", "required_checkers"):
        # NOTE: only a TOML list becomes a tuple: tuple("untranslated") would be its characters
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    try:
        return Policy(**data)
    except ConfigError as exc:
        err = f"{where}: {exc}"
        raise ConfigError(err) from exc


def _words(report: DocumentReport, kind: Kind = Kind.BODY) -> int:
    return count_words(report.mt, ((s.start, s.end) for s in report.sentences if s.kind is kind))


def _not_run(report: DocumentReport) -> dict[str, str]:
    """Each checker that did not run on this document, and why."""
    why = {s.checker: s.reason for s in report.skipped if s.checker in CHECKERS}
    if report.reference is None:
        why.setdefault("reference", NO_REFERENCE)
    return why


def _coverage(report: DocumentReport, policy: Policy) -> list[Reason]:
    """Fail closed: the checkers the policy relies on ran, and there was a body to check."""
    reasons: list[Reason] = []
    not_run = _not_run(report)
    for name in policy.required_checkers:
        if name in not_run:
            reasons.append(Reason(
                f"required_checker:{name}", "not run", "run",
                f"{name} did not run ({not_run[name]}); the policy requires it"))
    for name, why in not_run.items():
        if name in policy.required_checkers or why in (SKIP_TURNED_OFF, NO_REFERENCE):
            continue
        rule = "checker_failed" if why.startswith(SKIP_FAILED) else "checker_unavailable"
        reasons.append(Reason(
            f"{rule}:{name}", "not run", "run",
            f"{name} was asked for but did not run: {why}; not judged without it "
            f"(turn {name} off in the settings to judge without it)"))
    body = _words(report)
    too_short = policy.min_body_words is not None and body < policy.min_body_words
    if policy.min_body_words is not None and too_short:
        labels = sorted({s.why or "boilerplate" for s in report.sentences
                         if s.kind is Kind.BOILERPLATE})
        rest = (f"; the rest was labelled boilerplate ({', '.join(labels)}) and not checked"
                if labels else "")
        reasons.append(Reason(
            "min_body_words", body, policy.min_body_words,
            f"only {body} body word(s), at least {policy.min_body_words} needed{rest}"))
    boiler = _words(report, Kind.BOILERPLATE)
    share = boiler / (boiler + body) if boiler + body else 0.0
    if (policy.warn_boilerplate_share is not None and not too_short
            and share > policy.warn_boilerplate_share):
        reasons.append(Reason(
            "warn_boilerplate_share", round(share, 3), policy.warn_boilerplate_share,
            f"{share:.0%} of the words were labelled boilerplate and not checked "
            f"(a warning above {policy.warn_boilerplate_share:.0%})", blocking=False))
    return reasons


def decide(report: DocumentReport, policy: Policy) -> Verdict:
    """Apply a policy to a report: passed, and a Reason for every rule broken (or warned)."""
    reasons = _coverage(report, policy)
    if policy.min_score is not None and report.score < policy.min_score:
        reasons.append(Reason("min_score", round(report.score, 1), policy.min_score,
                              f"score {report.score:.1f} is below {policy.min_score:g}"))
    if (policy.min_fluency is not None and report.fluency is not None
            and report.fluency < policy.min_fluency):
        reasons.append(Reason("min_fluency", round(report.fluency, 1), policy.min_fluency,
                              f"fluency {report.fluency:.1f} is below {policy.min_fluency:g}"))
    serious = [i for i, s in enumerate(report.spans) if s.severity is not Severity.MINOR]
    allowed = policy.major_spans_allowed or 0
    if policy.max_major_per_100_words is not None and len(serious) > allowed:
        # NOTE: the rate alone would judge a 20-word sentence by one span (5 per 100 words);
        # up to major_spans_allowed spans never block, beyond them the rate decides
        rate = 100.0 * len(serious) / max(_words(report), 1)
        if rate > policy.max_major_per_100_words:
            also = f", and {allowed} in any document" if allowed else ""
            reasons.append(Reason(
                "max_major_per_100_words", round(rate, 2), policy.max_major_per_100_words,
                f"{len(serious)} major/critical spans, {rate:.2f} per 100 words "
                f"(at most {policy.max_major_per_100_words:g}{also})", tuple(serious)))
    critical = [i for i, s in enumerate(report.spans) if s.severity is Severity.CRITICAL]
    if policy.max_critical is not None and len(critical) > policy.max_critical:
        reasons.append(Reason("max_critical", len(critical), policy.max_critical,
                              f"{len(critical)} critical spans (at most {policy.max_critical})",
                              tuple(critical)))
    for cat in policy.blocking_categories:
        hits = [i for i, s in enumerate(report.spans) if s.category == cat]
        if hits:
            reasons.append(Reason(f"blocking_category:{cat}", len(hits), 0,
                                  f"{len(hits)} {cat} span(s); this category always blocks",
                                  tuple(hits)))
    ref = report.reference
    if ref is not None:
        if (policy.min_ref_coverage is not None and ref.mt_coverage is not None
                and ref.mt_coverage < policy.min_ref_coverage):
            reasons.append(Reason(
                "min_ref_coverage", round(ref.mt_coverage, 3), policy.min_ref_coverage,
                f"only {ref.mt_coverage:.0%} of body sentences are supported by the reference "
                f"(at least {policy.min_ref_coverage:.0%})"))
        chrf = next((m.score for m in ref.metrics if m.name.lower() == "chrf"), None)
        if policy.min_chrf is not None and chrf is not None and chrf < policy.min_chrf:
            reasons.append(Reason("min_chrf", round(chrf, 2), policy.min_chrf,
                                  f"chrF {chrf:.1f} is below {policy.min_chrf:g}"))
    return Verdict(passed=not any(r.blocking for r in reasons), reasons=tuple(reasons),
                   policy=policy.name)
