"""HTTP handlers for the fake Cloud Storage JSON and XML APIs (incl. uploads)."""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from email.utils import format_datetime
from html import escape
from typing import Any
from urllib.parse import quote

from .http import Request, Response, google_error, json_response, text_response
from .storage_model import BENCH_BUCKET, Hasher, Storage, StoredObject, list_objects
from .storage_routes import (
    Route,
    parse_content_range,
    parse_multipart_related,
    parse_range,
    route_storage,
)


@dataclass
class ObjectWriter:
    """Consumes an upload chunk by chunk; keeps the bytes unless the bucket is ``bench``."""

    bucket: str
    name: str
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)
    hasher: Hasher = field(default_factory=Hasher)
    buffer: bytearray | None = None

    def __post_init__(self) -> None:
        if self.bucket != BENCH_BUCKET:
            self.buffer = bytearray()

    def write(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        if self.buffer is not None:
            self.buffer += chunk

    def finish(self) -> StoredObject:
        data = bytes(self.buffer) if self.buffer is not None else None
        return StoredObject(
            self.bucket,
            self.name,
            self.hasher.size,
            data,
            self.hasher.md5_b64(),
            self.hasher.crc32c_b64(),
            self.content_type,
            self.metadata,
        )


@dataclass
class UploadSession:
    writer: ObjectWriter
    result: StoredObject | None = None


def _not_found(what: str) -> Response:
    return google_error(404, f"No such {what}.")


class StorageApi:
    """Dispatches storage requests; resumable sessions live here (thread-safe)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._sessions: dict[str, UploadSession] = {}
        self._lock = threading.Lock()

    async def handle(self, request: Request) -> Response | None:
        """Return a response, or None when no storage route matches."""
        route = route_storage(request.method, request.segments)
        if route is None:
            return None
        handler = getattr(self, "_" + route.action)
        return await handler(request, route)

    # --- buckets ---------------------------------------------------------
    async def _list_buckets(self, request: Request, route: Route) -> Response:
        project = request.query.get("project")
        items = [b.to_json() for b in self.storage.buckets(project)]
        payload: dict[str, Any] = {"kind": "storage#buckets"}
        if items:
            payload["items"] = items
        return json_response(200, payload)

    async def _create_bucket(self, request: Request, route: Route) -> Response:
        try:
            meta = json.loads(await request.body() or b"{}")
            name = meta["name"]
        except (ValueError, KeyError, TypeError):
            return google_error(400, "Bucket name is required.", "required")
        bucket = self.storage.create_bucket(name, request.query.get("project", "fake-project"))
        if bucket is None:
            return google_error(
                409,
                "Your previous request to create the named bucket succeeded "
                "and you already own it.",
                "conflict",
            )
        return json_response(200, bucket.to_json())

    async def _get_bucket(self, request: Request, route: Route) -> Response:
        bucket = self.storage.bucket(route.bucket)
        return json_response(200, bucket.to_json()) if bucket else _not_found("bucket")

    async def _list_objects(self, request: Request, route: Route) -> Response:
        if self.storage.bucket(route.bucket) is None:
            return _not_found("bucket")
        items, prefixes = list_objects(
            self.storage.objects(route.bucket),
            request.query.get("prefix", ""),
            request.query.get("delimiter", ""),
        )
        payload: dict[str, Any] = {"kind": "storage#objects"}
        if items:
            payload["items"] = [o.to_json() for o in items]
        if prefixes:
            payload["prefixes"] = prefixes
        return json_response(200, payload)

    # --- objects ---------------------------------------------------------
    async def _get_object(self, request: Request, route: Route) -> Response:
        if request.query.get("alt") == "media":
            return await self._download(request, route)
        obj = self.storage.get(route.bucket, route.name)
        if obj is None:
            return (
                _not_found("object") if self.storage.bucket(route.bucket) else _not_found("bucket")
            )
        return json_response(200, obj.to_json())

    async def _delete_object(self, request: Request, route: Route) -> Response:
        if not self.storage.delete(route.bucket, route.name):
            return _not_found("object")
        return Response(204, [("content-length", "0")])

    async def _download(self, request: Request, route: Route) -> Response:
        obj = self.storage.get(route.bucket, route.name)
        if obj is None:
            return _not_found("object")
        return media_response(obj, request.headers.get("range"))

    # --- uploads ---------------------------------------------------------
    async def _upload(self, request: Request, route: Route) -> Response:
        if self.storage.bucket(route.bucket) is None:
            await request.drain()
            return _not_found("bucket")
        upload_id = request.query.get("upload_id")
        if upload_id:
            return await self._resumable_put(request, upload_id)
        kind = request.query.get("uploadType", "media")
        if kind == "media":
            name = request.query.get("name", "")
            if not name:
                await request.drain()
                return google_error(400, "Required parameter: name", "required")
            if (failed := self._precondition(request, route.bucket, name)) is not None:
                await request.drain()
                return failed
            writer = ObjectWriter(
                route.bucket, name, request.headers.get("content-type", "application/octet-stream")
            )
            async for chunk in request.stream():
                writer.write(chunk)
            return json_response(200, self.storage.put(writer.finish()).to_json())
        if kind == "multipart":
            return await self._multipart(request, route)
        if kind == "resumable":
            return await self._resumable_start(request, route)
        await request.drain()
        return google_error(400, f"Invalid uploadType: {kind}")

    def _precondition(self, request: Request, bucket: str, name: str) -> Response | None:
        wanted = request.query.get("ifGenerationMatch")
        if wanted is None:
            return None
        current = next((o.generation for o in self.storage.objects(bucket) if o.name == name), 0)
        if str(current) != wanted:
            return google_error(
                412, "At least one of the pre-conditions you specified did not hold."
            )
        return None

    async def _multipart(self, request: Request, route: Route) -> Response:
        body = await request.body()
        try:
            meta_raw, media_type, media = parse_multipart_related(
                body, request.headers.get("content-type", "")
            )
            meta = json.loads(meta_raw or b"{}")
        except ValueError as exc:
            return google_error(400, str(exc))
        name = meta.get("name") or request.query.get("name", "")
        if not name:
            return google_error(400, "Required parameter: name", "required")
        if (failed := self._precondition(request, route.bucket, name)) is not None:
            return failed
        writer = ObjectWriter(
            route.bucket,
            name,
            meta.get("contentType") or media_type,
            dict(meta.get("metadata") or {}),
        )
        writer.write(media)
        stored = writer.finish()
        if (
            meta.get("crc32c")
            and meta["crc32c"] != stored.crc32c
            or meta.get("md5Hash")
            and meta["md5Hash"] != stored.md5
        ):
            return google_error(400, "Provided checksum does not match the data.", "invalid")
        return json_response(200, self.storage.put(stored).to_json())

    async def _resumable_start(self, request: Request, route: Route) -> Response:
        body = await request.body()
        try:
            meta = json.loads(body or b"{}")
        except ValueError:
            return google_error(400, "Invalid JSON metadata.")
        name = meta.get("name") or request.query.get("name", "")
        if not name:
            return google_error(400, "Required parameter: name", "required")
        if (failed := self._precondition(request, route.bucket, name)) is not None:
            return failed
        content_type = (
            meta.get("contentType")
            or request.headers.get("x-upload-content-type")
            or "application/octet-stream"
        )
        upload_id = "ADPycd" + secrets.token_urlsafe(24)
        with self._lock:
            self._sessions[upload_id] = UploadSession(
                ObjectWriter(route.bucket, name, content_type, dict(meta.get("metadata") or {}))
            )
        host = request.headers.get("host", "storage.googleapis.com")
        location = (
            f"https://{host}/upload/storage/v1/b/{quote(route.bucket, safe='')}/o"
            f"?uploadType=resumable&name={quote(name, safe='')}&upload_id={upload_id}"
        )
        return Response(
            200,
            [("location", location), ("x-guploader-uploadid", upload_id), ("content-length", "0")],
        )

    async def _resumable_put(self, request: Request, upload_id: str) -> Response:
        with self._lock:
            session = self._sessions.get(upload_id)
        if session is None:
            await request.drain()
            return google_error(404, "No such upload session.")
        if session.result is not None:
            await request.drain()
            return json_response(200, session.result.to_json())
        try:
            content_range = parse_content_range(request.headers.get("content-range"))
        except ValueError as exc:
            await request.drain()
            return google_error(400, str(exc))
        writer = session.writer
        skip = 0
        if content_range is not None and content_range.start is not None:
            if content_range.start > writer.hasher.size:
                await request.drain()
                return google_error(400, "Invalid request: chunk starts past the persisted offset.")
            skip = writer.hasher.size - content_range.start  # overlap with bytes we already have
        async for chunk in request.stream():
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            if chunk:
                writer.write(chunk)
        total = writer.hasher.size if content_range is None else content_range.total
        if total is not None and writer.hasher.size >= total:
            result = self.storage.put(writer.finish())
            with self._lock:
                session.result = result
                session.writer = ObjectWriter(writer.bucket, writer.name)  # release the buffer
            return json_response(200, result.to_json())
        headers = [("content-length", "0"), ("x-guploader-uploadid", upload_id)]
        if writer.hasher.size:
            headers.append(("range", f"bytes=0-{writer.hasher.size - 1}"))
        return Response(308, headers)

    # --- XML API ---------------------------------------------------------
    async def _xml_list(self, request: Request, route: Route) -> Response:
        if self.storage.bucket(route.bucket) is None:
            return xml_error(404, "NoSuchBucket", "The specified bucket does not exist.")
        prefix = request.query.get("prefix", "")
        delimiter = request.query.get("delimiter", "")
        items, prefixes = list_objects(self.storage.objects(route.bucket), prefix, delimiter)
        contents = "".join(
            f"<Contents><Key>{escape(o.name)}</Key><Generation>{o.generation}</Generation>"
            f"<MetaGeneration>1</MetaGeneration><LastModified>{o.to_json()['updated']}</LastModified>"
            f'<ETag>"{o.md5 or ""}"</ETag><Size>{o.size}</Size></Contents>'
            for o in items
        )
        common = "".join(
            f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes
        )
        xml = (
            "<?xml version='1.0' encoding='UTF-8'?>"
            "<ListBucketResult xmlns='http://doc.s3.amazonaws.com/2006-03-01'>"
            f"<Name>{escape(route.bucket)}</Name><Prefix>{escape(prefix)}</Prefix><Marker></Marker>"
            f"<IsTruncated>false</IsTruncated>{contents}{common}</ListBucketResult>"
        )
        return text_response(200, xml, "application/xml; charset=UTF-8")

    async def _xml_get(self, request: Request, route: Route) -> Response:
        obj = self.storage.get(route.bucket, route.name)
        if obj is None:
            return xml_error(404, "NoSuchKey", "The specified key does not exist.")
        return media_response(obj, request.headers.get("range"))

    async def _xml_head(self, request: Request, route: Route) -> Response:
        return await self._xml_get(request, route)

    async def _xml_put(self, request: Request, route: Route) -> Response:
        if self.storage.bucket(route.bucket) is None:
            await request.drain()
            return xml_error(404, "NoSuchBucket", "The specified bucket does not exist.")
        meta = {
            k[len("x-goog-meta-") :]: v
            for k, v in request.headers.items()
            if k.startswith("x-goog-meta-")
        }
        writer = ObjectWriter(
            route.bucket,
            route.name,
            request.headers.get("content-type", "application/octet-stream"),
            meta,
        )
        async for chunk in request.stream():
            writer.write(chunk)
        obj = self.storage.put(writer.finish())
        return Response(
            200,
            [
                ("etag", f'"{obj.md5}"'),
                ("x-goog-generation", str(obj.generation)),
                ("x-goog-hash", obj.goog_hash() or ""),
                ("content-length", "0"),
            ],
        )


def media_response(obj: StoredObject, range_header: str | None) -> Response:
    """Stream an object's bytes, honouring a single Range request."""
    byte_range = parse_range(range_header, obj.size)
    if byte_range is False:
        return Response(416, [("content-range", f"bytes */{obj.size}"), ("content-length", "0")])
    headers = [
        ("content-type", obj.content_type),
        ("accept-ranges", "bytes"),
        ("etag", f'"{obj.etag}"'),
        ("last-modified", format_datetime(obj.created, usegmt=True)),
        ("x-goog-generation", str(obj.generation)),
        ("x-goog-metageneration", "1"),
        ("x-goog-stored-content-length", str(obj.size)),
        ("x-goog-stored-content-encoding", "identity"),
        ("x-goog-storage-class", "STANDARD"),
    ]
    if goog_hash := obj.goog_hash():
        headers.append(("x-goog-hash", goog_hash))
    if byte_range is None:
        headers.append(("content-length", str(obj.size)))
        return Response(200, headers, obj.chunks())
    start, end = byte_range
    headers += [
        ("content-length", str(end - start + 1)),
        ("content-range", f"bytes {start}-{end}/{obj.size}"),
    ]
    return Response(206, headers, obj.chunks(start, end))


def xml_error(status: int, code: str, message: str) -> Response:
    xml = (
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
        f"<Message>{escape(message)}</Message></Error>"
    )
    return text_response(status, xml, "application/xml; charset=UTF-8")
