"""Pure routing and header parsing for the fake Cloud Storage APIs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Route:
    action: str
    bucket: str = ""
    name: str = ""


def route_storage(method: str, segments: list[str]) -> Route | None:
    """Map a decoded path to a storage action (JSON API first, then XML path style)."""
    if (
        len(segments) > 1
        and segments[-1] == ""
        and segments[0] not in ("storage", "download", "upload")
    ):
        segments = segments[:-1]
    n = len(segments)
    if segments[:3] == ["storage", "v1", "b"]:
        if n == 3:
            return {"GET": Route("list_buckets"), "POST": Route("create_bucket")}.get(method)
        if n == 4 and method == "GET":
            return Route("get_bucket", segments[3])
        if n == 5 and segments[4] == "o" and method == "GET":
            return Route("list_objects", segments[3])
        if n >= 6 and segments[4] == "o":
            name = "/".join(segments[5:])
            return {
                "GET": Route("get_object", segments[3], name),
                "DELETE": Route("delete_object", segments[3], name),
            }.get(method)
        return None
    if segments[:4] == ["download", "storage", "v1", "b"] and n >= 7 and segments[5] == "o":
        return Route("download", segments[4], "/".join(segments[6:])) if method == "GET" else None
    if segments[:4] == ["upload", "storage", "v1", "b"] and n == 6 and segments[5] == "o":
        return Route("upload", segments[4]) if method in ("POST", "PUT") else None
    if segments[0] in ("", "storage", "upload", "download"):
        return None
    if n == 1:
        return Route("xml_list", segments[0]) if method == "GET" else None
    name = "/".join(segments[1:])
    return {
        "GET": Route("xml_get", segments[0], name),
        "HEAD": Route("xml_head", segments[0], name),
        "PUT": Route("xml_put", segments[0], name),
        "DELETE": Route("delete_object", segments[0], name),
    }.get(method)


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | Literal[False]:
    """Parse a single ``Range: bytes=`` spec.

    Returns (start, end_inclusive), None when absent/ignored, or False when unsatisfiable.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        length = int(last)
        if length == 0:
            return False
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return False
    return start, end


_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")


@dataclass(frozen=True)
class ContentRange:
    """A resumable-upload ``Content-Range``; start is None for "bytes */total" queries."""

    start: int | None
    end: int | None
    total: int | None


def parse_content_range(header: str | None) -> ContentRange | None:
    if not header:
        return None
    match = _CONTENT_RANGE.match(header.strip())
    if not match:
        raise ValueError(f"bad Content-Range: {header}")
    first, last, total = match.groups()
    return ContentRange(
        int(first) if first else None,
        int(last) if last else None,
        None if total == "*" else int(total),
    )


def parse_multipart_related(body: bytes, content_type: str) -> tuple[bytes, str, bytes]:
    """Split a 2-part multipart/related upload into (metadata JSON, media content type, media)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ValueError("multipart upload without boundary")
    delimiter = b"--" + match.group(1).encode()
    parts = body.split(delimiter)
    # parts: [preamble, part1, part2, "--\r\n" epilogue]
    chunks = [p for p in parts[1:] if not p.startswith(b"--")]
    if len(chunks) != 2:
        raise ValueError("multipart upload needs exactly two parts")
    decoded = []
    for chunk in chunks:
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("malformed multipart part")
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        headers = {
            line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if b":" in line
        }
        decoded.append(
            (headers.get(b"content-type", b"application/octet-stream").decode(), payload)
        )
    return decoded[0][1], decoded[1][0], decoded[1][1]
