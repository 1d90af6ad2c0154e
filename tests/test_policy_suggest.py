"""``policy suggest``: generalisation, IAM comments, and a draft that allows exactly what was seen."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

from addons import google_api
from addons.policy_file import build_policy, read_policy_file
from addons.policy_model import Policy, request_call
from proxy import cli, iam_permissions, settings
from proxy.errors import ExitStatus
from proxy.policy_suggest import (
    object_patterns,
    read_audit,
    resource_patterns,
    stem_pattern,
    suggest,
)

SA = "sa@p.iam.gserviceaccount.com"
OTHER = "other@p.iam.gserviceaccount.com"
OBJ = "projects/_/buckets/{}/objects/{}"


def rec(method: str, host: str, path: str, *, principal: str = SA, auth: str = "injected",
        content_type: str = "") -> dict[str, object]:
    """An audit record as the proxy writes it (service, api_method, resource from google_api)."""
    record: dict[str, object] = {"time": "2026-11-28T10:00:00.000Z", "method": method, "host": host, "path": path,
                                 "status": 200, "auth": auth, "principal": principal}
    for name, value in zip(("service", "api_method", "resource"), google_api.describe(host, method, path, content_type)):
        if value:
            record[name] = value
    return record


S = "storage.googleapis.com"
RECORDS = [
    rec("GET", S, "/storage/v1/b/logs-1/o/2024%2Fa.txt"),
    rec("GET", S, "/download/storage/v1/b/logs-1/o/2024%2Fb.txt?alt=media"),
    rec("GET", S, "/storage/v1/b/logs-2/o/2024%2F03%2Fc.txt"),
    rec("GET", S, "/storage/v1/b/logs-1/o?prefix=2024"),
    rec("POST", S, "/upload/storage/v1/b/results/o?uploadType=multipart&name=run%2Fout.json"),
    rec("GET", S, "/results/run/summary.txt"),  # XML API
    rec("GET", "compute.googleapis.com", "/compute/v1/projects/p/zones/us-central1-a/instances"),
    rec("POST", "compute.googleapis.com", "/compute/v1/projects/p/zones/us-central1-a/instances/vm-1/stop"),
    rec("POST", "compute.googleapis.com", "/compute/v1/projects/p/zones/us-central1-a/instances/vm-2/stop"),
    rec("GET", "compute.googleapis.com", "/compute/v1/projects/p/zones/us-central1-a/operations/operation-17-a"),
    rec("POST", "bigquery.googleapis.com", "/bigquery/v2/projects/p/jobs"),
    rec("GET", "bigquery.googleapis.com", "/bigquery/v2/projects/p/queries/job_Xy12"),
    rec("GET", "bigquery.googleapis.com", "/bigquery/v2/projects/p/queries/job_Zq34"),
    rec("GET", "bigquery.googleapis.com", "/bigquery/v2/projects/p/datasets/d/tables/t/data"),
    rec("GET", "foo.googleapis.com", "/v1/widgets?page=2"),
    rec("GET", "foo.googleapis.com", "/v1/widgets"),
    rec("POST", "foo.googleapis.com", "/v1/widgets:sweep"),
    rec("POST", "pubsub.googleapis.com", "/google.pubsub.v1.Publisher/Publish", content_type="application/grpc"),
    rec("GET", S, "/storage/v1/b/secret/o/x", principal=OTHER),
    rec("DELETE", S, "/storage/v1/b/logs-1/o/2024%2Fa.txt", auth="denied"),
    rec("POST", "oauth2.googleapis.com", "/token", auth="none", principal=""),
]
GRPC = {"pubsub.googleapis.com"}


def lines(records: list[dict[str, object]]) -> list[str]:
    return [json.dumps(r) + "\n" for r in records]


def policy_of(text: str, tmp_path: Path) -> Policy:
    """The draft as --config reads it: through the settings loader, then the policy reader."""
    path = tmp_path / "suggested.toml"
    path.write_text(text)
    settings.from_sources({"config": str(path)}, environ={})  # the option loader accepts it as is
    return build_policy(read_policy_file(path), inject_host=["*.googleapis.com"])


def allowed(policy: Policy, method: str, host: str, path: str, content_type: str = "") -> bool:
    return policy.decide(request_call(host, method, path, content_type)).allowed


# -- generalising ------------------------------------------------------------------------------------

def test_objects_sharing_a_directory_become_a_glob():
    assert resource_patterns([OBJ.format("logs-1", "2024/a.txt"), OBJ.format("logs-1", "2024/b.txt")]) == [
        "projects/_/buckets/logs-1/objects/2024/**"]
    assert object_patterns(["2024/01/a", "2024/01/b"]) == ["2024/01/**"]
    assert object_patterns(["2024/01/a", "2024/02/b"]) == ["2024/**"]


def test_few_or_unrelated_objects_stay_exact():
    assert object_patterns(["2024/a.txt"]) == ["2024/a.txt"]
    assert object_patterns(["a.txt", "b.txt", "x/y"]) == ["a.txt", "b.txt", "x/y"]
    assert object_patterns(["log-1.txt", "log-2.txt"]) == ["log-*"]


def test_bucket_names_generalise_only_when_two_share_a_stem():
    assert resource_patterns([OBJ.format("logs-1", "a/x"), OBJ.format("logs-2", "a/y")]) == [
        "projects/_/buckets/logs-*/objects/a/**"]
    assert resource_patterns([OBJ.format("logs-1", "a.txt"), OBJ.format("data", "b.txt")]) == [
        OBJ.format("data", "b.txt"), OBJ.format("logs-1", "a.txt")]
    assert stem_pattern(["logs-1"]) is None
    assert stem_pattern(["logs-1", "logs-1"]) is None
    assert stem_pattern(["logs-1", "logs-22"]) == "logs-*"
    assert stem_pattern(["2024", "2025"]) is None  # no stem: never a bare *
    assert stem_pattern(["logs-1", "data-2"]) is None


def test_never_a_whole_bucket_or_everything():
    many = [OBJ.format(b, f"{d}/{n}") for b in ("a-1", "a-2") for d in ("x", "y") for n in ("1", "2")]
    patterns = resource_patterns(many)
    assert patterns == ["projects/_/buckets/a-*/objects/x/**", "projects/_/buckets/a-*/objects/y/**"]
    assert not any(p.endswith("/objects/**") or p.startswith("**") for p in patterns)


def test_members_of_other_collections():
    zone = "projects/p/zones/z"
    assert resource_patterns([f"{zone}/instances/vm-1", f"{zone}/instances/vm-2"]) == [f"{zone}/instances/vm-*"]
    assert resource_patterns([f"{zone}/instances/vm-1", "projects/p/zones/y/instances/vm-2"]) == [
        "projects/p/zones/y/instances/vm-2", f"{zone}/instances/vm-1"]
    assert resource_patterns(["projects/p/jobs/job_a", "projects/p/jobs/b"]) == ["projects/p/jobs/*"]
    assert resource_patterns([f"{zone}/instances"]) == [f"{zone}/instances"]  # a list call stays exact
    assert resource_patterns(["projects/_/buckets/logs-1", "projects/_/buckets/logs-2"]) == [
        "projects/_/buckets/logs-*"]


# -- the draft ---------------------------------------------------------------------------------------

def test_draft_reparses_and_allows_exactly_the_recorded_calls(tmp_path):
    text = suggest(read_audit(lines(RECORDS), principal=SA))
    policy = policy_of(text, tmp_path)
    assert policy.default == "deny"
    assert policy.warnings == ()
    kept = [r for r in RECORDS if r["principal"] == SA and r["auth"] == "injected"]
    for r in kept:
        content_type = "application/grpc" if r["host"] in GRPC else ""
        assert allowed(policy, str(r["method"]), str(r["host"]), str(r["path"]), content_type), r
    denied = [
        ("DELETE", S, "/storage/v1/b/logs-1/o/2024%2Fa.txt"),  # recorded as denied, and never allowed
        ("GET", S, "/storage/v1/b/other/o/2024%2Fa.txt"),  # another bucket
        ("GET", S, "/storage/v1/b/logs-1/o/2023%2Fa.txt"),  # outside the prefix seen
        ("GET", S, "/storage/v1/b/secret/o/x"),  # the other principal's call
        ("POST", S, "/upload/storage/v1/b/logs-1/o?uploadType=multipart&name=2024%2Fz"),  # another method
        ("POST", "compute.googleapis.com", "/compute/v1/projects/p/zones/us-central1-a/instances/vm-1/start"),
        ("POST", "compute.googleapis.com", "/compute/v1/projects/p/zones/us-central1-a/instances/db-1/stop"),
        ("GET", "bigquery.googleapis.com", "/bigquery/v2/projects/q/queries/job_Xy12"),  # another project
        ("DELETE", "foo.googleapis.com", "/v1/widgets"),  # host rule: only the HTTP methods seen
        ("GET", "oauth2.googleapis.com", "/token"),  # not made with our credentials
    ]
    for method, host, path in denied:
        assert not allowed(policy, method, host, path), (method, host, path)
    # Ids made up per call: a new job or operation of the same project passes.
    assert allowed(policy, "GET", "bigquery.googleapis.com", "/bigquery/v2/projects/p/queries/job_New")


def test_draft_comments_iam_permissions_unknown_methods_and_the_role(tmp_path):
    text = suggest(read_audit(lines(RECORDS), principal=SA))
    assert '\n# storage.objects.get on storage.googleapis.com: 4 calls, 4 resources\n# IAM: storage.objects.get\n' in text
    assert "# IAM: storage.objects.create\n#      maybe also storage.objects.delete: delete when it replaces" in text
    assert "# IAM: bigquery.jobs.create\n" in text and "# IAM: bigquery.tables.getData\n" in text
    assert "# IAM: compute.instances.stop\n" in text
    assert ("# IAM: unknown permission for google.pubsub.v1.Publisher.Publish "
            "(not in the table; look it up)") in text
    assert "# some calls named no resource, so this rule names none" in text  # the gRPC call
    # Unrecognised calls: a host rule with the HTTP methods seen, and the paths with counts.
    assert "# foo.googleapis.com: 3 calls with no recognised API method" in text
    assert "#   GET /v1/widgets (2)\n#   POST /v1/widgets:sweep (1)\n" in text
    role = next(line for line in text.splitlines() if "gcloud iam roles create" in line)
    permissions = role.rpartition("--permissions=")[2].split(",")
    assert permissions == sorted(permissions)
    assert set(permissions) == {
        "storage.objects.get", "storage.objects.list", "storage.objects.create", "compute.instances.list",
        "compute.instances.stop", "compute.zoneOperations.get", "bigquery.jobs.create", "bigquery.jobs.get",
        "bigquery.tables.getData"}
    assert "# Unknown permissions (look these methods up): google.pubsub.v1.Publisher.Publish" in text
    assert "oauth2.googleapis.com (1)" in text  # said, not allowed
    assert "storage.objects.delete on" not in text and "secret" not in text


def test_principal_filter_keeps_one_principals_calls(tmp_path):
    text = suggest(read_audit(lines(RECORDS), principal=OTHER), principal=OTHER)
    policy = policy_of(text, tmp_path)
    assert [r.name for r in policy.rules] == ["storage.objects.get on storage.googleapis.com"]
    assert policy.rules[0].resources == ("projects/_/buckets/secret/objects/x",)
    assert not allowed(policy, "GET", S, "/storage/v1/b/logs-1/o/2024%2Fa.txt")
    assert f"for principal {OTHER}" in text
    everyone = read_audit(lines(RECORDS))
    assert len(everyone.calls) == len(read_audit(lines(RECORDS), principal=SA).calls) + 1


def test_malformed_lines_are_skipped_and_counted():
    junk = ["not json\n", "[1, 2]\n", '{"host": "storage.googleapis.com"}\n', "\n",
            json.dumps({"method": "GET", "host": "bad host!", "path": "/"}) + "\n",
            json.dumps({**RECORDS[0], "api_method": 7}) + "\n"]
    read = read_audit(lines(RECORDS[:2]) + junk)
    assert read.malformed == 5 and len(read.calls) == 2
    assert "5 malformed lines skipped" in suggest(read)


def test_output_is_deterministic():
    shuffled = list(RECORDS)
    random.Random(7).shuffle(shuffled)
    assert suggest(read_audit(lines(shuffled))) == suggest(read_audit(lines(RECORDS)))


def test_toml_escaping_of_odd_names(tmp_path):
    odd = rec("GET", S, '/storage/v1/b/b-1/o/we%22ird%5Cname%09x')
    text = suggest(read_audit(lines([odd])))
    policy = policy_of(text, tmp_path)
    assert policy.rules[0].resources == ('projects/_/buckets/b-1/objects/we"ird\\name\tx',)
    assert allowed(policy, "GET", S, '/storage/v1/b/b-1/o/we%22ird%5Cname%09x')


def test_table_covers_the_methods_google_api_names():
    for name in ("storage.objects.get", "storage.objects.list", "storage.objects.insert", "storage.objects.delete",
                 "storage.objects.patch", "storage.objects.update", "storage.objects.copy",
                 "storage.objects.rewrite", "storage.objects.compose", "storage.buckets.get", "storage.buckets.list",
                 "storage.buckets.insert", "storage.buckets.delete", "storage.buckets.patch",
                 "storage.buckets.update", "storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy",
                 "compute.instances.get", "compute.instances.list", "compute.instances.insert",
                 "compute.instances.delete", "compute.instances.start", "compute.instances.stop",
                 "compute.disks.get", "compute.zones.list", "compute.regions.get", "compute.networks.list",
                 "bigquery.datasets.get", "bigquery.tables.get", "bigquery.jobs.insert", "bigquery.jobs.get",
                 "bigquery.jobs.list", "bigquery.jobs.getQueryResults", "bigquery.tabledata.list"):
        assert iam_permissions.needs(name) is not None, name
    assert iam_permissions.needs("storage.objects.insert").permissions == ("storage.objects.create",)
    assert iam_permissions.needs("storage.objects.rewrite").permissions == (
        "storage.objects.create", "storage.objects.get")
    assert iam_permissions.needs("bigquery.jobs.insert").permissions == ("bigquery.jobs.create",)
    assert iam_permissions.needs("bigquery.tabledata.list").permissions == ("bigquery.tables.getData",)
    for name in ("compute.instances.getSerialPortOutput", "compute.images.getFromFamily", "bigquery.jobs.delete"):
        assert iam_permissions.needs(name) == iam_permissions.Needs((name,)), name
    assert iam_permissions.needs("storage.objects.watchAll") is None  # not documented here: unknown


# -- the command -------------------------------------------------------------------------------------

def test_cli_suggest_prints_the_draft_and_counts_malformed_lines(tmp_path, capsys):
    log = tmp_path / "audit.jsonl"
    log.write_text("".join(lines(RECORDS[:3])) + "garbage\n")
    assert cli.main(["policy", "suggest", str(log)]) == ExitStatus.OK
    out, err = capsys.readouterr()
    assert out.startswith("# Drafted by `gcp-auth-proxy policy suggest`") and 'default = "deny"' in out
    assert err == f"gcp-auth-proxy: skipped 1 malformed line(s) in {log}\n"
    assert policy_of(out, tmp_path).rules


def test_cli_suggest_reads_stdin(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(lines(RECORDS[:1]))))
    assert cli.main(["policy", "suggest", "-", "--principal", SA]) == ExitStatus.OK
    assert "storage.objects.get on storage.googleapis.com" in capsys.readouterr().out


def test_cli_suggest_missing_log_is_one_sentence(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert cli.main(["policy", "suggest", str(missing)]) == ExitStatus.USAGE
    out, err = capsys.readouterr()
    assert out == "" and err == f"gcp-auth-proxy: cannot read audit log {missing}: No such file or directory\n"


@pytest.mark.parametrize("auth", ["client", "none"])
def test_calls_without_our_credentials_but_recognised_are_kept(auth):
    read = read_audit(lines([rec("GET", S, "/storage/v1/b/b/o/x", auth=auth)]))
    assert [c.api_method for c in read.calls] == ["storage.objects.get"]
