"""``policy suggest``: a default-deny config drafted from an audit log, with the IAM permissions it needs.

Reading and generalising are pure (lines in, TOML text out), so tests feed the text straight back
through addons/policy_file.py. Generalisation stays close to what was seen:

- object names: objects under one top-level directory, two or more of them, become
  ``DIR/**`` where DIR is their longest common directory (``2024/a.txt``, ``2024/b.txt`` ->
  ``2024/**``); an object alone in its directory stays exact; a bucket's whole ``objects/**`` is
  never suggested;
- member names (buckets, instances, tables, ...): two or more siblings that differ only in their
  numbers (``logs-1``, ``logs-2``) become what they share before the first differing digit run,
  if it has a letter (``logs-*``; ``2024``, ``2025`` stay as they are); job and operation ids,
  made up anew on every call, become ``*`` under their project (and zone or region);
- calls whose API method is not recognised become host rules (with the HTTP methods seen), never
  guessed API methods.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from addons import hosts
from addons.policy_model import has_dot_segments
from proxy import iam_permissions

MIN_SHARED = 2  # resources that must share a prefix before it is generalised
SHOWN_PATHS = 10  # paths listed beside a host rule
_OBJECT = re.compile(r"^(projects/_/buckets/)([^/]+)/objects/(.+)$", re.DOTALL)
_DIGIT = re.compile(r"[0-9]")
_LETTER = re.compile(r"[A-Za-z]")
# Collections whose member names are generated per call: only their parent is worth pinning.
_EPHEMERAL = frozenset({"jobs", "operations"})
_HTTP_METHOD = re.compile(r"^[A-Z][A-Z-]*$")  # what a rule's methods may hold


@dataclass(frozen=True)
class Seen:
    """One kept audit record, as the proxy would decide it."""

    host: str
    method: str
    path: str
    api_method: str | None
    resource: str | None
    principal: str | None


@dataclass
class AuditRead:
    calls: list[Seen] = field(default_factory=list)
    malformed: int = 0
    denied: int = 0  # refused by the policy that was running: not suggested
    other_principals: int = 0
    not_injected: Counter[str] = field(default_factory=Counter)  # host -> calls without our credentials


def read_audit(lines: Iterable[str], principal: str | None = None) -> AuditRead:
    """The calls worth allowing: made with our credentials (auth "injected") or recognised."""
    out = AuditRead()
    for line in lines:
        if not line.strip():
            continue
        record = _parse(line)
        if record is None:
            out.malformed += 1
            continue
        api_method = record.get("api_method")
        if record.get("auth") == "denied":
            out.denied += 1
            continue
        if record.get("auth") != "injected" and not api_method:
            out.not_injected[record["host"]] += 1
            continue
        if principal is not None and record.get("principal") != principal:
            out.other_principals += 1
            continue
        path = record["path"]
        if has_dot_segments(path):  # the proxy will not recognise it either
            api_method = None
        out.calls.append(Seen(
            host=record["host"], method=record["method"].upper(), path=path, api_method=api_method or None,
            resource=(record.get("resource") or None) if api_method else None, principal=record.get("principal"),
        ))
    return out


def _parse(line: str) -> dict[str, str] | None:
    """A record with the string fields suggest needs, else None (malformed)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    for key in ("host", "method", "path"):
        if not isinstance(record.get(key), str) or not record[key]:
            return None
    for key in ("api_method", "resource", "principal", "auth"):
        if record.get(key) is not None and not isinstance(record[key], str):
            return None
    try:
        hosts.parse_host_pattern(record["host"])
        for value in record.values():
            if isinstance(value, str):
                value.encode("utf-8")  # lone surrogates cannot be written back out
    except (ValueError, UnicodeEncodeError):
        return None
    record["host"] = hosts.normalize_host(record["host"])
    return record


# -- generalising ----------------------------------------------------------------------------------

def _shape(name: str) -> str | None:
    """``logs-#`` for ``logs-1`` and ``logs-22``: names that differ only in their numbers share it."""
    return re.sub(r"[0-9]+", "#", name) if _DIGIT.search(name) else None


def stem_pattern(names: Sequence[str]) -> str | None:
    """``logs-*`` for ``logs-1``, ``logs-2``: what they share before a digit run, if it has a letter."""
    unique = sorted(set(names))
    if len(unique) < MIN_SHARED or len({_shape(n) for n in unique}) != 1 or _shape(unique[0]) is None:
        return None
    stem = os.path.commonprefix(unique).rstrip("0123456789")
    return f"{stem}*" if _LETTER.search(stem) else None


def _names_pattern(names: Iterable[str]) -> dict[str, str]:
    """Each name -> itself or the stem pattern it shares with at least one sibling."""
    by_shape: dict[str, list[str]] = defaultdict(list)
    out = {}
    for name in sorted(set(names)):
        shape = _shape(name)
        if shape is not None:
            by_shape[shape].append(name)
        out[name] = name
    for group in by_shape.values():
        pattern = stem_pattern(group)
        if pattern:
            out.update(dict.fromkeys(group, pattern))
    return out


def object_patterns(names: Iterable[str]) -> list[str]:
    """Object names (inside one bucket pattern) -> exact names and ``DIR/**`` patterns."""
    unique = sorted(set(names))
    by_top: dict[str, list[str]] = defaultdict(list)
    root: list[str] = []
    for name in unique:
        if "/" in name.rstrip("/"):
            by_top[name.split("/", 1)[0]].append(name)
        else:
            root.append(name)
    out: set[str] = set()
    for group in by_top.values():
        if len(group) < MIN_SHARED:
            out.update(group)
            continue
        dirs = [n.split("/")[:-1] for n in group]
        common: list[str] = []
        for segments in zip(*dirs):
            if len(set(segments)) != 1:
                break
            common.append(segments[0])
        out.add("/".join(common) + "/**")
    out.update(_names_pattern(root).values())
    return sorted(out)


def resource_patterns(resources: Iterable[str]) -> list[str]:
    """Seen resources -> the patterns a rule names: exact when few, generalised where they share."""
    objects: dict[tuple[str, str], list[str]] = defaultdict(list)
    others: list[str] = []
    for resource in set(resources):
        m = _OBJECT.match(resource)
        if m:
            objects[(m.group(1), m.group(2))].append(m.group(3))
        else:
            others.append(resource)
    out: set[str] = set(_member_patterns(others))
    buckets = _names_pattern(bucket for _, bucket in objects)
    merged: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (prefix, bucket), names in objects.items():
        merged[(prefix, buckets[bucket])].extend(names)
    for (prefix, bucket), names in merged.items():
        out.update(f"{prefix}{bucket}/objects/{p}" for p in object_patterns(names))
    return sorted(out)


def _member_patterns(resources: Iterable[str]) -> list[str]:
    """``projects/P/.../COLLECTION/NAME``: NAME generalised among siblings of one parent."""
    siblings: dict[str, list[str]] = defaultdict(list)
    out: set[str] = set()
    for resource in resources:
        segments = resource.split("/")
        if len(segments) < 4 or len(segments) % 2 or not all(segments):
            out.add(resource)  # a collection (a list call) or an odd shape: exact
            continue
        parent, name = "/".join(segments[:-1]), segments[-1]
        if segments[-2] in _EPHEMERAL:
            out.add(f"{parent}/*")
        else:
            siblings[parent].append(name)
    for parent, names in siblings.items():
        out.update(f"{parent}/{p}" for p in _names_pattern(names).values())
    return sorted(out)


# -- writing ---------------------------------------------------------------------------------------

def toml_string(text: str) -> str:
    """A TOML basic string (control characters escaped; TOML forbids them raw)."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _comment(text: str) -> str:
    return "# " + re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", "?", text)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _array(values: Sequence[str]) -> str:
    if len(values) <= 1:
        return "[" + ", ".join(toml_string(v) for v in values) + "]"
    return "[\n" + "".join(f"  {toml_string(v)},\n" for v in values) + "]"


def _iam_lines(api_method: str) -> list[str]:
    need = iam_permissions.needs(api_method)
    if need is None:
        return [_comment(f"IAM: unknown permission for {api_method} (not in the table; look it up)")]
    lines = [_comment("IAM: " + (", ".join(need.permissions) or "none needed"))]
    if need.also:
        lines.append(_comment(f"     maybe also {', '.join(need.also)}: {need.note}"))
    return lines


def suggest(read: AuditRead, source: str = "", principal: str | None = None) -> str:
    """The config text: ``default = "deny"``, allow rules for what was seen, the custom role draft."""
    calls = read.calls
    lines = [
        _comment(f"Drafted by `gcp-auth-proxy policy suggest` from {source or 'an audit log'}"
                 + (f" for principal {principal}" if principal else "") + "."),
        _comment(f"{_plural(len(calls), 'call')} kept; {_plural(read.malformed, 'malformed line')} skipped; "
                 f"{_plural(read.denied, 'denied call')} left out; "
                 f"{_plural(read.other_principals, 'call')} of other principals left out."),
        _comment("Review before use: every allowed call is one the workload made; nothing else passes."),
    ]
    if read.not_injected:
        seen = ", ".join(f"{h} ({n})" for h, n in sorted(read.not_injected.items()))
        lines.append(_comment(f"Not made with the proxy's credentials, so not allowed here: {seen}."))
    lines.append(_comment("Tunnelled hosts are not in the audit log: under default deny they need host rules too."))
    lines += ["", 'default = "deny"']

    recognised: dict[tuple[str, str], list[Seen]] = defaultdict(list)
    unrecognised: dict[str, list[Seen]] = defaultdict(list)
    for call in calls:
        if call.api_method:
            recognised[(call.host, call.api_method)].append(call)
        else:
            unrecognised[call.host].append(call)

    permissions: set[str] = set()
    maybe: set[str] = set()
    unknown: set[str] = set()
    for (host, api_method), group in sorted(recognised.items()):
        need = iam_permissions.needs(api_method)
        if need is None:
            unknown.add(api_method)
        else:
            permissions.update(need.permissions)
            maybe.update(need.also)
        resources = [c.resource for c in group]
        count = _plural(len({r for r in resources if r}), "resource")
        lines += ["", _comment(f"{api_method} on {host}: {_plural(len(group), 'call')}, {count}"),
                  *_iam_lines(api_method)]
        if None in resources:  # a rule naming resources never matches a call without one
            lines.append(_comment("some calls named no resource, so this rule names none"))
        lines += ["[[rule]]", f"name = {toml_string(f'{api_method} on {host}')}", 'action = "allow"',
                  f"hosts = {_array([host])}", f"api_methods = {_array([api_method])}"]
        if None not in resources:
            lines.append(f"resources = {_array(resource_patterns(r for r in resources if r))}")

    for host, group in sorted(unrecognised.items()):
        counts = Counter((c.method, c.path.partition("?")[0]) for c in group)
        lines += ["", _comment(f"{host}: {_plural(len(group), 'call')} with no recognised API method "
                               "(so no IAM permissions are known):")]
        shown = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        lines += [_comment(f"  {m} {p} ({n})") for (m, p), n in shown[:SHOWN_PATHS]]
        if len(shown) > SHOWN_PATHS:
            lines.append(_comment(f"  ... and {len(shown) - SHOWN_PATHS} more"))
        if any(h == host for h, _ in recognised):
            lines.append(_comment("note: this rule also allows recognised calls on this host beyond the rules above"))
        methods = sorted({c.method for c in group})
        lines += ["[[rule]]", f"name = {toml_string(f'host {host}')}", 'action = "allow"', f"hosts = {_array([host])}"]
        if all(_HTTP_METHOD.match(m) for m in methods):
            lines.append(f"methods = {_array(methods)}")

    lines += ["", _comment("Custom role draft: the permissions the allowed API methods need."),
              _comment("gcloud iam roles create ROLE_ID --project=PROJECT_ID --title=\"gcp-auth-proxy workload\" "
                       f"--permissions={','.join(sorted(permissions))}")]
    if maybe - permissions:
        lines.append(_comment(f"Maybe also (see the notes above): {','.join(sorted(maybe - permissions))}"))
    if unknown:
        lines.append(_comment(f"Unknown permissions (look these methods up): {', '.join(sorted(unknown))}"))
    return "\n".join(lines) + "\n"


def read_lines(path: str) -> Iterator[str]:
    """The log's lines, ``-`` for stdin; OSError as open() raises it."""
    import sys

    if path == "-":
        yield from sys.stdin
        return
    with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as f:
        yield from f
