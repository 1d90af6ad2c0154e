"""In-memory Cloud Storage data model (no HTTP here).

The special bucket ``bench`` never stores payloads: objects named ``size-<N>``
are synthesised as N bytes of a fixed pattern, and uploads into it only keep
size and checksums, so multi-GiB benchmarks run with flat memory.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import google_crc32c

from .credentials import PROJECT_ID

BENCH_BUCKET = "bench"
CHUNK_SIZE = 256 * 1024
_PATTERN = bytes(range(256)) * (CHUNK_SIZE // 256 + 1)
PROJECT_NUMBER = "123456789012"
_generations = itertools.count(1_700_000_000_000_000)


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now() -> datetime:
    return datetime.now(UTC)


class Hasher:
    """Incremental md5 + crc32c, fed chunk by chunk during streaming uploads."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5()
        self.crc = google_crc32c.Checksum()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.crc.update(chunk)
        self.size += len(chunk)

    def md5_b64(self) -> str:
        return base64.b64encode(self.md5.digest()).decode()

    def crc32c_b64(self) -> str:
        return base64.b64encode(self.crc.digest()).decode()


@dataclass
class StoredObject:
    bucket: str
    name: str
    size: int
    data: bytes | None  # None: synthesised pattern bytes (bench bucket)
    md5: str | None
    crc32c: str | None
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)
    generation: int = field(default_factory=lambda: next(_generations))
    created: datetime = field(default_factory=now)

    @property
    def etag(self) -> str:
        return base64.b64encode(self.generation.to_bytes(8, "big") + b"\x10\x01").decode()

    def to_json(self) -> dict[str, Any]:
        """Object resource as the JSON API returns it."""
        qname = quote(self.name, safe="")
        stamp = rfc3339(self.created)
        resource: dict[str, Any] = {
            "kind": "storage#object",
            "id": f"{self.bucket}/{self.name}/{self.generation}",
            "selfLink": f"https://www.googleapis.com/storage/v1/b/{self.bucket}/o/{qname}",
            "mediaLink": f"https://storage.googleapis.com/download/storage/v1/b/{self.bucket}/o/"
            f"{qname}?generation={self.generation}&alt=media",
            "name": self.name,
            "bucket": self.bucket,
            "generation": str(self.generation),
            "metageneration": "1",
            "contentType": self.content_type,
            "storageClass": "STANDARD",
            "size": str(self.size),
            "etag": self.etag,
            "timeCreated": stamp,
            "updated": stamp,
            "timeStorageClassUpdated": stamp,
        }
        if self.md5:
            resource["md5Hash"] = self.md5
        if self.crc32c:
            resource["crc32c"] = self.crc32c
        if self.metadata:
            resource["metadata"] = dict(self.metadata)
        return resource

    def goog_hash(self) -> str | None:
        """Value for the ``x-goog-hash`` header; omitted when served bytes are synthetic
        (bench uploads keep the uploaded data's checksums, which the pattern won't match)."""
        if self.data is None:
            return None
        parts = [f"crc32c={self.crc32c}"] if self.crc32c else []
        parts += [f"md5={self.md5}"] if self.md5 else []
        return ",".join(parts) or None

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield bytes [start, end] (inclusive end) in CHUNK_SIZE pieces."""
        stop = self.size if end is None else min(end + 1, self.size)
        if self.data is not None:
            for offset in range(start, stop, CHUNK_SIZE):
                yield self.data[offset : min(offset + CHUNK_SIZE, stop)]
            return
        offset = start
        while offset < stop:
            length = min(CHUNK_SIZE, stop - offset)
            phase = offset % 256
            yield _PATTERN[phase : phase + length]
            offset += length


def pattern_bytes(start: int, length: int) -> bytes:
    """The bench pattern at absolute offset ``start`` (for tests): byte k == k % 256."""
    return bytes((start + i) % 256 for i in range(length))


@dataclass
class Bucket:
    name: str
    project: str
    objects: dict[str, StoredObject] = field(default_factory=dict)
    created: datetime = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        stamp = rfc3339(self.created)
        return {
            "kind": "storage#bucket",
            "id": self.name,
            "selfLink": f"https://www.googleapis.com/storage/v1/b/{self.name}",
            "projectNumber": PROJECT_NUMBER,
            "name": self.name,
            "timeCreated": stamp,
            "updated": stamp,
            "metageneration": "1",
            "location": "US",
            "locationType": "multi-region",
            "storageClass": "STANDARD",
            "etag": "CAE=",
            "iamConfiguration": {
                "uniformBucketLevelAccess": {"enabled": True},
                "publicAccessPrevention": "inherited",
            },
            "rpo": "DEFAULT",
        }


def list_objects(
    objects: list[StoredObject], prefix: str = "", delimiter: str = ""
) -> tuple[list[StoredObject], list[str]]:
    """Filter by prefix and fold names containing ``delimiter`` into common prefixes."""
    items: list[StoredObject] = []
    prefixes: set[str] = set()
    for obj in sorted(objects, key=lambda o: o.name):
        if not obj.name.startswith(prefix):
            continue
        rest = obj.name[len(prefix) :]
        if delimiter and delimiter in rest:
            prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
        else:
            items.append(obj)
    return items, sorted(prefixes)


def bench_object(name: str) -> StoredObject | None:
    """Synthesise ``size-<N>`` in the bench bucket (no checksums: computing them would read N bytes)."""
    if not name.startswith("size-"):
        return None
    try:
        size = int(name[5:])
    except ValueError:
        return None
    if size < 0:
        return None
    return StoredObject(BENCH_BUCKET, name, size, None, None, None, generation=1)


class Storage:
    """Thread-safe bucket/object store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Back to the initial buckets and objects (tests share one fake per session)."""
        with self._lock:
            self._buckets: dict[str, Bucket] = {}
        self.create_bucket("demo-bucket", PROJECT_ID)
        self.create_bucket(BENCH_BUCKET, PROJECT_ID)
        self.put_bytes("demo-bucket", "hello.txt", b"hello from fake Google\n", "text/plain")

    def create_bucket(self, name: str, project: str) -> Bucket | None:
        """Create a bucket; None if the name is taken."""
        with self._lock:
            if name in self._buckets:
                return None
            bucket = self._buckets[name] = Bucket(name, project)
            return bucket

    def bucket(self, name: str) -> Bucket | None:
        with self._lock:
            return self._buckets.get(name)

    def buckets(self, project: str | None = None) -> list[Bucket]:
        with self._lock:
            return sorted(
                (b for b in self._buckets.values() if project in (None, b.project)),
                key=lambda b: b.name,
            )

    def objects(self, bucket: str) -> list[StoredObject]:
        with self._lock:
            found = self._buckets.get(bucket)
            return list(found.objects.values()) if found else []

    def get(self, bucket: str, name: str) -> StoredObject | None:
        with self._lock:
            found = self._buckets.get(bucket)
            obj = found.objects.get(name) if found else None
        if obj is None and bucket == BENCH_BUCKET:
            return bench_object(name)
        return obj

    def put(self, obj: StoredObject) -> StoredObject:
        with self._lock:
            self._buckets[obj.bucket].objects[obj.name] = obj
        return obj

    def put_bytes(
        self, bucket: str, name: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        hasher = Hasher()
        hasher.update(data)
        return self.put(
            StoredObject(
                bucket, name, len(data), data, hasher.md5_b64(), hasher.crc32c_b64(), content_type
            )
        )

    def delete(self, bucket: str, name: str) -> bool:
        with self._lock:
            found = self._buckets.get(bucket)
            return bool(found and found.objects.pop(name, None))
