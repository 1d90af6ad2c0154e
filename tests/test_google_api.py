"""Table: request shapes real clients send -> service, api_method, resource (None = not guessed)."""

from __future__ import annotations

import pytest

from addons.google_api import ApiCall, describe

S = "storage.googleapis.com"
C = "compute.googleapis.com"
BQ = "bigquery.googleapis.com"
OBJ = "projects/_/buckets/b1/objects/"
CP = "projects/my-proj"

CASES = [
    # Cloud Storage JSON API, as google-cloud-storage / gcsfs / gcloud send it.
    (S, "GET", "/storage/v1/b?project=my-proj&projection=noAcl&prettyPrint=false",
     ("storage", "storage.buckets.list", "projects/my-proj")),
    (S, "POST", "/storage/v1/b?project=my-proj", ("storage", "storage.buckets.insert", "projects/my-proj")),
    (S, "GET", "/storage/v1/b/b1?projection=noAcl&prettyPrint=false",
     ("storage", "storage.buckets.get", "projects/_/buckets/b1")),
    (S, "PATCH", "/storage/v1/b/b1", ("storage", "storage.buckets.patch", "projects/_/buckets/b1")),
    (S, "DELETE", "/storage/v1/b/b1", ("storage", "storage.buckets.delete", "projects/_/buckets/b1")),
    (S, "GET", "/storage/v1/b/b1/iam", ("storage", "storage.buckets.getIamPolicy", "projects/_/buckets/b1")),
    (S, "PUT", "/storage/v1/b/b1/iam", ("storage", "storage.buckets.setIamPolicy", "projects/_/buckets/b1")),
    (S, "GET", "/storage/v1/b/b1/iam/testPermissions?permissions=storage.buckets.get",
     ("storage", "storage.buckets.testIamPermissions", "projects/_/buckets/b1")),
    (S, "GET", "/storage/v1/b/b1/o?projection=noAcl&prefix=logs%2F&prettyPrint=false",
     ("storage", "storage.objects.list", "projects/_/buckets/b1")),
    (S, "GET", "/storage/v1/b/b1/o/logs%2F2024%2Fa.txt?alt=media",
     ("storage", "storage.objects.get", OBJ + "logs/2024/a.txt")),
    (S, "GET", "/storage/v1/b/b1/o/a.txt?projection=noAcl", ("storage", "storage.objects.get", OBJ + "a.txt")),
    (S, "PATCH", "/storage/v1/b/b1/o/a.txt", ("storage", "storage.objects.patch", OBJ + "a.txt")),
    (S, "DELETE", "/storage/v1/b/b1/o/dir%2Fa.txt?prettyPrint=false",
     ("storage", "storage.objects.delete", OBJ + "dir/a.txt")),
    (S, "GET", "/download/storage/v1/b/b1/o/dir%2Fa.txt?generation=1700000000000001&alt=media",
     ("storage", "storage.objects.get", OBJ + "dir/a.txt")),
    (S, "POST", "/upload/storage/v1/b/b1/o?uploadType=multipart",
     ("storage", "storage.objects.insert", "projects/_/buckets/b1")),
    (S, "POST", "/upload/storage/v1/b/b1/o?uploadType=resumable&name=big%2Ffile.bin",
     ("storage", "storage.objects.insert", OBJ + "big/file.bin")),
    (S, "PUT", "/upload/storage/v1/b/b1/o?uploadType=resumable&upload_id=ADPycdt",
     ("storage", "storage.objects.insert", "projects/_/buckets/b1")),
    (S, "POST", "/storage/v1/b/b1/o/src.txt/rewriteTo/b/b2/o/dst.txt",
     ("storage", "storage.objects.rewrite", "projects/_/buckets/b2/objects/dst.txt")),
    (S, "POST", "/storage/v1/b/b1/o/src.txt/copyTo/b/b2/o/d%2Fdst.txt",
     ("storage", "storage.objects.copy", "projects/_/buckets/b2/objects/d/dst.txt")),
    (S, "POST", "/storage/v1/b/b1/o/out.txt/compose", ("storage", "storage.objects.compose", OBJ + "out.txt")),
    (S, "GET", "/storage/v1/b/b1/o/a.txt/acl", ("storage", "storage.objectAccessControls.list", OBJ + "a.txt")),
    (S, "GET", "/storage/v1/b/b1/acl/allUsers",
     ("storage", "storage.bucketAccessControls.get", "projects/_/buckets/b1")),
    (S, "GET", "/storage/v1/b/b1/notificationConfigs",
     ("storage", "storage.notifications.list", "projects/_/buckets/b1")),
    (S, "GET", "/storage/v1/projects/my-proj/serviceAccount",
     ("storage", "storage.projects.serviceAccount.get", "projects/my-proj")),
    (S, "POST", "/batch/storage/v1", ("storage", "storage.batch", None)),
    ("www.googleapis.com", "GET", "/storage/v1/b/b1/o/a.txt?alt=media",
     ("storage", "storage.objects.get", OBJ + "a.txt")),
    ("www.googleapis.com", "POST", "/upload/storage/v1/b/b1/o?uploadType=media&name=a.txt",
     ("storage", "storage.objects.insert", OBJ + "a.txt")),
    # Cloud Storage XML API, path style (gsutil/boto, signed URLs) and virtual-host style.
    (S, "GET", "/", ("storage", "storage.buckets.list", None)),
    (S, "GET", "/b1?prefix=logs%2F&delimiter=%2F", ("storage", "storage.objects.list", "projects/_/buckets/b1")),
    (S, "PUT", "/b1", ("storage", "storage.buckets.insert", "projects/_/buckets/b1")),
    (S, "GET", "/b1?versioning", ("storage", "storage.buckets.get", "projects/_/buckets/b1")),
    (S, "GET", "/b1/dir/a.txt", ("storage", "storage.objects.get", OBJ + "dir/a.txt")),
    (S, "HEAD", "/b1/a.txt", ("storage", "storage.objects.get", OBJ + "a.txt")),
    (S, "PUT", "/b1/a%20b.txt", ("storage", "storage.objects.insert", OBJ + "a b.txt")),
    (S, "DELETE", "/b1/a.txt", ("storage", "storage.objects.delete", OBJ + "a.txt")),
    (S, "POST", "/b1/big.bin?uploads", ("storage", "storage.objects.insert", OBJ + "big.bin")),
    (S, "PUT", "/b1/big.bin?partNumber=2&uploadId=XYZ", ("storage", "storage.objects.insert", OBJ + "big.bin")),
    (S, "GET", "/b1/a.txt?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=abc",
     ("storage", "storage.objects.get", OBJ + "a.txt")),
    (S, "GET", "/b1/a.txt?acl", ("storage", None, OBJ + "a.txt")),
    ("b1.storage.googleapis.com", "GET", "/dir/a.txt", ("storage", "storage.objects.get", OBJ + "dir/a.txt")),
    ("b1.storage.googleapis.com", "GET", "/?prefix=x", ("storage", "storage.objects.list", "projects/_/buckets/b1")),
    ("my.dotted.bucket.storage.googleapis.com", "PUT", "/o",
     ("storage", "storage.objects.insert", "projects/_/buckets/my.dotted.bucket/objects/o")),
    # Compute Engine, as google-cloud-compute (REST) and gcloud send it.
    (C, "GET", "/compute/v1/projects/my-proj", ("compute", "compute.projects.get", CP)),
    (C, "GET", "/compute/v1/projects/my-proj/zones", ("compute", "compute.zones.list", CP + "/zones")),
    (C, "GET", "/compute/v1/projects/my-proj/zones/us-central1-a",
     ("compute", "compute.zones.get", CP + "/zones/us-central1-a")),
    (C, "GET", "/compute/v1/projects/my-proj/zones/us-central1-a/instances?maxResults=500",
     ("compute", "compute.instances.list", CP + "/zones/us-central1-a/instances")),
    (C, "POST", "/compute/v1/projects/my-proj/zones/us-central1-a/instances",
     ("compute", "compute.instances.insert", CP + "/zones/us-central1-a/instances")),
    (C, "GET", "/compute/v1/projects/my-proj/zones/us-central1-a/instances/vm-1",
     ("compute", "compute.instances.get", CP + "/zones/us-central1-a/instances/vm-1")),
    (C, "DELETE", "/compute/v1/projects/my-proj/zones/us-central1-a/instances/vm-1",
     ("compute", "compute.instances.delete", CP + "/zones/us-central1-a/instances/vm-1")),
    (C, "POST", "/compute/v1/projects/my-proj/zones/us-central1-a/instances/vm-1/stop",
     ("compute", "compute.instances.stop", CP + "/zones/us-central1-a/instances/vm-1")),
    (C, "POST", "/compute/v1/projects/my-proj/zones/us-central1-a/instances/vm-1/setMetadata",
     ("compute", "compute.instances.setMetadata", CP + "/zones/us-central1-a/instances/vm-1")),
    (C, "GET", "/compute/v1/projects/my-proj/zones/us-central1-a/instances/vm-1/serialPort?port=1",
     ("compute", "compute.instances.getSerialPortOutput", CP + "/zones/us-central1-a/instances/vm-1")),
    (C, "POST", "/compute/v1/projects/my-proj/zones/us-central1-a/instances/bulkInsert",
     ("compute", "compute.instances.bulkInsert", CP + "/zones/us-central1-a/instances")),
    (C, "GET", "/compute/v1/projects/my-proj/aggregated/instances?returnPartialSuccess=true",
     ("compute", "compute.instances.aggregatedList", CP)),
    (C, "GET", "/compute/v1/projects/my-proj/aggregated/operations",
     ("compute", "compute.globalOperations.aggregatedList", CP)),
    (C, "GET", "/compute/v1/projects/my-proj/zones/us-central1-a/operations/operation-123",
     ("compute", "compute.zoneOperations.get", CP + "/zones/us-central1-a/operations/operation-123")),
    (C, "POST", "/compute/v1/projects/my-proj/zones/us-central1-a/operations/operation-123/wait",
     ("compute", "compute.zoneOperations.wait", CP + "/zones/us-central1-a/operations/operation-123")),
    (C, "GET", "/compute/v1/projects/my-proj/regions/us-central1/operations/op-9",
     ("compute", "compute.regionOperations.get", CP + "/regions/us-central1/operations/op-9")),
    (C, "GET", "/compute/v1/projects/my-proj/global/operations",
     ("compute", "compute.globalOperations.list", CP + "/global/operations")),
    (C, "GET", "/compute/v1/projects/my-proj/global/networks/default",
     ("compute", "compute.networks.get", CP + "/global/networks/default")),
    (C, "GET", "/compute/beta/projects/my-proj/regions/us-central1/subnetworks",
     ("compute", "compute.subnetworks.list", CP + "/regions/us-central1/subnetworks")),
    (C, "POST", "/compute/v1/projects/my-proj/global/firewalls",
     ("compute", "compute.firewalls.insert", CP + "/global/firewalls")),
    ("www.googleapis.com", "GET", "/compute/v1/projects/my-proj/zones/z/disks",
     ("compute", "compute.disks.list", CP + "/zones/z/disks")),
    # BigQuery.
    (BQ, "GET", "/bigquery/v2/projects/my-proj/datasets?all=false",
     ("bigquery", "bigquery.datasets.list", CP + "/datasets")),
    (BQ, "GET", "/bigquery/v2/projects/my-proj/datasets/ds", ("bigquery", "bigquery.datasets.get", CP + "/datasets/ds")),
    (BQ, "GET", "/bigquery/v2/projects/my-proj/datasets/ds/tables",
     ("bigquery", "bigquery.tables.list", CP + "/datasets/ds/tables")),
    (BQ, "GET", "/bigquery/v2/projects/my-proj/datasets/ds/tables/t",
     ("bigquery", "bigquery.tables.get", CP + "/datasets/ds/tables/t")),
    (BQ, "GET", "/bigquery/v2/projects/my-proj/datasets/ds/tables/t/data?maxResults=10",
     ("bigquery", "bigquery.tabledata.list", CP + "/datasets/ds/tables/t")),
    (BQ, "POST", "/bigquery/v2/projects/my-proj/datasets/ds/tables/t/insertAll",
     ("bigquery", "bigquery.tabledata.insertAll", CP + "/datasets/ds/tables/t")),
    (BQ, "POST", "/bigquery/v2/projects/my-proj/jobs", ("bigquery", "bigquery.jobs.insert", CP + "/jobs")),
    (BQ, "GET", "/bigquery/v2/projects/my-proj/jobs/job_1?location=US",
     ("bigquery", "bigquery.jobs.get", CP + "/jobs/job_1")),
    (BQ, "POST", "/bigquery/v2/projects/my-proj/jobs/job_1/cancel",
     ("bigquery", "bigquery.jobs.cancel", CP + "/jobs/job_1")),
    (BQ, "POST", "/bigquery/v2/projects/my-proj/queries", ("bigquery", "bigquery.jobs.query", CP)),
    (BQ, "GET", "/bigquery/v2/projects/my-proj/queries/job_1",
     ("bigquery", "bigquery.jobs.getQueryResults", CP + "/jobs/job_1")),
    (BQ, "POST", "/upload/bigquery/v2/projects/my-proj/jobs?uploadType=resumable",
     ("bigquery", "bigquery.jobs.insert", CP)),
    (BQ, "DELETE", "/bigquery/v2/projects/my-proj/jobs/job_1/delete?location=US",
     ("bigquery", "bigquery.jobs.delete", CP + "/jobs/job_1")),
    (BQ, "DELETE", "/bigquery/v2/projects/my-proj/jobs/job_1", ("bigquery", "bigquery.jobs.delete", CP + "/jobs/job_1")),
    # Other Google services: the service from the host, nothing guessed.
    ("pubsub.googleapis.com", "POST", "/v1/projects/p/topics/t:publish", ("pubsub", None, None)),
    ("us-central1-aiplatform.googleapis.com", "POST", "/v1/projects/p/locations/l/endpoints/e:predict",
     ("aiplatform", None, None)),
    ("storage.mtls.googleapis.com", "GET", "/storage/v1/b/b1", ("storage", "storage.buckets.get",
                                                                "projects/_/buckets/b1")),
    ("STORAGE.GOOGLEAPIS.COM.", "GET", "/b1/a.txt", ("storage", "storage.objects.get", OBJ + "a.txt")),
    ("storage.googleapis.com:443", "GET", "/b1/a.txt", ("storage", "storage.objects.get", OBJ + "a.txt")),
    # Recognised service, unknown call: method and resource absent rather than guessed.
    (S, "POST", "/storage/v1/b/b1/o/a.txt", ("storage", None, OBJ + "a.txt")),
    (S, "GET", "/storage/v1/b/b1/somethingNew", ("storage", None, None)),
    (S, "GET", "/storage/v1", ("storage", None, None)),
    (C, "PATCH", "/compute/v1/projects/my-proj/zones/z/instances", ("compute", None, CP + "/zones/z/instances")),
    (C, "GET", "/compute/v1/projects/my-proj/zones/z/instances/vm/a/b", ("compute", None, CP + "/zones/z/instances/vm")),
    (C, "GET", "/discovery/v1/apis", ("compute", None, None)),
    ("www.googleapis.com", "GET", "/oauth2/v3/certs", (None, None, None)),
    # Not Google at all.
    ("googleapis.com", "GET", "/storage/v1/b", (None, None, None)),
    ("evilgoogleapis.com", "GET", "/storage/v1/b", (None, None, None)),
    ("storage.googleapis.com.evil.net", "GET", "/b1/a.txt", (None, None, None)),
    ("www.example.test", "GET", "/storage/v1/b/b1", (None, None, None)),
]


@pytest.mark.parametrize(("host", "method", "path", "expected"), CASES,
                         ids=[f"{m} {h}{p}"[:90] for h, m, p, _ in CASES])
def test_describe(host: str, method: str, path: str, expected: tuple[str | None, ...]):
    assert describe(host, method, path) == ApiCall(*expected)


# Compute Engine paths that do not spell their method the generic way, as Google's v1 reference index
# (https://cloud.google.com/compute/docs/reference/rest/v1) gives each method's HTTP verb and path.
Z = "/compute/v1/projects/my-proj/zones/z"
R = "/compute/v1/projects/my-proj/regions/r"
G = "/compute/v1/projects/my-proj/global"
ZP, RP, GP = CP + "/zones/z", CP + "/regions/r", CP + "/global"
COMPUTE_ALIASES = [
    # Path segment is not the method's name.
    ("GET", Z + "/instances/vm/serialPort", "compute.instances.getSerialPortOutput", ZP + "/instances/vm"),
    ("GET", Z + "/instances/vm/serialPort?port=2&start=-3", "compute.instances.getSerialPortOutput",
     ZP + "/instances/vm"),
    ("GET", "/compute/beta/projects/my-proj/zones/z/instances/vm/serialPort", "compute.instances.getSerialPortOutput",
     ZP + "/instances/vm"),
    ("GET", Z + "/instances/vm/screenshot", "compute.instances.getScreenshot", ZP + "/instances/vm"),
    ("GET", Z + "/instances/vm/referrers", "compute.instances.listReferrers", ZP + "/instances/vm"),
    ("GET", G + "/images/family/debian-12", "compute.images.getFromFamily", GP + "/images/family/debian-12"),
    ("GET", "/compute/v1/projects/debian-cloud/global/images/family/debian-12", "compute.images.getFromFamily",
     "projects/debian-cloud/global/images/family/debian-12"),
    # Custom methods sent with PATCH.
    ("PATCH", Z + "/instances/vm/setShieldedInstanceIntegrityPolicy", "compute.instances.setShieldedInstanceIntegrityPolicy",
     ZP + "/instances/vm"),
    ("PATCH", Z + "/instances/vm/updateDisplayDevice", "compute.instances.updateDisplayDevice", ZP + "/instances/vm"),
    ("PATCH", Z + "/instances/vm/updateNetworkInterface?networkInterface=nic0", "compute.instances.updateNetworkInterface",
     ZP + "/instances/vm"),
    ("PATCH", Z + "/instances/vm/updateShieldedInstanceConfig", "compute.instances.updateShieldedInstanceConfig",
     ZP + "/instances/vm"),
    ("PATCH", G + "/networks/net-1/updatePeering", "compute.networks.updatePeering", GP + "/networks/net-1"),
    # PATCH on the member is "update" where the collection has no "patch".
    ("PATCH", Z + "/disks/d1", "compute.disks.update", ZP + "/disks/d1"),
    ("PATCH", R + "/disks/d1", "compute.disks.update", RP + "/disks/d1"),
    ("PATCH", R + "/commitments/c1", "compute.commitments.update", RP + "/commitments/c1"),
    ("PATCH", Z + "/reservations/res-1", "compute.reservations.update", ZP + "/reservations/res-1"),
    ("PATCH", Z + "/storagePools/sp-1", "compute.storagePools.update", ZP + "/storagePools/sp-1"),
    # On the collection itself.
    ("PATCH", Z + "/autoscalers?autoscaler=as-1", "compute.autoscalers.patch", ZP + "/autoscalers/as-1"),
    ("PUT", R + "/autoscalers?autoscaler=as-1", "compute.autoscalers.update", RP + "/autoscalers/as-1"),
    ("PATCH", Z + "/autoscalers", "compute.autoscalers.patch", ZP + "/autoscalers"),
    ("GET", Z + "/instanceSettings", "compute.instanceSettings.get", ZP + "/instanceSettings"),
    ("PATCH", Z + "/instanceSettings?updateMask=metadata", "compute.instanceSettings.patch", ZP + "/instanceSettings"),
    ("GET", G + "/snapshotSettings", "compute.snapshotSettings.get", GP + "/snapshotSettings"),
    ("PATCH", G + "/snapshotSettings", "compute.snapshotSettings.patch", GP + "/snapshotSettings"),
    ("POST", Z + "/disks/stopGroupAsyncReplication", "compute.disks.stopGroupAsyncReplication", ZP + "/disks"),
    ("POST", R + "/disks/stopGroupAsyncReplication", "compute.disks.stopGroupAsyncReplication", RP + "/disks"),
    ("GET", G + "/backendServices/listUsable", "compute.backendServices.listUsable", GP + "/backendServices"),
    ("GET", R + "/backendServices/listUsable", "compute.backendServices.listUsable", RP + "/backendServices"),
    ("GET", R + "/firewallPolicies/getEffectiveFirewalls?network=n", "compute.firewallPolicies.getEffectiveFirewalls",
     RP + "/firewallPolicies"),
    ("GET", G + "/securityPolicies/listPreconfiguredExpressionSets", "compute.securityPolicies.listPreconfiguredExpressionSets",
     GP + "/securityPolicies"),
    ("GET", G + "/sslPolicies/listAvailableFeatures", "compute.sslPolicies.listAvailableFeatures", GP + "/sslPolicies"),
    ("GET", R + "/sslPolicies/listAvailableFeatures", "compute.sslPolicies.listAvailableFeatures", RP + "/sslPolicies"),
    # Paths without global/ (targetHttp(s)Proxies) and under aggregated/.
    ("POST", "/compute/v1/projects/my-proj/targetHttpProxies/tp-1/setUrlMap", "compute.targetHttpProxies.setUrlMap",
     GP + "/targetHttpProxies/tp-1"),
    ("POST", "/compute/v1/projects/my-proj/targetHttpsProxies/tp-1/setUrlMap", "compute.targetHttpsProxies.setUrlMap",
     GP + "/targetHttpsProxies/tp-1"),
    ("POST", "/compute/v1/projects/my-proj/targetHttpsProxies/tp-1/setSslCertificates",
     "compute.targetHttpsProxies.setSslCertificates", GP + "/targetHttpsProxies/tp-1"),
    ("GET", "/compute/v1/projects/my-proj/aggregated/subnetworks/listUsable", "compute.subnetworks.listUsable", CP),
    # A collection nested under a member.
    ("GET", Z + "/instanceGroupManagers/m1/resizeRequests", "compute.instanceGroupManagerResizeRequests.list",
     ZP + "/instanceGroupManagers/m1/resizeRequests"),
    ("POST", Z + "/instanceGroupManagers/m1/resizeRequests", "compute.instanceGroupManagerResizeRequests.insert",
     ZP + "/instanceGroupManagers/m1/resizeRequests"),
    ("GET", Z + "/instanceGroupManagers/m1/resizeRequests/rr-1", "compute.instanceGroupManagerResizeRequests.get",
     ZP + "/instanceGroupManagers/m1/resizeRequests/rr-1"),
    ("DELETE", Z + "/instanceGroupManagers/m1/resizeRequests/rr-1", "compute.instanceGroupManagerResizeRequests.delete",
     ZP + "/instanceGroupManagers/m1/resizeRequests/rr-1"),
    ("POST", Z + "/instanceGroupManagers/m1/resizeRequests/rr-1/cancel",
     "compute.instanceGroupManagerResizeRequests.cancel", ZP + "/instanceGroupManagers/m1/resizeRequests/rr-1"),
]

# Paths the generic reading already named right, next to the aliases: they must stay as they were.
COMPUTE_UNCHANGED = [
    ("GET", Z + "/instances/vm/getEffectiveFirewalls", "compute.instances.getEffectiveFirewalls", ZP + "/instances/vm"),
    ("GET", Z + "/instances/vm/getShieldedInstanceIdentity", "compute.instances.getShieldedInstanceIdentity",
     ZP + "/instances/vm"),
    ("GET", Z + "/instances/vm/getIamPolicy", "compute.instances.getIamPolicy", ZP + "/instances/vm"),
    ("POST", Z + "/instances/vm/setMetadata", "compute.instances.setMetadata", ZP + "/instances/vm"),
    ("PATCH", Z + "/instances/vm", "compute.instances.patch", ZP + "/instances/vm"),
    ("PUT", Z + "/instances/vm", "compute.instances.update", ZP + "/instances/vm"),
    ("POST", Z + "/instances/bulkInsert", "compute.instances.bulkInsert", ZP + "/instances"),
    ("POST", R + "/instances/bulkInsert", "compute.instances.bulkInsert", RP + "/instances"),
    ("POST", Z + "/disks/bulkInsert", "compute.disks.bulkInsert", ZP + "/disks"),
    ("GET", Z + "/disks/d1", "compute.disks.get", ZP + "/disks/d1"),
    ("DELETE", Z + "/disks/d1", "compute.disks.delete", ZP + "/disks/d1"),
    ("GET", G + "/images/debian-12-v1", "compute.images.get", GP + "/images/debian-12-v1"),
    ("GET", G + "/images", "compute.images.list", GP + "/images"),
    ("PATCH", G + "/images/img-1", "compute.images.patch", GP + "/images/img-1"),
    # An image may be named "family": its own methods keep their names.
    ("GET", G + "/images/family", "compute.images.get", GP + "/images/family"),
    ("GET", G + "/images/family/getIamPolicy", "compute.images.getIamPolicy", GP + "/images/family"),
    ("GET", G + "/backendServices/bs-1", "compute.backendServices.get", GP + "/backendServices/bs-1"),
    ("PATCH", G + "/backendServices/bs-1", "compute.backendServices.patch", GP + "/backendServices/bs-1"),
    ("GET", Z + "/autoscalers", "compute.autoscalers.list", ZP + "/autoscalers"),
    ("GET", Z + "/autoscalers/as-1", "compute.autoscalers.get", ZP + "/autoscalers/as-1"),
    ("PATCH", G + "/networks/net-1", "compute.networks.patch", GP + "/networks/net-1"),
    ("GET", G + "/networks/net-1/listPeeringRoutes", "compute.networks.listPeeringRoutes", GP + "/networks/net-1"),
    ("GET", R + "/routers/rt-1/getRouterStatus", "compute.routers.getRouterStatus", RP + "/routers/rt-1"),
    ("GET", R + "/instanceGroupManagers/m1/listErrors", "compute.instanceGroupManagers.listErrors",
     RP + "/instanceGroupManagers/m1"),
    ("POST", Z + "/instanceGroupManagers/m1/resize?size=3", "compute.instanceGroupManagers.resize",
     ZP + "/instanceGroupManagers/m1"),
    ("GET", "/compute/v1/projects/my-proj/aggregated/subnetworks", "compute.subnetworks.aggregatedList", CP),
    ("GET", "/compute/v1/projects/my-proj/getXpnHost", "compute.projects.getXpnHost", CP),
    # Not in Google's reference: still not named.
    ("PATCH", Z + "/instances/vm/setMetadata", None, ZP + "/instances/vm"),
    ("PUT", Z + "/instances/vm/updateNetworkInterface", None, ZP + "/instances/vm"),
    ("GET", Z + "/instances/vm/serialPort/extra", None, ZP + "/instances/vm"),
    ("PATCH", Z + "/instances", None, ZP + "/instances"),
    ("POST", "/compute/v1/projects/my-proj/targetHttpProxies/tp-1/setQuicOverride", None, CP),
]


@pytest.mark.parametrize(("method", "path", "api_method", "resource"), COMPUTE_ALIASES + COMPUTE_UNCHANGED,
                         ids=[f"{m} {p}"[:90] for m, p, _, _ in COMPUTE_ALIASES + COMPUTE_UNCHANGED])
def test_compute_method_names(method: str, path: str, api_method: str | None, resource: str):
    assert describe(C, method, path) == ApiCall("compute", api_method, resource)


def test_compute_aliases_on_the_shared_host():
    assert describe("www.googleapis.com", "GET", Z + "/instances/vm/serialPort") == ApiCall(
        "compute", "compute.instances.getSerialPortOutput", ZP + "/instances/vm")
