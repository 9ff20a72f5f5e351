"""The OpenStack adapter: instances are Nova servers in the tenant's project, snapshots are Glance images.

A launch makes (once, and remembers) the tenant's project, the Nova flavor and the Glance image
(``vms.compute.openstack.mirror``, ``.images``), then the server, and polls until it is ACTIVE.
Nova places and counts there: the portal knows no capacity of a cloud. The watcher polls Nova
(``reconcile``: changes since the last poll, which include deletions, or every server).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from images.distribution import wait_for_copy
from images.models import Image, ImageReplica
from portal.backends.base import BackendError, HostUnreachable
from portal.backends.openstack.driver import AuthFailed, ConsoleUnavailable, QuotaExceeded, ServerState
from portal.services import ConflictError, ServiceError
from portal.texts import said
from vms import operations
from vms.compute import state
from vms.compute.base import AdapterBase, Capability, ConsoleEndpoint, FirewallPlan, HostFact
from vms.compute.openstack import login
from vms.compute.openstack.firewall import apply_plan as apply_firewall_plan
from vms.compute.openstack.images import cloud_image
from vms.compute.openstack.login import cloud_driver
from vms.compute.openstack.mirror import cloud_flavor, project_for
from vms.compute.state import Observed, mark_host_answered, mark_host_down
from vms.models import CloudProject, Host, Instance, Operation, Snapshot
from vms.security_groups import firewall_plan

log = logging.getLogger(__name__)

# Nova places, limits and keeps the disks there: what the portal offers on a cloud.
CAPABILITIES = frozenset(
    {
        Capability.POWER,
        Capability.PAUSE,
        Capability.RESIZE,
        Capability.SNAPSHOTS,
        Capability.GRAPHICAL_CONSOLE,
        Capability.TENANT_PROJECTS,
    }
)
# "credentials": the write-only login (``apply_login``), not a model field.
SETTINGS_FIELDS = (
    "cloud_name",
    "auth_url",
    "region",
    "verify_tls",
    "project_mode",
    "project_domain",
    "os_network",
    "credentials",
)


def observed(server: ServerState) -> Observed:
    """A server as the row shows it: Nova's fault beside an error, its addresses; nothing final while busy."""
    return Observed(
        state=server.state,
        reason=(server.fault or "") if server.state == "error" else "",
        addresses=tuple(server.addresses),
        busy=server.busy,
    )


def _record(instance: Instance, server: ServerState) -> None:
    state.record_task_result(instance, observed(server))


def websocket_url_of(novnc_url: str) -> str:
    """The websocket noVNC connects to, from the page URL Nova hands out (``…/vnc_lite.html?path=%3Ftoken%3D…``).

    Nova's console proxy (websockify) takes the token from the query of the websocket request; newer
    Nova puts it in ``path``, older in ``token``.
    """
    parts = urlsplit(novnc_url)
    query = parse_qs(parts.query)
    token = (query.get("token") or [""])[0]
    path = (query.get("path") or [""])[0]
    if not token and path:
        inner = urlsplit(path)
        token = (parse_qs(inner.query).get("token") or [""])[0]
        ws_path = inner.path if inner.path.startswith("/") else "/" + inner.path
    else:
        ws_path = "/"
    if not token:
        raise ConflictError(said(gettext_noop("The cloud returned a console address without a token.")))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, ws_path, urlencode({"token": token}), ""))


def poll_window(last: datetime | None) -> datetime | None:
    """``changes-since`` for the next poll: a little before the last one (clocks and Nova's second granularity)."""
    return None if last is None else last - timedelta(seconds=settings.LABCLOUD_CLOUD_POLL_OVERLAP_SECONDS)


class OpenStackAdapter(AdapterBase):
    kind = Host.Kind.OPENSTACK

    # ------------------------------------------------------------ capabilities

    def host_capabilities(self, host: Host) -> frozenset[Capability]:
        # Security groups live on the servers' ports: a cloud whose servers get no network has none.
        return CAPABILITIES | {Capability.SECURITY_GROUPS} if host.os_network else CAPABILITIES

    def capabilities(self, instance: Instance) -> frozenset[Capability]:
        return self.host_capabilities(instance.host) if instance.host is not None else CAPABILITIES

    def describe(self, host: Host) -> str:
        return _("an OpenStack cloud")

    # ------------------------------------------------------------ launch

    def launch(self, operation: Operation, instance: Instance) -> str:
        """Project, flavor and image in the cloud (each made once and remembered), then the server, until ACTIVE."""
        host, image = instance.host, instance.image
        if image is None or image.status != Image.Status.ACTIVE:
            raise ServiceError(said(gettext_noop("The image of this instance is gone or no longer active.")))
        driver = cloud_driver(host)
        operations.progress(operation=operation, percent=5, message=_("Preparing the project in the cloud"))
        project_id = project_for(host=host, tenant=instance.tenant)
        flavor_id = cloud_flavor(host=host, flavor=instance.flavor)

        def upload_progress(percent: int) -> None:
            operations.progress(
                operation=operation,
                percent=10 + percent * 40 // 100,
                message=_("Uploading the image to the cloud"),
            )

        image_id = wait_for_copy(
            lambda: cloud_image(host=host, image=image, project_id=project_id, report=upload_progress),
            operation=operation,
        )
        server_id = instance.cloud_id
        if not server_id and operation.params.get("server_requested"):
            # this launch asked Nova before (a redelivered task, or a worker that died before storing the id)
            server_id = self._find_server(instance, project_id)
        if not server_id:
            operations.progress(operation=operation, percent=55, message=_("Creating the server"))
            operation.params = {**operation.params, "server_requested": True}
            Operation.objects.filter(pk=operation.pk).update(params=operation.params)

            groups = self._groups_for(driver, instance)

            def create(image_id: str) -> str:
                return driver.create(
                    project_id=project_id,
                    name=instance.domain_name,
                    flavor_id=flavor_id,
                    image_id=image_id,
                    network_id=host.os_network or None,
                    security_group_ids=groups,
                    public_key=instance.keypair.public_key if instance.keypair is not None else None,
                    user_data=instance.user_data or None,
                    metadata={"labcloud_instance": str(instance.uuid), "labcloud_tenant": instance.tenant.slug},
                )

            try:
                server_id = create(image_id)
            except QuotaExceeded as exc:  # the tenant's project is full in the cloud: the member's business
                raise ConflictError(
                    said(
                        gettext_noop(
                            "The cloud refused the new server: the tenant's quota there is used up (ask a cloud admin)."
                        )
                    )
                ) from exc
            except BackendError as exc:
                if isinstance(exc, HostUnreachable | AuthFailed):
                    raise
                # Refused: maybe Nova does not see the recorded Glance copy (deleted there, or the project changed)
                fresh = cloud_image(host=host, image=image, project_id=project_id, recheck=True)
                if fresh == image_id:
                    raise
                server_id = create(fresh)
        Instance.objects.filter(pk=instance.pk).update(cloud_id=server_id)
        instance.cloud_id = server_id
        operations.progress(operation=operation, percent=70, message=_("Booting"))
        _record(
            instance, driver.wait_for(server_id, states=("running",), timeout=settings.LABCLOUD_CLOUD_BUILD_TIMEOUT)
        )
        return _("Instance is running.")

    def _groups_for(self, driver, instance: Instance) -> list[str]:
        """The Neutron ids of the instance's security groups, the tenant's groups pushed to its project first."""
        host = instance.host
        if Capability.SECURITY_GROUPS not in self.host_capabilities(host) or not instance.security_groups.exists():
            return []
        ids = apply_firewall_plan(driver, host, firewall_plan(tenant=instance.tenant, host=host, including=instance))
        return [ids[str(g.uuid)] for g in instance.security_groups.all() if str(g.uuid) in ids]

    def apply_firewall(self, host: Host, plan: FirewallPlan) -> None:
        apply_firewall_plan(cloud_driver(host), host, plan)

    @staticmethod
    def _find_server(instance: Instance, project_id: str | None = None) -> str:
        """The id of the server this instance made in the cloud (by its unique name), or "" when there is none."""
        if project_id is None:
            found = CloudProject.objects.filter(host=instance.host, tenant_id=instance.tenant_id).first()
            if found is None:
                return ""
            project_id = found.project_id
        servers = cloud_driver(instance.host).list_servers(project_id=project_id)
        return next((s.id for s in servers if s.name == instance.domain_name and s.state != "deleted"), "")

    @staticmethod
    def _server_was_requested(instance: Instance) -> bool:
        return Operation.objects.filter(
            kind="instance.launch",
            target_type="vms.instance",
            target_id=str(instance.pk),
            params__server_requested=True,
        ).exists()

    # ------------------------------------------------------------ power and size

    def power(self, operation: Operation, instance: Instance, action: str) -> None:
        driver, server_id = cloud_driver(instance.host), instance.cloud_id
        handlers = {
            "start": lambda: driver.start(server_id),
            "stop": lambda: driver.stop(server_id),
            "shutdown": lambda: driver.stop(server_id),  # Nova's stop asks the guest first, then powers off
            "reboot": lambda: driver.reboot(server_id, kind="soft"),
            "reset": lambda: driver.reboot(server_id, kind="hard"),
            "pause": lambda: driver.pause(server_id),
            "resume": lambda: driver.resume(server_id),
        }
        _record(instance, handlers[action]())

    def resize(self, operation: Operation, instance: Instance) -> None:
        operations.progress(operation=operation, percent=20, message=_("Syncing the flavor"))
        flavor_id = cloud_flavor(host=instance.host, flavor=instance.flavor)
        operations.progress(operation=operation, percent=40, message=_("Resizing in the cloud"))
        _record(instance, cloud_driver(instance.host).resize(instance.cloud_id, flavor_id=flavor_id))

    # ------------------------------------------------------------ snapshots: Glance images of the project

    def create_snapshot(self, operation: Operation, instance: Instance, snapshot: Snapshot) -> None:
        driver = cloud_driver(instance.host)
        if not snapshot.cloud_id:  # stored at once: a retry or a failure knows which Glance image it is
            name = f"{settings.LABCLOUD_DOMAIN_PREFIX}{instance.name}-{snapshot.name}"[:255]
            image_id = driver.start_snapshot(
                instance.cloud_id, name=name, metadata={"labcloud_instance": str(instance.uuid)}
            )
            Snapshot.objects.filter(pk=snapshot.pk).update(cloud_id=image_id)
            snapshot.cloud_id = image_id
        driver.wait_idle(instance.cloud_id, timeout=settings.LABCLOUD_CLOUD_BUILD_TIMEOUT)

    def delete_snapshot(self, operation: Operation, instance: Instance, snapshot: Snapshot) -> None:
        if snapshot.cloud_id:
            cloud_driver(instance.host).delete_image(image_id=snapshot.cloud_id)

    def discard_snapshot(self, instance: Instance, snapshot: Snapshot) -> None:
        """A failed snapshot: the Glance image Nova may have made goes too (best effort)."""
        if snapshot.cloud_id:
            try:
                cloud_driver(instance.host).delete_image(image_id=snapshot.cloud_id)
            except BackendError:
                log.warning("could not delete the image of a failed snapshot", exc_info=True)

    # ------------------------------------------------------------ removal

    def remove(self, instance: Instance, operation: Operation | None = None) -> None:
        """The server (polled until Nova no longer has it) and the Glance images of its snapshots."""
        try:
            driver = cloud_driver(instance.host)
            if operation is not None:
                operations.progress(operation=operation, percent=20, message=_("Deleting the server"))
            server_id = instance.cloud_id
            if not server_id and self._server_was_requested(instance):  # asked for, but its id was never stored
                server_id = self._find_server(instance)
            if server_id:
                driver.delete(server_id)
                if instance.cloud_id:
                    Instance.objects.filter(pk=instance.pk).update(cloud_id="")
                    instance.cloud_id = ""  # gone: the watcher must not report it "deleted in the cloud"
            for image_id in (
                Snapshot.objects.filter(instance=instance).exclude(cloud_id="").values_list("cloud_id", flat=True)
            ):
                driver.delete_image(image_id=image_id)
        except BackendError:
            if operation is not None:
                raise
            log.warning("could not clean up instance %s after a failed launch", instance.uuid, exc_info=True)

    # ------------------------------------------------------------ console (web process)

    def console(self, instance: Instance, *, ttl: int) -> ConsoleEndpoint:
        """Nova's own noVNC console: the browser connects to the cloud's console proxy with Nova's token."""
        try:
            console = cloud_driver(instance.host).console(instance.cloud_id, console_type="novnc")
        except ConsoleUnavailable as exc:
            log.warning("console of instance %s: %s", instance.pk, exc.message)
            raise ConflictError(said(gettext_noop("The cloud has no console for this instance right now."))) from exc
        except BackendError as exc:
            log.warning("console of instance %s: %s", instance.pk, exc.message)
            raise ConflictError(
                said(gettext_noop("The cloud of this instance did not answer; try again later."))
            ) from exc
        return ConsoleEndpoint(url=websocket_url_of(console.url))

    # ------------------------------------------------------------ hosts

    def check_host(self, host: Host) -> Host:
        return login.verify_cloud(host=host)

    def check_summary(self, host: Host) -> str:
        return _("%(host)s: logged in (%(version)s).") % {"host": host.name, "version": host.backend_version}

    def location(self, host: Host) -> str:
        where = host.auth_url or host.cloud_name
        return f"{where} ({host.region})" if host.region else where

    def host_facts(self, host: Host) -> list[HostFact]:
        return [
            HostFact(_("Kind"), host.get_kind_display(), "kind"),
            HostFact(_("Keystone"), self.location(host), "keystone"),
            HostFact(_("Compute API"), host.backend_version or "—", "version"),
        ]

    def settings_fields(self) -> tuple[str, ...]:
        return SETTINGS_FIELDS

    def validate_settings(self, host: Host) -> None:
        if not host.auth_url and not host.cloud_name:
            raise ServiceError(
                said(gettext_noop("Give the Keystone URL or a cloud name from clouds.yaml.")), field="auth_url"
            )
        if host.uri:
            raise ServiceError(said(gettext_noop("An OpenStack cloud has no libvirt URI.")), field="uri")

    def apply_login(self, host: Host, *, credentials: dict[str, str], clear: bool) -> None:
        login.apply_login(host, credentials=credentials, clear=clear)

    def forget(self, host: Host) -> None:
        """A changed login, URL or region takes effect on the next call (the driver keeps a token)."""
        login.forget_driver(host)

    def remove_image_copy(self, replica: ImageReplica) -> None:
        if replica.cloud_image_id:
            cloud_driver(replica.host).delete_image(image_id=replica.cloud_image_id)

    # ------------------------------------------------------------ the watcher

    def reconcile(self, host: Host, *, since: datetime | None = None) -> dict[str, int]:
        """Copy Nova's server states into the rows: changes since ``since`` (with deletions), or all (a reconcile).

        A full reconcile also marks instances whose server is gone. Raises BackendError (after marking the
        cloud down) when the cloud does not answer.
        """
        driver = cloud_driver(host)
        try:
            servers = driver.list_servers(changes_since=since)
        except BackendError as exc:
            mark_host_down(host=host, reason=exc.message)
            raise
        by_id = {s.id: s for s in servers}
        counts = {"servers": len(servers), "changed": 0, "vanished": 0}
        rows = Instance.objects.filter(host=host).exclude(cloud_id="").exclude(state.owned_by_a_task())
        if since is not None:
            rows = rows.filter(cloud_id__in=list(by_id))
        for instance in rows.select_related("tenant"):
            instance.host = host  # its live update asks what the host can do: no query per row
            server = by_id.get(instance.cloud_id)
            if server is None:  # not listed in a full reconcile: the server is gone
                gone = Observed(state="error", reason=_("The server vanished from the cloud."))
                if instance.state != Instance.State.ERROR and state.record_observed(instance, gone):
                    counts["vanished"] += 1
                continue
            if server.state == "deleted":
                if instance.state == Instance.State.ERROR:  # keep the reason it failed with (e.g. a launch refused)
                    continue
                fact = Observed(state="error", reason=_("The server was deleted in the cloud."))
            else:
                fact = observed(server)
            if state.record_observed(instance, fact):
                counts["changed"] += 1
        mark_host_answered(host=host)
        return counts
