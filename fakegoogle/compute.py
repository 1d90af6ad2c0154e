"""compute.googleapis.com: a couple of fixed instances, zones and aggregated lists (pure)."""

from __future__ import annotations

from typing import Any

from .http import Response, google_error, json_response

BASE = "https://www.googleapis.com/compute/v1"
INSTANCE_ZONE = "us-central1-a"
ZONES = ("us-central1-a", "us-central1-b", "europe-west1-b")
INSTANCE_NAMES = ("demo-vm-1", "demo-vm-2")


def instance(project: str, zone: str, name: str, index: int) -> dict[str, Any]:
    zone_url = f"{BASE}/projects/{project}/zones/{zone}"
    return {
        "kind": "compute#instance",
        "id": str(4_000_000_000_000_000_000 + index),
        "creationTimestamp": "2024-01-15T09:30:00.000-08:00",
        "name": name,
        "machineType": f"{zone_url}/machineTypes/e2-medium",
        "status": "RUNNING",
        "zone": zone_url,
        "canIpForward": False,
        "networkInterfaces": [
            {
                "kind": "compute#networkInterface",
                "network": f"{BASE}/projects/{project}/global/networks/default",
                "subnetwork": f"{BASE}/projects/{project}/regions/{zone.rsplit('-', 1)[0]}/subnetworks/default",
                "networkIP": f"10.128.0.{index + 2}",
                "name": "nic0",
                "accessConfigs": [
                    {
                        "kind": "compute#accessConfig",
                        "type": "ONE_TO_ONE_NAT",
                        "name": "External NAT",
                        "natIP": f"203.0.113.{index + 10}",
                        "networkTier": "PREMIUM",
                    }
                ],
                "fingerprint": "bXlGaW5nZXI=",
                "stackType": "IPV4_ONLY",
            }
        ],
        "disks": [
            {
                "kind": "compute#attachedDisk",
                "type": "PERSISTENT",
                "mode": "READ_WRITE",
                "source": f"{zone_url}/disks/{name}",
                "deviceName": "persistent-disk-0",
                "index": 0,
                "boot": True,
                "autoDelete": True,
                "interface": "SCSI",
                "diskSizeGb": "10",
            }
        ],
        "metadata": {"kind": "compute#metadata", "fingerprint": "ZmFrZUZpbmc="},
        "serviceAccounts": [
            {
                "email": "metadata-sa@fake-project.iam.gserviceaccount.com",
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            }
        ],
        "selfLink": f"{zone_url}/instances/{name}",
        "scheduling": {
            "onHostMaintenance": "MIGRATE",
            "automaticRestart": True,
            "preemptible": False,
        },
        "cpuPlatform": "Intel Broadwell",
        "labelFingerprint": "42WmSpB8rSM=",
        "startRestricted": False,
        "deletionProtection": False,
        "fingerprint": "ZmFrZWluc3Q=",
        "lastStartTimestamp": "2024-01-15T09:30:10.000-08:00",
    }


def instances_in(project: str, zone: str) -> list[dict[str, Any]]:
    if zone != INSTANCE_ZONE:
        return []
    return [instance(project, zone, name, i) for i, name in enumerate(INSTANCE_NAMES)]


def zone_json(project: str, zone: str, index: int) -> dict[str, Any]:
    region = zone.rsplit("-", 1)[0]
    return {
        "kind": "compute#zone",
        "id": str(2000 + index),
        "name": zone,
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "description": zone,
        "status": "UP",
        "region": f"{BASE}/projects/{project}/regions/{region}",
        "selfLink": f"{BASE}/projects/{project}/zones/{zone}",
        "availableCpuPlatforms": ["Intel Broadwell"],
        "supportsPzs": False,
    }


def compute(method: str, segments: list[str]) -> Response | None:
    """Handle /compute/v1/projects/P/...; None when the path is not ours."""
    if method != "GET" or segments[:3] != ["compute", "v1", "projects"] or len(segments) < 5:
        return None
    project, rest = segments[3], segments[4:]
    prefix = f"{BASE}/projects/{project}"
    if rest == ["zones"]:
        return json_response(
            200,
            {
                "kind": "compute#zoneList",
                "id": f"projects/{project}/zones",
                "items": [zone_json(project, z, i) for i, z in enumerate(ZONES)],
                "selfLink": f"{prefix}/zones",
            },
        )
    if len(rest) == 2 and rest[0] == "zones":
        if rest[1] not in ZONES:
            return google_error(
                404, f"The resource 'projects/{project}/zones/{rest[1]}' was not found"
            )
        return json_response(200, zone_json(project, rest[1], ZONES.index(rest[1])))
    if rest == ["aggregated", "instances"]:
        items: dict[str, Any] = {}
        for zone in ZONES:
            found = instances_in(project, zone)
            items[f"zones/{zone}"] = (
                {"instances": found}
                if found
                else {
                    "warning": {
                        "code": "NO_RESULTS_ON_PAGE",
                        "message": f"There are no results for scope 'zones/{zone}' on this page.",
                        "data": [{"key": "scope", "value": f"zones/{zone}"}],
                    }
                }
            )
        return json_response(
            200,
            {
                "kind": "compute#instanceAggregatedList",
                "id": f"projects/{project}/aggregated/instances",
                "items": items,
                "selfLink": f"{prefix}/aggregated/instances",
            },
        )
    if len(rest) >= 3 and rest[0] == "zones" and rest[2] == "instances":
        zone = rest[1]
        if len(rest) == 3:
            return json_response(
                200,
                {
                    "kind": "compute#instanceList",
                    "id": f"projects/{project}/zones/{zone}/instances",
                    "items": instances_in(project, zone),
                    "selfLink": f"{prefix}/zones/{zone}/instances",
                },
            )
        if len(rest) == 4:
            match = next((i for i in instances_in(project, zone) if i["name"] == rest[3]), None)
            if match is None:
                return google_error(
                    404,
                    f"The resource 'projects/{project}/zones/{zone}/instances/"
                    f"{rest[3]}' was not found",
                )
            return json_response(200, match)
    return None
