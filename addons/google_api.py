"""Pure recognition of Google API calls: host + method + path -> service, API method, resource.

Names follow Google's own discovery documents and Cloud Audit Logs (``storage.objects.get``,
``compute.instances.list``, and for gRPC the full method, ``google.pubsub.v1.Publisher.Publish``,
told apart from REST by the request's content type); resources use the audit-log style (``projects/_/buckets/B/objects/O``,
``projects/P/zones/Z/instances/I``). Anything not recognised stays None: an audit log that
guesses is worse than one that says nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote

GOOGLEAPIS = ".googleapis.com"


class ApiCall(NamedTuple):
    service: str | None = None
    api_method: str | None = None
    resource: str | None = None


# REST verbs on a collection (".../instances") and on one member (".../instances/NAME").
_COLLECTION_VERBS = {"GET": "list", "POST": "insert"}
_MEMBER_VERBS = {"GET": "get", "HEAD": "get", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}


def describe(host: str, method: str, path: str, content_type: str = "") -> ApiCall:
    """Recognise one request. ``path`` is the origin-form target, query included; ``content_type``
    the request's, which tells a gRPC call (``/google.pubsub.v1.Publisher/Publish``) from REST."""
    host = host.lower().rstrip(".")
    if host.count(":") == 1:
        host = host.partition(":")[0]
    if not host.endswith(GOOGLEAPIS):
        return ApiCall()
    method = method.upper()
    name = host[: -len(GOOGLEAPIS)]
    if method == "POST" and is_grpc(content_type):
        return _grpc("storage" if name.endswith(".storage") else _service_label(name), path)
    raw_path, _, query = path.partition("?")
    segments = [unquote(s) for s in raw_path.split("/")[1:]] or [""]
    params = dict(parse_qsl(query, keep_blank_values=True))
    if name.endswith(".storage"):  # BUCKET.storage.googleapis.com: XML API, virtual-host style
        bucket = name[: -len(".storage")]
        return _storage_xml(method, [bucket] if segments == [""] else [bucket, *segments], params)
    label = _service_label(name)
    root = segments[1] if segments[0] in ("upload", "download", "batch") and len(segments) > 1 else segments[0]
    if label == "www":  # the old shared host: www.googleapis.com/storage/v1, /compute/v1, /bigquery/v2
        if root not in ("storage", *_BY_SERVICE):
            return ApiCall()
        label = root
    if label == "storage":
        return _storage_json(method, segments, params) if root == "storage" else _storage_xml(method, segments, params)
    parser = _BY_SERVICE.get(label)
    return parser(method, segments, params) if parser else ApiCall(label or None)


# -- gRPC ------------------------------------------------------------------------------------------

# /package.Service/Method, as gRPC sends it (PROTOCOL-HTTP2.md "Path"): identifiers only, no query.
_GRPC_PATH = re.compile(r"/(?P<service>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)/(?P<method>[A-Za-z_]\w*)", re.ASCII)


def is_grpc(content_type: str) -> bool:
    """``application/grpc``, ``application/grpc+proto``, ``application/grpc-web...``: a gRPC call."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/grpc" or media.startswith(("application/grpc+", "application/grpc-web"))


def _grpc(label: str, path: str) -> ApiCall:
    """A gRPC call: the service from the host, the method as Cloud Audit Logs name it
    (``google.pubsub.v1.Publisher.Publish``); the resource is in the body, so it stays unknown."""
    match = _GRPC_PATH.fullmatch(path)
    api_method = f"{match['service']}.{match['method']}" if match else None
    # www.googleapis.com is a shared front end: its label names no service.
    return ApiCall(label if label and label != "www" else None, api_method)


def grpc_status(*sources: Mapping[str, str] | None) -> int | None:
    """The ``grpc-status`` of the first source that has one (trailers, then headers for a
    Trailers-Only answer), when it is a number; None for anything else."""
    for source in sources:
        value = source.get("grpc-status") if source is not None else None
        if value is not None:
            value = value.strip()
            return int(value) if value.isascii() and value.isdigit() and len(value) <= 3 else None
    return None


_REGIONAL = re.compile(r"^[a-z]+-[a-z]+\d+-(?P<service>[a-z0-9]+)$")


def _service_label(name: str) -> str:
    """storage (storage, storage.mtls, storage.us-east1.rep), aiplatform (us-central1-aiplatform)."""
    label = name.partition(".")[0]
    regional = _REGIONAL.match(label)
    return regional.group("service") if regional else label


# -- Cloud Storage ---------------------------------------------------------------------------------

def _bucket(name: str) -> str:
    return f"projects/_/buckets/{name}"


def _object(bucket: str, name: str) -> str:
    return f"projects/_/buckets/{bucket}/objects/{name}"


_STORAGE_SUB = {
    "acl": "bucketAccessControls",
    "defaultObjectAcl": "defaultObjectAccessControls",
    "notificationConfigs": "notifications",
}
_IAM = {("GET", ""): "getIamPolicy", ("PUT", ""): "setIamPolicy", ("GET", "testPermissions"): "testIamPermissions"}


def _storage_json(method: str, segments: list[str], params: dict[str, str]) -> ApiCall:
    """JSON API: /storage/v1/..., /upload/storage/v1/..., /download/storage/v1/..., /batch/storage/v1."""
    call = ApiCall("storage")
    kind = segments[0] if segments[0] in ("upload", "download", "batch") else ""
    rest = segments[1:] if kind else segments
    if rest[:1] != ["storage"] or len(rest) < 2:
        return call
    rest = rest[2:]  # drop "storage", version
    if kind == "batch":
        return call._replace(api_method="storage.batch") if method == "POST" else call
    if kind in ("upload", "download"):
        if kind == "upload" and len(rest) == 3 and rest[0] == "b" and rest[2] == "o" and method in ("POST", "PUT"):
            name = params.get("name")
            resource = _object(rest[1], name) if name else _bucket(rest[1])
            return call._replace(api_method="storage.objects.insert", resource=resource)
        if kind == "download" and len(rest) >= 4 and rest[0] == "b" and rest[2] == "o" and method == "GET":
            return call._replace(api_method="storage.objects.get", resource=_object(rest[1], "/".join(rest[3:])))
        return call
    if rest[:1] == ["projects"] and len(rest) >= 3:
        project = rest[1]
        if rest[2:] == ["serviceAccount"] and method == "GET":
            return call._replace(api_method="storage.projects.serviceAccount.get", resource=f"projects/{project}")
        if rest[2:3] == ["hmacKeys"]:
            return _rest("storage.projects.hmacKeys", method, rest[3:], f"projects/{project}/hmacKeys", call,
                         insert="create")
        return call
    if rest[:1] != ["b"]:
        return call
    if len(rest) == 1:
        owner = params.get("project")
        method_name = _COLLECTION_VERBS.get(method)
        return call._replace(api_method=f"storage.buckets.{method_name}" if method_name else None,
                             resource=f"projects/{owner}" if owner else None)
    bucket, tail = rest[1], rest[2:]
    if not tail:
        return _rest("storage.buckets", method, [bucket], "", call)._replace(resource=_bucket(bucket))
    if tail[0] == "iam":
        name = _IAM.get((method, "/".join(tail[1:])))
        return call._replace(api_method=f"storage.buckets.{name}" if name else None, resource=_bucket(bucket))
    if tail == ["lockRetentionPolicy"] and method == "POST":
        return call._replace(api_method="storage.buckets.lockRetentionPolicy", resource=_bucket(bucket))
    if tail[0] in _STORAGE_SUB:
        return _rest(f"storage.{_STORAGE_SUB[tail[0]]}", method, tail[1:], "", call)._replace(resource=_bucket(bucket))
    if tail[0] != "o":
        return call
    if len(tail) == 1:
        return _rest("storage.objects", method, [], "", call)._replace(resource=_bucket(bucket))
    if tail[1:] == ["watch"] and method == "POST":
        return call._replace(api_method="storage.objects.watchAll", resource=_bucket(bucket))
    return _storage_object(method, bucket, tail[1:], call)


def _storage_object(method: str, bucket: str, parts: list[str], call: ApiCall) -> ApiCall:
    """/b/B/o/NAME[/compose|/acl[/ENTITY]|/rewriteTo/b/B2/o/NAME2|/copyTo/b/B2/o/NAME2].

    Object names may contain "/" (sent as %2F but often decoded by clients), so known
    suffixes are matched from the right.
    """
    for verb, api in (("rewriteTo", "rewrite"), ("copyTo", "copy")):
        if verb in parts and method == "POST":
            at = parts.index(verb)
            dest = parts[at + 1:]
            if len(dest) >= 4 and dest[0] == "b" and dest[2] == "o":
                return call._replace(api_method=f"storage.objects.{api}",
                                     resource=_object(dest[1], "/".join(dest[3:])))
            return call
    if len(parts) >= 2 and parts[-1] == "compose" and method == "POST":
        return call._replace(api_method="storage.objects.compose", resource=_object(bucket, "/".join(parts[:-1])))
    if "acl" in parts[1:]:
        at = len(parts) - 1 - parts[::-1].index("acl")
        if len(parts) - at <= 2:
            return _rest("storage.objectAccessControls", method, parts[at + 1:], "", call)._replace(
                resource=_object(bucket, "/".join(parts[:at])))
    return _rest("storage.objects", method, ["x"], "", call)._replace(resource=_object(bucket, "/".join(parts)))


_XML_BUCKET_CONFIG = frozenset(
    {"billing", "cors", "encryption", "lifecycle", "location", "logging", "storageClass", "versioning",
     "website", "retention"}
)


def _storage_xml(method: str, segments: list[str], params: dict[str, str]) -> ApiCall:
    """XML API: path style /BUCKET/OBJECT on storage.googleapis.com, or BUCKET.storage.googleapis.com/OBJECT."""
    call = ApiCall("storage")
    if segments and segments[-1] == "" and len(segments) <= 2:
        segments = segments[:-1]
    if not segments or segments == [""]:
        return call._replace(api_method="storage.buckets.list") if method == "GET" else call
    bucket, name = segments[0], "/".join(segments[1:])
    if not bucket:
        return call
    if not name:
        config = _XML_BUCKET_CONFIG & params.keys()
        if config:
            api = {"GET": "get", "PUT": "update"}.get(method)
        elif "acl" in params or "uploads" in params:
            api = None
        else:
            api = {"GET": "objects.list", "PUT": "buckets.insert", "DELETE": "buckets.delete",
                   "HEAD": "buckets.get"}.get(method)
            if api:
                return call._replace(api_method=f"storage.{api}", resource=_bucket(bucket))
            return call._replace(resource=_bucket(bucket))
        return call._replace(api_method=f"storage.buckets.{api}" if api else None, resource=_bucket(bucket))
    resource = _object(bucket, name)
    if "acl" in params:
        return call._replace(resource=resource)
    if "uploadId" in params or "uploads" in params:
        # XML multipart upload: initiate, parts, complete are one object insert; abort is a delete.
        api = "delete" if method == "DELETE" else ("list" if method == "GET" else "insert")
        return call._replace(api_method=f"storage.objects.{api}" if api != "list" else None, resource=resource)
    api = {"GET": "get", "HEAD": "get", "PUT": "insert", "POST": "insert", "DELETE": "delete"}.get(method)
    return call._replace(api_method=f"storage.objects.{api}" if api else None, resource=resource)


# -- Generic REST collections (Compute Engine, BigQuery) --------------------------------------------

def _rest(prefix: str, method: str, tail: list[str], resource: str, call: ApiCall, *,
          insert: str = "insert") -> ApiCall:
    """``prefix.list|insert`` on a collection, ``get|delete|patch|update`` on a member, a custom verb after one."""
    if not tail:
        verb = _COLLECTION_VERBS.get(method)
        if verb == "insert":
            verb = insert
    elif len(tail) == 1:
        verb = _MEMBER_VERBS.get(method)
    elif len(tail) == 2 and method in ("GET", "POST"):
        verb = tail[1]
    else:
        verb = None
    return call._replace(api_method=f"{prefix}.{verb}" if verb else None, resource=resource or call.resource)


# Collections whose members are operations: compute names them by scope.
_OPERATIONS = {"zones": "zoneOperations", "regions": "regionOperations", "global": "globalOperations"}
_COLLECTION_CUSTOM = frozenset({"bulkInsert"})

# Compute Engine methods the generic reading above would misname (the path's last segment is not the
# method's name, a custom method is sent with PATCH, PATCH on a member is ``update``, a literal
# segment stands where a member name would), from Google's v1 reference index of every method's HTTP
# verb and path: https://cloud.google.com/compute/docs/reference/rest/v1
# Key: (shape, collection as the path spells it, HTTP method, segment); value: the method's name.
#   "collection"  .../COLLECTION[/SEGMENT]      ("" = the collection itself)
#   "member"      .../COLLECTION/NAME[/SEGMENT] ("" = the member itself)
#   "named"       .../COLLECTION/SEGMENT/NAME   (images/family/FAMILY)
#   "unscoped"    projects/P/COLLECTION/NAME/SEGMENT, no global/ though the resource is global
#   "aggregated"  projects/P/aggregated/COLLECTION/SEGMENT
# A dict lookup, so a call costs the same however long the table grows.
_COMPUTE_ALIASES: dict[tuple[str, str, str, str], str] = {
    ("member", "instances", "GET", "serialPort"): "getSerialPortOutput",
    ("member", "instances", "GET", "screenshot"): "getScreenshot",
    ("member", "instances", "GET", "referrers"): "listReferrers",
    ("member", "instances", "PATCH", "setShieldedInstanceIntegrityPolicy"): "setShieldedInstanceIntegrityPolicy",
    ("member", "instances", "PATCH", "updateDisplayDevice"): "updateDisplayDevice",
    ("member", "instances", "PATCH", "updateNetworkInterface"): "updateNetworkInterface",
    ("member", "instances", "PATCH", "updateShieldedInstanceConfig"): "updateShieldedInstanceConfig",
    ("member", "networks", "PATCH", "updatePeering"): "updatePeering",
    # These have no "patch": PATCH on the member is their "update".
    ("member", "disks", "PATCH", ""): "update",  # disks, regionDisks
    ("member", "commitments", "PATCH", ""): "update",  # regionCommitments
    ("member", "reservations", "PATCH", ""): "update",
    ("member", "storagePools", "PATCH", ""): "update",
    ("named", "images", "GET", "family"): "getFromFamily",
    # Singletons and collections updated in place (autoscalers name theirs in ?autoscaler=).
    ("collection", "autoscalers", "PATCH", ""): "patch",  # autoscalers, regionAutoscalers
    ("collection", "autoscalers", "PUT", ""): "update",
    ("collection", "instanceSettings", "GET", ""): "get",
    ("collection", "instanceSettings", "PATCH", ""): "patch",
    ("collection", "snapshotSettings", "GET", ""): "get",
    ("collection", "snapshotSettings", "PATCH", ""): "patch",
    # Custom methods on a collection: without these the verb would be read as a member's name.
    ("collection", "disks", "POST", "stopGroupAsyncReplication"): "stopGroupAsyncReplication",
    ("collection", "backendServices", "GET", "listUsable"): "listUsable",
    ("collection", "firewallPolicies", "GET", "getEffectiveFirewalls"): "getEffectiveFirewalls",
    ("collection", "securityPolicies", "GET", "listPreconfiguredExpressionSets"): "listPreconfiguredExpressionSets",
    ("collection", "sslPolicies", "GET", "listAvailableFeatures"): "listAvailableFeatures",
    ("unscoped", "targetHttpProxies", "POST", "setUrlMap"): "setUrlMap",
    ("unscoped", "targetHttpsProxies", "POST", "setSslCertificates"): "setSslCertificates",
    ("unscoped", "targetHttpsProxies", "POST", "setUrlMap"): "setUrlMap",
    ("aggregated", "subnetworks", "GET", "listUsable"): "listUsable",
}
# The query parameter naming the member when a "collection" alias acts on one.
_COMPUTE_QUERY_MEMBER = {"autoscalers": "autoscaler"}
# Collections nested under a member, and the resource Google names their methods by.
_COMPUTE_NESTED = {("instanceGroupManagers", "resizeRequests"): "instanceGroupManagerResizeRequests"}


def _compute_alias(call: ApiCall, collection: str, alias: str, resource: str) -> ApiCall:
    """The call named by a ``_COMPUTE_ALIASES`` entry: Google's name for it, not one read off the path."""
    return call._replace(api_method=f"compute.{collection}.{alias}", resource=resource)


def _compute(method: str, segments: list[str], params: dict[str, str]) -> ApiCall:
    """/compute/{v1,beta,alpha}/projects/P/[zones/Z/|regions/R/|global/|aggregated/]COLLECTION/..."""
    call = ApiCall("compute")
    if len(segments) < 4 or segments[0] != "compute" or segments[2] != "projects":
        return call
    project, rest = segments[3], segments[4:]
    base = f"projects/{project}"
    if not rest:
        return _rest("compute.projects", method, ["x"], base, call) if method == "GET" else call._replace(resource=base)
    if rest[0] == "aggregated" and len(rest) == 2 and method == "GET":
        collection = "globalOperations" if rest[1] == "operations" else rest[1]
        return call._replace(api_method=f"compute.{collection}.aggregatedList", resource=base)
    if rest[0] == "aggregated" and len(rest) == 3:
        alias = _COMPUTE_ALIASES.get(("aggregated", rest[1], method, rest[2]))
        if alias:
            return _compute_alias(call, rest[1], alias, base)
    if rest[0] in ("zones", "regions") and len(rest) <= 2:
        return _rest(f"compute.{rest[0]}", method, rest[1:], "/".join([base, *rest]), call)
    if rest[0] in ("zones", "regions"):
        scope, scope_path, rest = rest[0], [rest[0], rest[1]], rest[2:]
    elif rest[0] == "global":
        scope, scope_path, rest = "global", ["global"], rest[1:]
    else:
        # Project-level custom methods: projects/P/setCommonInstanceMetadata, .../getXpnHost.
        if len(rest) == 1 and method in ("GET", "POST"):
            return call._replace(api_method=f"compute.projects.{rest[0]}", resource=base)
        if len(rest) == 3:
            alias = _COMPUTE_ALIASES.get(("unscoped", rest[0], method, rest[2]))
            if alias:  # the same global resource its other methods name
                return _compute_alias(call, rest[0], alias, "/".join([base, "global", rest[0], rest[1]]))
        return call._replace(resource=base)
    if not rest:
        return call
    collection = _OPERATIONS[scope] if rest[0] == "operations" else rest[0]
    tail = rest[1:]
    collection_path = "/".join([base, *scope_path, rest[0]])
    if len(tail) <= 1:
        alias = _COMPUTE_ALIASES.get(("collection", rest[0], method, tail[0] if tail else ""))
        if alias:
            name = params.get(_COMPUTE_QUERY_MEMBER.get(rest[0], ""), "") if not tail else ""
            return _compute_alias(call, collection, alias, f"{collection_path}/{name}" if name else collection_path)
    if len(tail) == 1 and tail[0] in _COLLECTION_CUSTOM and method == "POST":
        return call._replace(api_method=f"compute.{collection}.{tail[0]}", resource=collection_path)
    if 1 <= len(tail) <= 2:
        alias = _COMPUTE_ALIASES.get(("member", rest[0], method, tail[1] if len(tail) == 2 else ""))
        if alias:
            return _compute_alias(call, collection, alias, f"{collection_path}/{tail[0]}")
        # Family names are RFC 1035 (lower case); a camelCase segment is a verb on an image named "family".
        alias = _COMPUTE_ALIASES.get(("named", rest[0], method, tail[0])) if len(tail) == 2 else None
        if alias and tail[1].islower():
            return _compute_alias(call, collection, alias, "/".join([collection_path, *tail]))
    nested = _COMPUTE_NESTED.get((rest[0], tail[1])) if len(tail) >= 2 else None
    if nested:
        return _rest(f"compute.{nested}", method, tail[2:], "/".join([collection_path, *tail[:3]]), call)
    member = tail[:1]
    resource = "/".join([collection_path, *member])
    return _rest(f"compute.{collection}", method, tail, resource, call)


# BigQuery methods the generic reading misnames, from the v2 reference
# (https://cloud.google.com/bigquery/docs/reference/rest/v2): (collection, HTTP method, segment after
# the member) -> method. jobs.delete is ``DELETE projects/{projectId}/jobs/{jobId}/delete``.
_BIGQUERY_ALIASES: dict[tuple[str, str, str], str] = {("jobs", "DELETE", "delete"): "delete"}


def _bigquery(method: str, segments: list[str], params: dict[str, str]) -> ApiCall:
    """/bigquery/v2/projects/P/{datasets[/D[/tables[/T[/data|/insertAll]]]],jobs[/J[/cancel|/delete]],queries[/J]}."""
    call = ApiCall("bigquery")
    if segments[:1] == ["upload"]:
        segments = segments[1:]
        if segments[:1] == ["bigquery"] and segments[2:3] == ["projects"] and segments[4:] == ["jobs"]:
            return call._replace(api_method="bigquery.jobs.insert", resource=f"projects/{segments[3]}")
        return call
    if len(segments) < 4 or segments[0] != "bigquery" or segments[2] != "projects":
        return call
    project, rest = segments[3], segments[4:]
    base = f"projects/{project}"
    if not rest:
        return call._replace(resource=base)
    if rest[0] == "queries":
        if not rest[1:] and method == "POST":
            return call._replace(api_method="bigquery.jobs.query", resource=base)
        if len(rest) == 2 and method == "GET":
            return call._replace(api_method="bigquery.jobs.getQueryResults", resource=f"{base}/jobs/{rest[1]}")
        return call._replace(resource=base)
    if rest[0] == "jobs":
        alias = _BIGQUERY_ALIASES.get(("jobs", method, rest[2])) if len(rest) == 3 else None
        if alias:
            return call._replace(api_method=f"bigquery.jobs.{alias}", resource="/".join([base, *rest[:2]]))
        return _rest("bigquery.jobs", method, rest[1:], "/".join([base, *rest[:2]]), call)
    if rest[0] != "datasets":
        return call._replace(resource=base)
    if len(rest) <= 2:
        return _rest("bigquery.datasets", method, rest[1:], "/".join([base, *rest]), call)
    dataset = "/".join([base, *rest[:2]])
    if rest[2] != "tables":
        return call._replace(resource=dataset)
    if len(rest) == 3:
        return _rest("bigquery.tables", method, [], f"{dataset}/tables", call)
    table = f"{dataset}/tables/{rest[3]}"
    tail = rest[4:]
    if tail == ["data"]:
        return call._replace(api_method="bigquery.tabledata.list" if method == "GET" else None, resource=table)
    if tail == ["insertAll"] and method == "POST":
        return call._replace(api_method="bigquery.tabledata.insertAll", resource=table)
    return _rest("bigquery.tables", method, rest[3:], table, call)


_BY_SERVICE = {"compute": _compute, "bigquery": _bigquery}
