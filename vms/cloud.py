"""OpenStack clouds: credentials, the driver of a cloud, and the portal's objects mirrored there.

A host of kind ``openstack`` is one cloud region. The portal logs in with the credentials stored
(encrypted with Fernet, never shown again) on the host, or with a named cloud from clouds.yaml.
What a tenant owns in the cloud lives in its Keystone project (``CloudProject``): created by the
portal (project mode "managed") or mapped by an admin to an existing project ("existing").

The portal's objects are mirrored lazily and remembered so a launch costs few API calls:

* flavors: ``cloud_flavor`` creates (or, when the portal flavor changed, recreates) the Nova flavor,
  private flavors with access for the projects of the tenants that may use them (``CloudFlavor``);
* images: ``cloud_image`` uploads the portal's image file to Glance once per cloud, with the
  portal's visibility, reusing an identical image already there (``ImageReplica`` with pool ``glance``);
* quotas: ``push_quota`` sets the project's Nova compute quota (instances, cores, RAM) to the
  tenant's portal quota and reads it back.

Nothing here talks to the database while holding a lock across a cloud call.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from images.models import Image, ImageReplica
from portal.backends.base import BackendError, NotFound
from portal.backends.openstack.driver import OpenStackAuth, OpenStackDriver, ServerState
from portal.models import Tenant
from portal.services import ConflictError, ServiceError
from vms import realtime
from vms.models import CloudFlavor, CloudProject, Flavor, Host, Instance

log = logging.getLogger(__name__)

CREDENTIAL_FIELDS = (
    "username",
    "password",
    "project_name",
    "user_domain_name",
    "project_domain_name",
    "application_credential_id",
    "application_credential_secret",
)
SECRET_FIELDS = ("password", "application_credential_secret")
# Taken from a clouds.yaml entry as well (not entered in the portal): ids instead of names.
CLOUDS_YAML_ID_FIELDS = ("project_id", "user_domain_id", "project_domain_id")
GLANCE_POOL = "glance"  # ImageReplica.pool of an image uploaded to a cloud's Glance
GLANCE_FORMATS = {"qcow2", "raw", "iso", "vmdk", "vhd", "vdi"}


# ---------------------------------------------------------------- credentials


def _fernet() -> Fernet:
    """LABCLOUD_CREDENTIALS_KEY (a Fernet key) or, without one, a key derived from SECRET_KEY."""
    key = settings.LABCLOUD_CREDENTIALS_KEY
    if not key:
        digest = hashlib.sha256(b"labcloud-cloud-credentials:" + settings.SECRET_KEY.encode()).digest()
        key = base64.urlsafe_b64encode(digest).decode()
    return Fernet(key.encode() if isinstance(key, str) else key)


def encrypt_credentials(values: Mapping[str, str]) -> str:
    clean = {k: str(v) for k, v in values.items() if k in CREDENTIAL_FIELDS and v not in (None, "")}
    return _fernet().encrypt(json.dumps(clean, sort_keys=True).encode()).decode() if clean else ""


def decrypt_credentials(host: Host) -> dict[str, str]:
    if not host.credentials:
        return {}
    try:
        return json.loads(_fernet().decrypt(host.credentials.encode()))
    except (InvalidToken, ValueError) as exc:
        raise BackendError(
            _("The stored credentials of %(host)s cannot be decrypted (was the key changed?); enter them again.")
            % {"host": host.name}
        ) from exc


def credentials_summary(host: Host) -> dict[str, str]:
    """What may be shown about the stored credentials: the login names, never a secret."""
    try:
        values = decrypt_credentials(host)
    except BackendError:
        return {"error": _("cannot be decrypted")}
    return {k: v for k, v in values.items() if k not in SECRET_FIELDS}


def auth_for(host: Host) -> OpenStackAuth:
    """How to log in to the cloud: a clouds.yaml entry (``cloud_name``) or the Keystone URL + stored credentials."""
    if host.cloud_name:
        import openstack.config

        try:
            cloud = openstack.config.OpenStackConfig().get_one(cloud=host.cloud_name)
        except Exception as exc:  # openstack.config raises its own exception types for unknown clouds
            raise BackendError(
                _("Cloud “%(cloud)s” is not in clouds.yaml: %(error)s") % {"cloud": host.cloud_name, "error": exc}
            ) from exc
        auth = dict(cloud.config.get("auth") or {})
        values = {k: auth.get(k) for k in CREDENTIAL_FIELDS + CLOUDS_YAML_ID_FIELDS if auth.get(k)}
        stored = {k: v for k, v in decrypt_credentials(host).items() if v}
        for key in stored:  # what the portal stores wins: a name entered here replaces clouds.yaml's id
            if key.endswith("_name"):
                values.pop(key.removesuffix("_name") + "_id", None)
        values.update(stored)
        auth_url = host.auth_url or auth.get("auth_url") or ""
        region = host.region or cloud.config.get("region_name") or None
        verify = (cloud.config.get("cacert") or cloud.config.get("verify", True)) if host.verify_tls else False
    else:
        values = decrypt_credentials(host)
        auth_url, region, verify = host.auth_url, host.region or None, host.verify_tls
    try:
        return OpenStackAuth(
            auth_url=auth_url,
            region_name=region,
            verify=verify,
            timeout=settings.LABCLOUD_CLOUD_TIMEOUT,
            **{k: v for k, v in values.items() if k in CREDENTIAL_FIELDS + CLOUDS_YAML_ID_FIELDS},
        )
    except ValueError as exc:
        raise BackendError(_("Cloud %(host)s: %(error)s") % {"host": host.name, "error": exc}) from exc


_drivers: dict[int, tuple[str, OpenStackDriver]] = {}
_drivers_lock = threading.Lock()


def _auth_key(host: Host) -> str:
    parts = [host.cloud_name, host.auth_url, host.region, host.credentials, str(host.verify_tls)]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def cloud_driver(host: Host) -> OpenStackDriver:
    """The driver of a cloud, kept per process (its Keystone token is reused) until the host's login changes."""
    key = _auth_key(host)
    with _drivers_lock:
        found = _drivers.get(host.pk)
        if found is not None and found[0] == key:
            return found[1]
    driver = OpenStackDriver(auth_for(host), poll=settings.LABCLOUD_CLOUD_POLL_SECONDS)
    with _drivers_lock:
        old = _drivers.get(host.pk)
        _drivers[host.pk] = (key, driver)
    if old is not None:
        old[1].close()
    return driver


def forget_driver(host: Host) -> None:
    with _drivers_lock:
        old = _drivers.pop(host.pk, None)
    if old is not None:
        old[1].close()


# ---------------------------------------------------------------- the cloud itself


def verify_cloud(*, host: Host) -> Host:
    """Log in and ask Nova for its versions: UP, or DOWN with the error as the reason."""
    from vms.hosts import mark_host_down

    try:
        info = cloud_driver(host).verify()
    except BackendError as exc:
        log.info("cloud %s is down: %s", host.name, exc.message)
        return mark_host_down(host=host, reason=exc.message)
    host.state = Host.State.UP if host.enabled else Host.State.DISABLED
    host.state_reason = ""
    host.libvirt_version = f"Nova {info.compute_max_microversion}"[:32]
    host.last_seen = timezone.now()
    host.save(update_fields=["state", "state_reason", "libvirt_version", "last_seen"])
    return host


# ---------------------------------------------------------------- projects and quotas


def managed_project_name(tenant: Tenant) -> str:
    return f"{settings.LABCLOUD_DOMAIN_PREFIX}{tenant.slug}"


def project_for(*, host: Host, tenant: Tenant) -> str:
    """The tenant's project id on the cloud; created (managed mode) on first use, with the quota pushed."""
    found = CloudProject.objects.filter(host=host, tenant=tenant).first()
    if found is not None:
        return found.project_id
    if host.project_mode != Host.ProjectMode.MANAGED:
        raise ServiceError(
            _("Tenant “%(tenant)s” is not mapped to a project on cloud %(host)s; an administrator must map it.")
            % {"tenant": tenant.name, "host": host.name}
        )
    info = cloud_driver(host).ensure_project(
        name=managed_project_name(tenant),
        description=_("labcloud tenant %(name)s") % {"name": tenant.name},
        domain=host.project_domain or "Default",
    )
    try:
        with transaction.atomic():
            CloudProject.objects.create(host=host, tenant=tenant, project_id=info.id, managed=True)
    except IntegrityError:
        pass  # a concurrent launch of the same tenant recorded it first: the same project
    push_quota_to(host=host, tenant=tenant)
    return CloudProject.objects.get(host=host, tenant=tenant).project_id


def delete_projects(*, projects: list[tuple[int, str]]) -> None:
    """Remove managed projects of a deleted tenant (their servers are gone: a tenant with instances stays)."""
    for host_id, project_id in projects:
        host = Host.objects.filter(pk=host_id).first()
        if host is None:
            continue
        try:
            driver = cloud_driver(host)
            driver.delete_project(project_id=project_id)
            driver.forget_compute_quota(project_id=project_id)
        except BackendError as exc:
            log.warning("could not delete project %s on %s: %s", project_id, host.name, exc.message)


def _nova_limits(tenant: Tenant) -> dict[str, int]:
    from portal.services import ensure_quota

    quota = ensure_quota(tenant=tenant)
    return {"instances": quota.instances, "cores": quota.vcpus, "ram_mib": quota.ram_mib}


def push_quota_to(*, host: Host, tenant: Tenant) -> bool:
    """Set the project's Nova compute quota to the tenant's quota and read it back; the outcome is recorded."""
    project = CloudProject.objects.filter(host=host, tenant=tenant).first()
    if project is None:
        return False
    try:
        cloud_driver(host).set_compute_quota(project_id=project.project_id, **_nova_limits(tenant))
    except BackendError as exc:
        log.warning("quota push to %s for %s failed: %s", host.name, tenant.slug, exc.message)
        CloudProject.objects.filter(pk=project.pk).update(quota_error=exc.message[:255])
        return False
    CloudProject.objects.filter(pk=project.pk).update(quota_synced_at=timezone.now(), quota_error="")
    return True


def push_quota(*, tenant: Tenant) -> dict[str, bool]:
    """Push the tenant's quota to every cloud it has a project on: {cloud name: pushed}."""
    results = {}
    for project in CloudProject.objects.filter(tenant=tenant).select_related("host"):
        results[project.host.name] = push_quota_to(host=project.host, tenant=tenant)
    return results


# ---------------------------------------------------------------- flavors


def nova_flavor_name(flavor: Flavor) -> str:
    return f"{settings.LABCLOUD_DOMAIN_PREFIX}{flavor.name}"


def _flavor_projects(host: Host, flavor: Flavor) -> list[str]:
    if flavor.is_public:
        return []
    return sorted(
        CloudProject.objects.filter(host=host, tenant__in=flavor.tenants.all()).values_list("project_id", flat=True)
    )


def _signature(flavor: Flavor, projects: list[str]) -> str:
    raw = json.dumps([flavor.name, flavor.vcpus, flavor.ram_mib, flavor.disk_gib, flavor.is_public, projects])
    return hashlib.sha256(raw.encode()).hexdigest()


def cloud_flavor(*, host: Host, flavor: Flavor) -> str:
    """The Nova flavor id of a portal flavor on this cloud, (re)created when the portal flavor changed."""
    projects = _flavor_projects(host, flavor)
    signature = _signature(flavor, projects)
    found = CloudFlavor.objects.filter(host=host, flavor=flavor).first()
    if found is not None and found.signature == signature:
        return found.cloud_id
    info = cloud_driver(host).ensure_flavor(
        name=nova_flavor_name(flavor),
        vcpus=flavor.vcpus,
        ram_mib=flavor.ram_mib,
        disk_gib=flavor.disk_gib,
        is_public=flavor.is_public,
        project_ids=projects,
    )
    if found is not None and found.cloud_id != info.id:
        # the old copy (another name after a rename; recreated ones are gone already): not needed any more
        cloud_driver(host).delete_flavor(flavor_id=found.cloud_id)
    CloudFlavor.objects.update_or_create(
        host=host, flavor=flavor, defaults={"cloud_id": info.id, "signature": signature}
    )
    return info.id


def sync_flavor(*, flavor_id: int) -> dict[str, str]:
    """Bring every cloud's copy of the flavor up to date after an edit; a disabled flavor leaves the clouds."""
    results: dict[str, str] = {}
    flavor = Flavor.objects.filter(pk=flavor_id).first()
    for row in CloudFlavor.objects.filter(flavor_id=flavor_id).select_related("host"):
        try:
            if flavor is None or flavor.disabled:
                cloud_driver(row.host).delete_flavor(flavor_id=row.cloud_id)
                row.delete()
                results[row.host.name] = "deleted"
            else:
                results[row.host.name] = cloud_flavor(host=row.host, flavor=flavor)
        except BackendError as exc:
            log.warning("flavor sync to %s failed: %s", row.host.name, exc.message)
            results[row.host.name] = f"error: {exc.message}"
    return results


def forget_flavor_copies(*, flavor: Flavor) -> list[tuple[int, str]]:
    """(cloud id, Nova flavor id) of a flavor about to be deleted, for ``delete_flavor_copies`` after commit."""
    return list(CloudFlavor.objects.filter(flavor=flavor).values_list("host_id", "cloud_id"))


def delete_flavor_copies(*, copies: list[tuple[int, str]]) -> None:
    for host_id, cloud_id in copies:
        host = Host.objects.filter(pk=host_id).first()
        if host is None:
            continue
        try:
            cloud_driver(host).delete_flavor(flavor_id=cloud_id)
        except BackendError as exc:
            log.warning("could not delete flavor %s on %s: %s", cloud_id, host.name, exc.message)


# ---------------------------------------------------------------- images


def glance_visibility(image: Image) -> str:
    return {"public": "public", "shared": "shared"}.get(image.visibility, "private")


def _projects_allowed(*, host: Host, image_id: str) -> set[str]:
    """The cloud projects that may use a Glance image: the owners of the portal images it backs (an identical
    image is reused by checksum, so one Glance image may back several) and the tenants those are shared with.
    """
    images = Image.objects.filter(replicas__host=host, replicas__volume=image_id)
    tenants = Q(tenant_id__in=images.values("tenant_id")) | Q(
        tenant__in=Tenant.objects.filter(shared_images__in=images).values("pk")
    )
    return set(CloudProject.objects.filter(tenants, host=host).values_list("project_id", flat=True))


def _align_copy(
    driver: OpenStackDriver,
    *,
    host: Host,
    image: Image,
    image_id: str,
    project_id: str | None,
    prune: bool = False,
) -> bool:
    """Make a Glance copy match the portal image's visibility now; False when it must be uploaded again.

    A private image must be owned by the tenant's project: a copy owned elsewhere is deleted (it may have
    been public before) and uploaded again. A shared one gets the tenant's project as a member; with
    ``prune`` (after a sharing change, not at launch) it also loses the members no tenant allowed to use
    it has (a tenant taken off its list).
    """
    visibility = glance_visibility(image)
    try:
        found = driver.image(image_id=image_id)
    except NotFound:
        return False
    if found.status != "active" or (visibility == "private" and project_id and found.owner != project_id):
        driver.delete_image(image_id=image_id)
        return False
    if found.visibility != visibility:
        driver.set_image_visibility(image_id=image_id, visibility=visibility)
    if visibility == "shared":
        if project_id:
            driver.add_image_member(image_id=image_id, project_id=project_id)
        if prune:
            allowed = _projects_allowed(host=host, image_id=image_id)
            for member in driver.image_members(image_id=image_id):
                if member not in allowed and member != project_id:
                    driver.remove_image_member(image_id=image_id, project_id=member)
    return True


def cloud_image(
    *,
    host: Host,
    image: Image,
    project_id: str,
    report: Callable[[int], None] | None = None,
    recheck: bool = False,
) -> str:
    """The Glance image id of a portal image on this cloud: uploaded once (or reused by checksum), then remembered.

    Private images belong to the tenant's project; public and shared ones to the portal's own project,
    shared ones with the tenant's project added as a member. One upload at a time: the replica row is
    claimed (state COPYING) and a concurrent caller gets a ConflictError and waits, as for libvirt hosts.

    A recorded copy is trusted without asking Glance (visibility changes reach it through
    ``sync_image_copies``); ``recheck`` asks Glance first, for when Nova did not find the copy.
    """
    from images.services import _copy_stale_after

    driver = cloud_driver(host)
    visibility = glance_visibility(image)
    replica, created = ImageReplica.objects.get_or_create(
        image=image, host=host, defaults={"pool": GLANCE_POOL, "volume": "", "state": ImageReplica.State.COPYING}
    )
    if not created:
        if replica.state == ImageReplica.State.READY:
            if not recheck:
                if visibility == "shared":
                    driver.add_image_member(image_id=replica.volume, project_id=project_id)
                return replica.volume
            if _align_copy(driver, host=host, image=image, image_id=replica.volume, project_id=project_id):
                return replica.volume
            claimable = Q(state=ImageReplica.State.READY)
        else:
            claimable = Q(state=ImageReplica.State.FAILED) | Q(
                state=ImageReplica.State.COPYING, updated_at__lt=timezone.now() - _copy_stale_after()
            )
        claimed = ImageReplica.objects.filter(claimable, pk=replica.pk).update(
            state=ImageReplica.State.COPYING, volume="", error="", updated_at=timezone.now()
        )
        if not claimed:
            raise ConflictError(
                _("Image “%(name)s” is being uploaded to %(host)s already.") % {"name": image.name, "host": host.name}
            )
    disk_format = image.stored_format or image.disk_format
    try:
        if disk_format not in GLANCE_FORMATS:
            raise ServiceError(_("Image format %(format)s cannot go to Glance.") % {"format": disk_format})
        if report is not None:
            report(0)
        uploaded = driver.upload_image(
            path=image.path,
            name=f"{settings.LABCLOUD_DOMAIN_PREFIX}{image.name}"[:255],
            disk_format="iso" if image.kind == Image.Kind.ISO else disk_format,
            visibility=visibility,
            project_id=project_id if visibility == "private" else None,
            properties={"labcloud_image": str(image.pk), "min_disk": image.min_disk_gib, "min_ram": image.min_ram_mib},
        )
        if uploaded.reused:  # an identical image was there: make sure it is shared as the portal's is now
            _align_copy(driver, host=host, image=image, image_id=uploaded.id, project_id=project_id)
        elif visibility == "shared":
            driver.add_image_member(image_id=uploaded.id, project_id=project_id)
    except (BackendError, ServiceError) as exc:
        ImageReplica.objects.filter(pk=replica.pk).update(state=ImageReplica.State.FAILED, error=exc.message[:1000])
        raise
    ImageReplica.objects.filter(pk=replica.pk).update(
        volume=uploaded.id, state=ImageReplica.State.READY, error="", updated_at=timezone.now()
    )
    if report is not None:
        report(100)
    return uploaded.id


def sync_image_copies(*, image_id: int) -> dict[str, str]:
    """After an image's visibility or sharing changed: every cloud's copy follows at once.

    A private one leaves public view, and a shared one stops being shared with tenants taken off its list.
    """
    results: dict[str, str] = {}
    image = Image.objects.filter(pk=image_id).first()
    replicas = ImageReplica.objects.filter(image_id=image_id, state=ImageReplica.State.READY).select_related("host")
    for replica in replicas.filter(host__kind=Host.Kind.OPENSTACK):
        try:
            driver = cloud_driver(replica.host)
            project = (
                CloudProject.objects.filter(host=replica.host, tenant_id=image.tenant_id).first() if image else None
            )
            if image is None or not _align_copy(
                driver,
                host=replica.host,
                image=image,
                image_id=replica.volume,
                project_id=project.project_id if project else None,
                prune=True,
            ):
                replica.delete()
                results[replica.host.name] = "removed"
            else:
                results[replica.host.name] = glance_visibility(image)
        except BackendError as exc:
            log.warning("image copy on %s not updated: %s", replica.host.name, exc.message)
            results[replica.host.name] = f"error: {exc.message}"
    return results


# ---------------------------------------------------------------- state sync (the watcher)


NOVA_TO_INSTANCE = {
    "running": Instance.State.RUNNING,
    "paused": Instance.State.PAUSED,
    "shutoff": Instance.State.SHUTOFF,
    "error": Instance.State.ERROR,
}


def _apply_server(instance: Instance, server: ServerState) -> bool:
    from vms.hosts import _set_state

    if server.state == "deleted":
        if instance.state == Instance.State.ERROR:  # keep the reason it failed with (e.g. a launch refused)
            return False
        return _set_state(
            instance=instance, state=Instance.State.ERROR, reason=_("The server was deleted in the cloud.")
        )
    changed = False
    addresses = list(server.addresses)
    if addresses != list(instance.addresses or []) and not instance.task:
        now = timezone.now()
        Instance.objects.filter(pk=instance.pk).update(addresses=addresses, updated_at=now)
        instance.addresses, instance.updated_at = addresses, now
        realtime.instance_changed(instance)
        changed = True
    target = NOVA_TO_INSTANCE.get(server.state)
    if target is None or server.busy:
        return changed
    reason = server.fault if target == Instance.State.ERROR else ""
    return _set_state(instance=instance, state=target, reason=reason) or changed


def sync_cloud(*, host: Host, since: datetime | None = None) -> dict[str, int]:
    """Copy Nova's server states into the rows: changes since ``since`` (with deletions), or all (a reconcile).

    A full reconcile also marks instances whose server is gone. Raises BackendError (after marking the
    cloud down) when the cloud does not answer.
    """
    from vms.hosts import _owned_by_a_task, _set_state, mark_host_down

    driver = cloud_driver(host)
    try:
        servers = driver.list_servers(changes_since=since)
    except BackendError as exc:
        mark_host_down(host=host, reason=exc.message)
        raise
    if host.state != Host.State.UP and host.enabled:
        Host.objects.filter(pk=host.pk).update(state=Host.State.UP, state_reason="", last_seen=timezone.now())
    by_id = {s.id: s for s in servers}
    counts = {"servers": len(servers), "changed": 0, "vanished": 0}
    rows = Instance.objects.filter(host=host).exclude(cloud_id="").exclude(_owned_by_a_task()).select_related("tenant")
    if since is not None:
        rows = rows.filter(cloud_id__in=list(by_id))
    for instance in rows:
        server = by_id.get(instance.cloud_id)
        if server is None:  # not listed in a full reconcile: the server is gone
            if instance.state != Instance.State.ERROR and _set_state(
                instance=instance, state=Instance.State.ERROR, reason=_("The server vanished from the cloud.")
            ):
                counts["vanished"] += 1
            continue
        if _apply_server(instance, server):
            counts["changed"] += 1
    Host.objects.filter(pk=host.pk).update(last_seen=timezone.now())
    return counts


def poll_window(last: datetime | None) -> datetime | None:
    """``changes-since`` for the next poll: a little before the last one (clocks and Nova's second granularity)."""
    return None if last is None else last - timedelta(seconds=settings.LABCLOUD_CLOUD_POLL_OVERLAP_SECONDS)
