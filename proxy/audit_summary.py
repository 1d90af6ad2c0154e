"""``gcp-auth-proxy audit summary PATH|-``: an audit log as a few tables a person can read.

``summarize()`` is pure (records in, a JSON-able dict out); ``render()`` turns that dict into
text. Lines that are not audit records are counted and skipped, never fatal: a log cut by a
crash or rotated mid-line must still summarise.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any, TextIO

from proxy.errors import ProxyError

NONE = "-"


def _is_error(record: dict[str, Any]) -> bool:
    status = record.get("status")
    return not isinstance(status, int) or status >= 400


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_lines(lines: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """JSON objects with at least method and host; returns (records, number of lines skipped)."""
    records: list[dict[str, Any]] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(record, dict) and "method" in record and "host" in record:
            records.append(record)
        else:
            skipped += 1
    return records, skipped


def summarize(records: list[dict[str, Any]], *, top: int = 10, skipped: int = 0) -> dict[str, Any]:
    """Totals, calls by service/api_method/status, by principal, errors, slowest calls."""
    calls: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"calls": 0, "request_bytes": 0, "response_bytes": 0, "total_ms": 0.0, "max_ms": 0.0})
    principals: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"calls": 0, "errors": 0})
    errors: Counter[tuple[str, str, str]] = Counter()
    times = sorted(r["time"] for r in records if isinstance(r.get("time"), str))
    for r in records:
        status = str(r["status"]) if r.get("status") is not None else "error"
        key = (r.get("service") or NONE, r.get("api_method") or NONE, status)
        row = calls[key]
        duration = float(r.get("duration_ms") or 0.0)
        row["calls"] += 1
        row["request_bytes"] += _int(r.get("request_bytes"))
        row["response_bytes"] += _int(r.get("response_bytes"))
        row["total_ms"] += duration
        row["max_ms"] = max(row["max_ms"], duration)
        who = principals[(r.get("principal") or NONE, r.get("auth") or NONE)]
        who["calls"] += 1
        if _is_error(r):
            who["errors"] += 1
            what = r.get("api_method") or f"{r.get('method')} {r.get('host')}"
            errors[(status, what, str(r.get("error") or ""))] += 1
    slowest = sorted(records, key=lambda r: float(r.get("duration_ms") or 0.0), reverse=True)[:top]
    return {
        "totals": {
            "calls": len(records),
            "errors": sum(1 for r in records if _is_error(r)),
            "request_bytes": sum(_int(r.get("request_bytes")) for r in records),
            "response_bytes": sum(_int(r.get("response_bytes")) for r in records),
            "first": times[0] if times else None,
            "last": times[-1] if times else None,
            "skipped_lines": skipped,
        },
        "calls": [
            {"service": s, "api_method": m, "status": st, "calls": v["calls"],
             "request_bytes": v["request_bytes"], "response_bytes": v["response_bytes"],
             "avg_ms": round(v["total_ms"] / v["calls"], 1), "max_ms": round(v["max_ms"], 1)}
            for (s, m, st), v in sorted(calls.items(), key=lambda kv: (-kv[1]["calls"], kv[0]))
        ],
        "principals": [
            {"principal": p, "auth": a, **v}
            for (p, a), v in sorted(principals.items(), key=lambda kv: (-kv[1]["calls"], kv[0]))
        ],
        "errors": [
            {"status": st, "what": what, "error": err, "count": n}
            for (st, what, err), n in errors.most_common(top)
        ],
        "slowest": [
            {"time": r.get("time"), "duration_ms": r.get("duration_ms"), "status": r.get("status"),
             "method": r.get("method"), "host": r.get("host"), "path": r.get("path"),
             "api_method": r.get("api_method")}
            for r in slowest
        ],
    }


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - loop always returns


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [fmt(headers), *(fmt(r) for r in rows)]


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render(summary: dict[str, Any]) -> str:
    t = summary["totals"]
    out = [
        f"{t['calls']} calls, {t['errors']} errors, {human_bytes(t['request_bytes'])} sent, "
        f"{human_bytes(t['response_bytes'])} received"
        + (f", {t['first']} .. {t['last']}" if t["first"] else ""),
    ]
    if t["skipped_lines"]:
        out.append(f"({t['skipped_lines']} lines were not audit records and were skipped)")
    out += ["", "Calls by service, API method and status"]
    out += _table(
        ["SERVICE", "API METHOD", "STATUS", "CALLS", "SENT", "RECEIVED", "AVG MS", "MAX MS"],
        [[c["service"], c["api_method"], c["status"], str(c["calls"]), human_bytes(c["request_bytes"]),
          human_bytes(c["response_bytes"]), f"{c['avg_ms']:.1f}", f"{c['max_ms']:.1f}"]
         for c in summary["calls"]],
        {3, 4, 5, 6, 7},
    )
    out += ["", "Calls by principal"]
    out += _table(["PRINCIPAL", "AUTH", "CALLS", "ERRORS"],
                  [[p["principal"], p["auth"], str(p["calls"]), str(p["errors"])] for p in summary["principals"]],
                  {2, 3})
    out += ["", "Errors"]
    if summary["errors"]:
        out += _table(["STATUS", "CALL", "COUNT", "MESSAGE"],
                      [[e["status"], e["what"], str(e["count"]), _shorten(e["error"], 70)] for e in summary["errors"]],
                      {2})
    else:
        out.append("none")
    out += ["", "Slowest calls"]
    out += _table(["DURATION MS", "STATUS", "METHOD", "URL"],
                  [[f"{float(s['duration_ms'] or 0):.1f}", str(s["status"] if s["status"] is not None else "error"),
                    str(s["method"]), _shorten(f"{s['host']}{s['path'] or ''}", 80)] for s in summary["slowest"]],
                  {0})
    return "\n".join(out) + "\n"


def main(path: str, *, as_json: bool = False, top: int = 10, stdout: TextIO | None = None,
         stdin: TextIO | None = None) -> int:
    """Read PATH (``-`` for stdin), print the summary; raises ProxyError for an unreadable file."""
    stdout = stdout or sys.stdout
    try:
        if path == "-":
            records, skipped = parse_lines(stdin or sys.stdin)
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                records, skipped = parse_lines(f)
    except OSError as e:
        raise ProxyError(f"cannot read audit log {path}: {e.strerror}") from None
    summary = summarize(records, top=top, skipped=skipped)
    stdout.write(json.dumps(summary, indent=2) + "\n" if as_json else render(summary))
    return 0
