"""The publish gate: a TOML policy of thresholds, and ``decide`` that explains every failure."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

from mtqa.errors import ConfigError
from mtqa.aggregate import count_words
from mtqa.types import DocumentReport, Kind, Reason, Severity, Verdict

__all__ = ["POLICY_SCHEMA", "Policy", "decide", "load_policy"]

POLICY_SCHEMA = "mtqa.policy/1"


@dataclass(frozen=True, slots=True)
class Policy:
    """Thresholds a document must meet to be published; ``None`` turns a rule off."""

    name: str = "default"
    min_score: float | None = None
    min_fluency: float | None = None
    max_major_per_100_words: float | None = None
    max_critical: int | None = None
    blocking_categories: tuple[str, ...] = ()
    min_ref_coverage: float | None = None
    min_chrf: float | None = None


def load_policy(path: Path | None = None) -> Policy:
    """Read a policy file; without a path, the default policy shipped with mtqa."""
    if path is None:
        text = resources.files("mtqa").joinpath("data/default_policy.toml").read_text("utf-8")
        where = "default policy"
    else:
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            err = f"{path}: cannot read the policy file: {exc}"
            raise ConfigError(err) from exc
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
    if "blocking_categories" in data:
        data["blocking_categories"] = tuple(data["blocking_categories"])
    for key, value in data.items():
        if key not in ("name", "blocking_categories") and not isinstance(value, int | float):
            err = f"{where}: {key} must be a number, not {value!r}"
            raise ConfigError(err)
    return Policy(**data)


def _words(report: DocumentReport) -> int:
    return count_words(report.mt, ((s.start, s.end) for s in report.sentences
                                   if s.kind is Kind.BODY))


def decide(report: DocumentReport, policy: Policy) -> Verdict:
    """Apply a policy to a report: passed, and a Reason for every rule broken."""
    reasons: list[Reason] = []
    if policy.min_score is not None and report.score < policy.min_score:
        reasons.append(Reason("min_score", round(report.score, 1), policy.min_score,
                              f"score {report.score:.1f} is below {policy.min_score:g}"))
    if (policy.min_fluency is not None and report.fluency is not None
            and report.fluency < policy.min_fluency):
        reasons.append(Reason("min_fluency", round(report.fluency, 1), policy.min_fluency,
                              f"fluency {report.fluency:.1f} is below {policy.min_fluency:g}"))
    serious = [i for i, s in enumerate(report.spans) if s.severity is not Severity.MINOR]
    if policy.max_major_per_100_words is not None and serious:
        rate = 100.0 * len(serious) / max(_words(report), 1)
        if rate > policy.max_major_per_100_words:
            reasons.append(Reason(
                "max_major_per_100_words", round(rate, 2), policy.max_major_per_100_words,
                f"{len(serious)} major/critical spans, {rate:.2f} per 100 words "
                f"(at most {policy.max_major_per_100_words:g})", tuple(serious)))
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
    return Verdict(passed=not reasons, reasons=tuple(reasons), policy=policy.name)
