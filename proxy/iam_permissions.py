"""The IAM permissions each recognised Google API method needs, for ``policy suggest``'s comments.

Keyed by the ``api_method`` names addons/google_api.py produces (Cloud Storage JSON and XML calls
share them). Taken from Google's documentation of each method's permission:

- Cloud Storage: "IAM permissions for JSON methods"
  (https://cloud.google.com/storage/docs/access-control/iam-json);
- Compute Engine: the "IAM Permissions" section of each method in the API reference
  (https://cloud.google.com/compute/docs/reference/rest/v1);
- BigQuery: the "IAM Permissions" section of each method in the API reference
  (https://cloud.google.com/bigquery/docs/reference/rest/v2).
The groups below say more precisely where each comes from.

``also``: permissions needed only in some cases, or instead of one above in some cases (the note
says when); a role drafted from this table lists them apart. A method missing here is reported
as unknown, never guessed: add it with its source rather than deriving a name from the method's.
"""

from __future__ import annotations

from typing import NamedTuple


class Needs(NamedTuple):
    permissions: tuple[str, ...]  # always needed
    also: tuple[str, ...] = ()  # needed in the case ``note`` names
    note: str = ""


def _n(*permissions: str, also: tuple[str, ...] = (), note: str = "") -> Needs:
    return Needs(tuple(permissions), also, note)


_OVERWRITE = "delete when it replaces an existing object"

STORAGE: dict[str, Needs] = {
    "storage.buckets.delete": _n("storage.buckets.delete"),
    "storage.buckets.get": _n("storage.buckets.get",
                              also=("storage.buckets.getIamPolicy",), note="getIamPolicy with projection=full"),
    "storage.buckets.getIamPolicy": _n("storage.buckets.getIamPolicy"),
    "storage.buckets.insert": _n("storage.buckets.create"),
    "storage.buckets.list": _n("storage.buckets.list",
                               also=("storage.buckets.getIamPolicy",), note="getIamPolicy with projection=full"),
    "storage.buckets.lockRetentionPolicy": _n("storage.buckets.update"),
    "storage.buckets.patch": _n("storage.buckets.update",
                                also=("storage.buckets.setIamPolicy",), note="setIamPolicy when it changes ACLs"),
    "storage.buckets.update": _n("storage.buckets.update",
                                 also=("storage.buckets.setIamPolicy",), note="setIamPolicy when it changes ACLs"),
    "storage.buckets.setIamPolicy": _n("storage.buckets.setIamPolicy"),
    "storage.buckets.testIamPermissions": _n(),  # documented as needing no permission
    "storage.notifications.delete": _n("storage.buckets.update"),
    "storage.notifications.get": _n("storage.buckets.get"),
    "storage.notifications.insert": _n("storage.buckets.update"),
    "storage.notifications.list": _n("storage.buckets.get"),
    "storage.objects.compose": _n("storage.objects.create", "storage.objects.get",
                                  also=("storage.objects.delete",), note=_OVERWRITE),
    "storage.objects.copy": _n("storage.objects.create", "storage.objects.get",
                               also=("storage.objects.delete",),
                               note="get on the source, create on the destination; " + _OVERWRITE),
    "storage.objects.delete": _n("storage.objects.delete"),
    "storage.objects.get": _n("storage.objects.get",
                              also=("storage.objects.getIamPolicy",), note="getIamPolicy with projection=full"),
    "storage.objects.insert": _n("storage.objects.create", also=("storage.objects.delete",), note=_OVERWRITE),
    "storage.objects.list": _n("storage.objects.list",
                               also=("storage.objects.getIamPolicy",), note="getIamPolicy with projection=full"),
    "storage.objects.patch": _n("storage.objects.get", "storage.objects.update",
                                also=("storage.objects.getIamPolicy", "storage.objects.setIamPolicy"),
                                note="the IAM policy ones when it changes ACLs"),
    "storage.objects.update": _n("storage.objects.update",
                                 also=("storage.objects.setIamPolicy",), note="setIamPolicy when it changes ACLs"),
    "storage.objects.rewrite": _n("storage.objects.create", "storage.objects.get",
                                  also=("storage.objects.delete",),
                                  note="get on the source, create on the destination; " + _OVERWRITE),
    "storage.objectAccessControls.insert": _n("storage.objects.setIamPolicy"),
    "storage.projects.hmacKeys.create": _n("storage.hmacKeys.create"),
    "storage.projects.hmacKeys.delete": _n("storage.hmacKeys.delete"),
    "storage.projects.hmacKeys.get": _n("storage.hmacKeys.get"),
    "storage.projects.hmacKeys.list": _n("storage.hmacKeys.list"),
    "storage.projects.hmacKeys.update": _n("storage.hmacKeys.update"),
}

# Compute Engine: the "IAM Permissions" block of each method's reference page
# (https://cloud.google.com/compute/docs/reference/rest/v1), as crawled into
# https://github.com/iann0036/iam-dataset (gcp/map.json, "restcrawliamblockv1"); the VM-creation extras
# from "Create a VM that uses a user-managed service account", Required permissions
# (https://cloud.google.com/compute/docs/access/create-enable-service-accounts-for-instances).
_CREATE_VM = ("compute.disks.create", "compute.subnetworks.use", "compute.subnetworks.useExternalIp",
              "compute.instances.setMetadata", "compute.instances.setTags", "compute.instances.setLabels",
              "compute.instances.setServiceAccount", "iam.serviceAccounts.actAs")
_LISTED_TOO = "listed with it in the method's IAM Permissions"

COMPUTE: dict[str, Needs] = {
    "compute.instances.aggregatedList": _n("compute.instances.list"),
    "compute.instances.attachDisk": _n("compute.instances.attachDisk"),
    "compute.instances.delete": _n("compute.instances.delete"),
    "compute.instances.detachDisk": _n("compute.instances.detachDisk"),
    "compute.instances.get": _n("compute.instances.get"),
    # map.json (restcrawliamblockv1 and manual) for instances.getSerialPortOutput, which Google serves at
    # GET .../instances/I/serialPort.
    "compute.instances.getSerialPortOutput": _n("compute.instances.getSerialPortOutput"),
    "compute.instances.insert": _n("compute.instances.create", also=_CREATE_VM,
                                   note="the others as the request asks: new disks, a subnetwork, an external "
                                        "IP, metadata, tags, labels, a service account"),
    "compute.instances.list": _n("compute.instances.list"),
    "compute.instances.reset": _n("compute.instances.reset"),
    "compute.instances.resume": _n("compute.instances.resume"),
    "compute.instances.setLabels": _n("compute.instances.setLabels"),
    "compute.instances.setMachineType": _n("compute.instances.setMachineType"),
    "compute.instances.setMetadata": _n("compute.instances.setMetadata"),
    "compute.instances.setServiceAccount": _n("compute.instances.setServiceAccount"),
    "compute.instances.setTags": _n("compute.instances.setTags"),
    "compute.instances.start": _n("compute.instances.start"),
    "compute.instances.stop": _n("compute.instances.stop"),
    "compute.instances.suspend": _n("compute.instances.suspend"),
    "compute.disks.aggregatedList": _n("compute.disks.list"),
    "compute.disks.createSnapshot": _n("compute.disks.createSnapshot", "compute.snapshots.create"),
    "compute.disks.delete": _n("compute.disks.delete"),
    "compute.disks.get": _n("compute.disks.get"),
    "compute.disks.insert": _n("compute.disks.create"),
    "compute.disks.list": _n("compute.disks.list"),
    "compute.disks.resize": _n("compute.disks.resize"),
    "compute.disks.setLabels": _n("compute.disks.setLabels"),
    "compute.zones.get": _n("compute.zones.get"),
    "compute.zones.list": _n("compute.zones.list"),
    "compute.regions.get": _n("compute.regions.get"),
    "compute.regions.list": _n("compute.regions.list"),
    "compute.machineTypes.get": _n("compute.machineTypes.get"),
    "compute.machineTypes.list": _n("compute.machineTypes.list"),
    "compute.machineTypes.aggregatedList": _n("compute.machineTypes.list"),
    "compute.images.get": _n("compute.images.get"),
    # map.json (restcrawliamblockv1 and manual), and images/getFromFamily's own IAM Permissions section
    # (https://cloud.google.com/compute/docs/reference/rest/v1/images/getFromFamily); GET .../images/family/F.
    "compute.images.getFromFamily": _n("compute.images.getFromFamily"),
    "compute.images.list": _n("compute.images.list"),
    "compute.snapshots.delete": _n("compute.snapshots.delete"),
    "compute.snapshots.get": _n("compute.snapshots.get"),
    "compute.snapshots.list": _n("compute.snapshots.list"),
    "compute.networks.delete": _n("compute.networks.delete"),
    "compute.networks.get": _n("compute.networks.get"),
    "compute.networks.insert": _n("compute.networks.create"),
    "compute.networks.list": _n("compute.networks.list"),
    "compute.subnetworks.delete": _n("compute.subnetworks.delete"),
    "compute.subnetworks.get": _n("compute.subnetworks.get"),
    "compute.subnetworks.insert": _n("compute.subnetworks.create"),
    "compute.subnetworks.list": _n("compute.subnetworks.list"),
    "compute.firewalls.delete": _n("compute.firewalls.delete", "compute.networks.updatePolicy"),
    "compute.firewalls.get": _n("compute.firewalls.get"),
    "compute.firewalls.insert": _n("compute.firewalls.create"),
    "compute.firewalls.list": _n("compute.firewalls.list"),
    "compute.addresses.delete": _n("compute.addresses.delete", also=("compute.addresses.deleteInternal",),
                                   note=_LISTED_TOO),
    "compute.addresses.get": _n("compute.addresses.get"),
    "compute.addresses.insert": _n("compute.addresses.create",
                                   also=("compute.addresses.createInternal", "compute.instances.update"),
                                   note=_LISTED_TOO),
    "compute.addresses.list": _n("compute.addresses.list"),
    "compute.projects.get": _n("compute.projects.get"),
    "compute.projects.setCommonInstanceMetadata": _n("compute.projects.setCommonInstanceMetadata",
                                                     "iam.serviceAccounts.actAs"),
    "compute.zoneOperations.delete": _n("compute.zoneOperations.delete"),
    "compute.zoneOperations.get": _n("compute.zoneOperations.get"),
    "compute.zoneOperations.list": _n("compute.zoneOperations.list"),
    "compute.zoneOperations.wait": _n("compute.zoneOperations.get"),
    "compute.regionOperations.delete": _n("compute.regionOperations.delete"),
    "compute.regionOperations.get": _n("compute.regionOperations.get"),
    "compute.regionOperations.list": _n("compute.regionOperations.list"),
    "compute.regionOperations.wait": _n("compute.regionOperations.get"),
    "compute.globalOperations.aggregatedList": _n("compute.globalOperations.list"),
    "compute.globalOperations.delete": _n("compute.globalOperations.delete"),
    "compute.globalOperations.get": _n("compute.globalOperations.get"),
    "compute.globalOperations.list": _n("compute.globalOperations.list"),
    "compute.globalOperations.wait": _n("compute.globalOperations.get"),
}

# BigQuery: the "IAM Permissions" section of each method's reference page
# (https://cloud.google.com/bigquery/docs/reference/rest/v2), except: datasets.update from "Update dataset
# properties" (https://cloud.google.com/bigquery/docs/updating-datasets); tables.delete on datasets.delete
# from "Manage datasets" (https://cloud.google.com/bigquery/docs/managing-datasets); setIamPolicy on
# datasets.patch/update from the updateMode parameter (UPDATE_FULL, the default, needs it).
_CREATOR = "jobs.create on the project instead when the caller created the job"
_DATASET_ACL = "setIamPolicy with updateMode UPDATE_FULL (the default) or UPDATE_ACL"

BIGQUERY: dict[str, Needs] = {
    "bigquery.datasets.delete": _n("bigquery.datasets.delete",
                                   also=("bigquery.tables.delete",), note="tables.delete with deleteContents"),
    "bigquery.datasets.get": _n("bigquery.datasets.get"),
    "bigquery.datasets.insert": _n("bigquery.datasets.create"),
    "bigquery.datasets.patch": _n("bigquery.datasets.update", "bigquery.datasets.get",
                                  also=("bigquery.datasets.setIamPolicy",), note=_DATASET_ACL),
    "bigquery.datasets.update": _n("bigquery.datasets.update",
                                   also=("bigquery.datasets.setIamPolicy",), note=_DATASET_ACL),
    # "Requires the bigquery.jobs.delete permission on the job resource"
    # (https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/delete); DELETE .../jobs/J/delete.
    "bigquery.jobs.delete": _n("bigquery.jobs.delete"),
    "bigquery.jobs.cancel": _n("bigquery.jobs.update", also=("bigquery.jobs.create",), note=_CREATOR),
    "bigquery.jobs.get": _n("bigquery.jobs.get", also=("bigquery.jobs.create",), note=_CREATOR),
    "bigquery.jobs.getQueryResults": _n("bigquery.jobs.get", "bigquery.tables.getData",
                                        also=("bigquery.jobs.create",),
                                        note=_CREATOR + "; getData on the destination table"),
    "bigquery.jobs.insert": _n("bigquery.jobs.create",
                               also=("bigquery.tables.getData", "bigquery.tables.export"),
                               note="data permissions by job type: getData on what a query reads, export for "
                                    "extract jobs; load, copy and DDL jobs need others"),
    "bigquery.jobs.list": _n(also=("bigquery.jobs.list", "bigquery.jobs.listAll"),
                             note="none for one's own jobs; list (redacted) or listAll to see other users' jobs"),
    "bigquery.jobs.query": _n("bigquery.jobs.create", also=("bigquery.tables.getData",),
                              note="getData on the tables the query reads"),
    "bigquery.tabledata.insertAll": _n("bigquery.tables.updateData", "bigquery.tables.get", "bigquery.datasets.get"),
    "bigquery.tabledata.list": _n("bigquery.tables.getData"),
    "bigquery.tables.delete": _n("bigquery.tables.delete"),
    "bigquery.tables.get": _n("bigquery.tables.get"),
    "bigquery.tables.insert": _n("bigquery.tables.create"),
    "bigquery.tables.list": _n("bigquery.tables.list"),
    "bigquery.tables.patch": _n("bigquery.tables.update", "bigquery.tables.get"),
    "bigquery.tables.update": _n("bigquery.tables.update"),
}

TABLE: dict[str, Needs] = {**STORAGE, **COMPUTE, **BIGQUERY}


def needs(api_method: str) -> Needs | None:
    """What ``api_method`` needs, or None when the table does not know (say so; never guess)."""
    return TABLE.get(api_method)
