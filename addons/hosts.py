"""Pure host-name matching: which hosts get a token, and mitmproxy's allow_hosts regexes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


class HostPattern(NamedTuple):
    """A host pattern: an exact name, or ``*.suffix`` (one or more whole labels before suffix)."""

    suffix: str
    wildcard: bool

    def __str__(self) -> str:
        return f"*.{self.suffix}" if self.wildcard else self.suffix


def normalize_host(host: str) -> str:
    """Lower-case a host name and drop one trailing dot (``STORAGE.GOOGLEAPIS.COM.``)."""
    host = host.strip().lower()
    host = host.removesuffix(".")
    return host


def parse_host_pattern(text: str) -> HostPattern:
    """Parse ``*.googleapis.com`` or ``storage.googleapis.com``.

    Raises:
        ValueError: for anything that is not a wildcard over whole labels or an exact DNS name.
    """
    raw = text
    text = normalize_host(text)
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    labels = name.split(".")
    if not name or not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            f"invalid host pattern {raw!r}: use a DNS name such as storage.googleapis.com "
            "or a wildcard over whole labels such as *.googleapis.com"
        )
    if wildcard and len(labels) < 2:
        raise ValueError(f"invalid host pattern {raw!r}: a wildcard needs at least two labels after '*.'")
    return HostPattern(suffix=name, wildcard=wildcard)


def matches_host(host: str | None, pattern: HostPattern) -> bool:
    """True when ``host`` is the pattern's name (exact) or ends in ``.suffix`` on a label boundary."""
    if not host:
        return False
    host = normalize_host(host)
    if not pattern.wildcard:
        return host == pattern.suffix
    return host.endswith("." + pattern.suffix) and len(host) > len(pattern.suffix) + 1


def matches_any(host: str | None, patterns: Iterable[HostPattern]) -> bool:
    return any(matches_host(host, p) for p in patterns)


def allow_hosts_regex(pattern: HostPattern, except_names: Sequence[str] = ()) -> str:
    """An anchored regex over mitmproxy's ``host:port`` strings for ``allow_hosts``.

    mitmproxy tests these with ``re.search`` against ``host:port`` (any port), so anchor both ends.
    ``except_names``: exact names the regex must not match (tunnelled untouched, though the
    pattern covers them); compared case-insensitively, as the pattern is.
    """
    suffix = re.escape(pattern.suffix)
    prefix = r"(?:[^.:/\s]+\.)+" if pattern.wildcard else ""
    skip = ""
    if except_names:
        skip = "(?!(?i:" + "|".join(re.escape(n) for n in except_names) + r")\.?:\d+$)"
    return rf"^{skip}{prefix}{suffix}\.?:\d+$"


def specificity(pattern: HostPattern) -> tuple[int, int]:
    """Sort key: exact names beat wildcards, longer suffixes beat shorter ones."""
    return (0 if pattern.wildcard else 1, pattern.suffix.count(".") + 1)


def best_match[T](host: str | None, candidates: Iterable[tuple[HostPattern, T]]) -> T | None:
    """The value of the most specific pattern matching ``host``, or None."""
    matching = [(p, v) for p, v in candidates if matches_host(host, p)]
    if not matching:
        return None
    return max(matching, key=lambda pv: specificity(pv[0]))[1]
