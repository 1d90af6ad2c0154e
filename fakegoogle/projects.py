"""bigquery and cloudresourcemanager: just enough for `bq ls` and gcloud's project lookups (pure)."""

from __future__ import annotations

from .http import Response, json_response
from .storage_model import PROJECT_NUMBER

CREATED = "2024-01-01T00:00:00.000Z"


def bigquery(method: str, segments: list[str]) -> Response | None:
    """GET /bigquery/v2/projects/P/datasets."""
    if (
        method == "GET"
        and len(segments) == 5
        and segments[:3] == ["bigquery", "v2", "projects"]
        and segments[4] == "datasets"
    ):
        project = segments[3]
        return json_response(
            200,
            {
                "kind": "bigquery#datasetList",
                "etag": "ZmFrZS1ldGFn",
                "datasets": [
                    {
                        "kind": "bigquery#dataset",
                        "id": f"{project}:demo_dataset",
                        "datasetReference": {"datasetId": "demo_dataset", "projectId": project},
                        "location": "US",
                        "type": "DEFAULT",
                    }
                ],
            },
        )
    return None


def resource_manager(method: str, segments: list[str]) -> Response | None:
    """GET /v1/projects/P and /v3/projects/P."""
    if method != "GET" or len(segments) != 3 or segments[1] != "projects":
        return None
    project = segments[2]
    if segments[0] == "v1":
        return json_response(
            200,
            {
                "projectNumber": PROJECT_NUMBER,
                "projectId": project,
                "lifecycleState": "ACTIVE",
                "name": project,
                "createTime": CREATED,
                "parent": {"type": "organization", "id": "1"},
            },
        )
    if segments[0] == "v3":
        return json_response(
            200,
            {
                "name": f"projects/{PROJECT_NUMBER}",
                "parent": "organizations/1",
                "projectId": project,
                "state": "ACTIVE",
                "displayName": project,
                "createTime": CREATED,
                "updateTime": CREATED,
                "etag": 'W/"fake"',
            },
        )
    return None
