"""The named gate policies a server offers: the default one and each TOML file of --policy-dir."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mtqa.errors import ConfigError
from mtqa.gate import Policy, load_policy

__all__ = ["DEFAULT", "NamedPolicy", "load_policies"]

#: the name under which the server's own policy (--policy, or the shipped one) is offered
DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class NamedPolicy:
    """A policy, the name a request uses for it and the sha256 of its file."""

    name: str
    policy: Policy
    sha256: str


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_policies(default: Policy, default_path: Path | None,
                  policy_dir: Path | None) -> dict[str, NamedPolicy]:
    """``{name: NamedPolicy}``: ``default`` plus every ``*.toml`` of ``policy_dir`` by file stem.

    Raises:
        ConfigError: the directory or one of its policies cannot be read.
    """
    if default_path is None:
        data = resources.files("mtqa").joinpath("data/default_policy.toml").read_bytes()
    else:
        try:
            data = default_path.read_bytes()
        except OSError as exc:
            err = f"{default_path}: cannot read the policy file: {exc}"
            raise ConfigError(err) from exc
    out = {DEFAULT: NamedPolicy(DEFAULT, default, _sha(data))}
    if policy_dir is None:
        return out
    if not policy_dir.is_dir():
        err = f"{policy_dir}: --policy-dir must be a directory of TOML policy files"
        raise ConfigError(err)
    for path in sorted(policy_dir.glob("*.toml")):
        try:
            data = path.read_bytes()
        except OSError as exc:
            err = f"{path}: cannot read the policy file: {exc}"
            raise ConfigError(err) from exc
        out[path.stem] = NamedPolicy(path.stem, load_policy(path), _sha(data))
    return out
