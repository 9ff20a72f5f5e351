"""The OpenStack compute driver: one cloud (one region), openstacksdk underneath, plain dataclasses in and out.

No ORM here: services turn rows into keyword arguments and the dataclasses below back into rows.

Who does what. The driver authenticates as the portal's own service user (``OpenStackAuth``), normally an
admin of the cloud. Keystone projects, flavors, quotas, state polling and power actions go through that
connection; what must belong to a tenant (servers, their snapshots) is created through a connection
scoped to the tenant's project, which is why ``ensure_project`` grants the portal's user a role there.
Application credentials are bound to one project: with them the driver can only act in that project.

Errors: everything leaves this module as ``BackendError`` (message safe to show to users):
``HostUnreachable`` when the cloud does not answer (connection refused, timeout, 502/503/504),
``AuthFailed`` on bad credentials, ``NotFound`` for a server/flavor/image/project that is gone,
``QuotaExceeded`` when Nova refuses for quota, ``ImageRejected`` when Glance refuses an upload,
``ConsoleUnavailable`` when Nova cannot give a remote console.

Waiting: Nova's actions are asynchronous. The actions here wait (``wait=True``, the default) until Nova
reports the target state with no task in progress, polling ``GET /servers/{id}`` every ``poll`` seconds;
pass ``wait=False`` to return right after Nova accepted the request (the watcher sees the rest).
Deletion is always confirmed by polling (openstacksdk's ``wait_for_delete`` can return early).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import openstack
from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as os_exc
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from portal.backends.base import BackendError, HostUnreachable, NotFound

log = logging.getLogger(__name__)

# The portal's view of a server. "deleted" appears in list_servers(changes_since=…), which also returns
# servers deleted since then, and for a moment in any list while Nova's compute finishes a deletion;
# "unknown" is Nova's own UNKNOWN (the compute host is unreachable).
SERVER_STATES = ("running", "shutoff", "paused", "error", "building", "deleting", "deleted", "unknown")
REBOOT_KINDS = ("soft", "hard")
VISIBILITIES = ("public", "private", "shared", "community")
CONSOLE_TYPES = ("novnc", "spice-html5", "serial", "rdp-html5", "webmks")

# Nova status → portal state. Transitional statuses not listed here follow the power state.
_NOVA_STATUS = {
    "ACTIVE": "running",
    "BUILD": "building",
    "REBUILD": "building",
    "SHUTOFF": "shutoff",
    "STOPPED": "shutoff",
    "SHELVED": "shutoff",
    "SHELVED_OFFLOADED": "shutoff",
    "PAUSED": "paused",
    "SUSPENDED": "paused",
    "ERROR": "error",
    "DELETED": "deleted",
    "SOFT_DELETED": "deleting",
    "UNKNOWN": "unknown",
}
# Nova power_state codes (nova/compute/power_state.py) for REBOOT, RESIZE, VERIFY_RESIZE, MIGRATING…
_POWER_STATE = {1: "running", 3: "paused", 4: "shutoff", 6: "error", 7: "paused"}
_UNREACHABLE_HTTP = {502, 503, 504}
# How long delete() waits for a server shown as DELETED to disappear before taking it as gone.
DELETED_ROW_GRACE = 30.0


# ---------------------------------------------------------------------------------------------- errors


class AuthFailed(BackendError):
    """Keystone refused the credentials (or the token was revoked)."""


class QuotaExceeded(BackendError):
    """Nova (or Glance) refused because a quota of the project is used up."""


class ImageRejected(BackendError):
    """Glance refused an image (format mismatch, size, policy)."""


class ConsoleUnavailable(BackendError):
    """Nova could not give a remote console for the server."""


# ---------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class OpenStackAuth:
    """How the portal logs in to one cloud: a password (user + project) or an application credential."""

    auth_url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    project_name: str | None = None
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    # Ids instead of names (as an RC file or clouds.yaml may give them); an id wins over its name.
    project_id: str | None = None
    user_domain_id: str | None = None
    project_domain_id: str | None = None
    region_name: str | None = None
    application_credential_id: str | None = None
    application_credential_secret: str | None = field(default=None, repr=False)
    interface: str = "public"
    verify: bool | str = True  # False, True or a CA bundle path
    timeout: float = 30.0  # seconds per HTTP request (connect and read)

    def __post_init__(self) -> None:
        if not self.auth_url:
            raise ValueError("auth_url is required")
        if self.application_credential_id:
            if not self.application_credential_secret:
                raise ValueError("an application credential needs its secret")
        elif not (self.username and self.password and (self.project_name or self.project_id)):
            raise ValueError(
                "give username, password and project_name (or project_id), or an application credential id and secret"
            )

    @property
    def uses_application_credential(self) -> bool:
        return bool(self.application_credential_id)


@dataclass(frozen=True)
class CloudInfo:
    """What ``verify`` found: who we are, where, and which compute API the cloud speaks."""

    auth_url: str
    region_name: str | None
    user_id: str
    project_id: str
    compute_endpoint: str
    compute_max_microversion: str
    services: tuple[str, ...]


@dataclass(frozen=True)
class ProjectInfo:
    id: str
    name: str
    domain_id: str
    description: str = ""
    created: bool = False  # False: it existed already


@dataclass(frozen=True)
class FlavorInfo:
    id: str
    name: str
    vcpus: int
    ram_mib: int
    disk_gib: int
    is_public: bool
    project_ids: tuple[str, ...] = ()  # projects with access (private flavors only), sorted
    action: str = "unchanged"  # created | recreated | unchanged


@dataclass(frozen=True)
class GlanceImage:
    id: str
    name: str
    status: str
    disk_format: str | None
    container_format: str | None
    visibility: str
    owner: str | None
    size: int | None
    checksum: str | None  # md5
    os_hash_algo: str | None
    os_hash_value: str | None
    reused: bool = False  # upload_image found an identical image and did not upload


@dataclass(frozen=True)
class ComputeQuota:
    """Nova compute quotas of a project (-1 = unlimited) and what is in use now."""

    project_id: str
    instances: int
    cores: int
    ram_mib: int
    instances_used: int = 0
    cores_used: int = 0
    ram_mib_used: int = 0


@dataclass(frozen=True)
class KeypairInfo:
    name: str
    fingerprint: str
    public_key: str
    created: bool = False


@dataclass(frozen=True)
class RemoteConsole:
    url: str
    type: str
    protocol: str


@dataclass(frozen=True)
class ServerState:
    """What Nova says about a server right now (fact, not intent); ``state`` is one of SERVER_STATES."""

    id: str
    name: str
    state: str
    status: str  # Nova's own status (ACTIVE, VERIFY_RESIZE…)
    task_state: str | None = None
    power_state: int | None = None
    project_id: str = ""
    flavor_name: str = ""
    vcpus: int = 0
    ram_mib: int = 0
    image_id: str | None = None
    key_name: str | None = None
    fault: str = ""
    addresses: tuple[str, ...] = ()
    host: str | None = None
    updated_at: str = ""

    @property
    def busy(self) -> bool:
        """Nova is still working on it (a task is in progress)."""
        return self.task_state is not None


@dataclass(frozen=True)
class NeutronRule:
    """A Neutron security group rule (IPv4): what ``set_security_group_rules`` compares and creates."""

    direction: str  # ingress | egress
    protocol: str | None = None  # None: any
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None

    def key(self) -> tuple:
        prefix = None if self.remote_ip_prefix in (None, "", "0.0.0.0/0") else self.remote_ip_prefix
        return (
            self.direction,
            self.protocol,
            self.port_range_min,
            self.port_range_max,
            prefix,
            self.remote_group_id,
        )

    def attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {"direction": self.direction, "ethertype": "IPv4"}
        for name in ("protocol", "port_range_min", "port_range_max", "remote_ip_prefix", "remote_group_id"):
            value = getattr(self, name)
            if value is not None:
                attrs[name] = value
        return attrs

    @classmethod
    def from_sdk(cls, rule: Any) -> NeutronRule:
        if (rule.ether_type or "IPv4") != "IPv4":
            return cls(direction=f"{rule.direction}-{rule.ether_type}")  # an IPv6 rule: never wanted
        return cls(
            direction=rule.direction,
            protocol=rule.protocol,
            port_range_min=rule.port_range_min,
            port_range_max=rule.port_range_max,
            remote_ip_prefix=rule.remote_ip_prefix,
            remote_group_id=rule.remote_group_id,
        )


def server_state_of(server: Any) -> ServerState:
    """Translate an openstacksdk Server (or any object with its attributes) into a ServerState."""
    status = (server.status or "UNKNOWN").upper()
    task_state = server.task_state or None
    power_state = server.power_state
    if task_state == "deleting" and status != "DELETED":
        state = "deleting"
    elif status in _NOVA_STATUS:
        state = _NOVA_STATUS[status]
    else:
        state = _POWER_STATE.get(power_state or 0, "running")
    flavor = server.flavor or {}
    image = server.image or {}
    fault = server.fault or {}
    addresses = tuple(
        addr["addr"] for net in sorted((server.addresses or {}).items()) for addr in net[1] if addr.get("addr")
    )
    return ServerState(
        id=server.id,
        name=server.name or "",
        state=state,
        status=status,
        task_state=task_state,
        power_state=power_state,
        project_id=server.project_id or "",
        flavor_name=flavor.get("original_name") or flavor.get("name") or "",
        vcpus=int(flavor.get("vcpus") or 0),
        ram_mib=int(flavor.get("ram") or 0),
        image_id=image.get("id") if isinstance(image, Mapping) else None,
        key_name=server.key_name,
        fault=str(fault.get("message") or "") if isinstance(fault, Mapping) else "",
        addresses=addresses,
        host=server.compute_host,
        updated_at=server.updated_at or "",
    )


def _image_of(image: Any, *, reused: bool = False) -> GlanceImage:
    get = image.get if isinstance(image, Mapping) else lambda key: getattr(image, key, None)
    return GlanceImage(
        id=get("id"),
        name=get("name") or "",
        status=get("status") or "",
        disk_format=get("disk_format"),
        container_format=get("container_format"),
        visibility=get("visibility") or "",
        owner=get("owner") or get("owner_id"),
        size=get("size"),
        checksum=get("checksum"),
        os_hash_algo=get("os_hash_algo") or get("hash_algo"),
        os_hash_value=get("os_hash_value") or get("hash_value"),
        reused=reused,
    )


def _details(exc: Exception) -> str:
    text = getattr(exc, "details", None) or getattr(exc, "message", None) or str(exc)
    return " ".join(str(text).split())


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while True:
        if isinstance(exc, ksa_exc.ClientException):
            return exc
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def _status_of(exc: Exception) -> int | None:
    return getattr(exc, "status_code", None) or getattr(exc, "http_status", None)


def file_sha512(path: Path) -> str:
    """Glance's default ``os_hash_value`` (sha512) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def keypair_name_for(public_key: str, prefix: str = "labcloud") -> str:
    """A stable Nova keypair name for a public key (same key → same name, so it is imported once)."""
    return f"{prefix}-{hashlib.sha256(_normalize_key(public_key).encode()).hexdigest()[:16]}"


def _normalize_key(public_key: str) -> str:
    return " ".join(public_key.split()[:2])  # type and base64 body; the comment does not matter


# ---------------------------------------------------------------------------------------------- driver


class StaleConnectionRetry(Retry):
    """Send an idempotent request (GET, PUT, DELETE…) once more when its kept-alive connection was closed by
    the server as it was being reused (API servers and load balancers close idle connections).

    POST is never resent (a create could happen twice); a refused connection or a timeout is not retried
    either (``connect=0``, and a read timeout is raised at once), so a cloud that is down or hangs fails as
    fast as without this.
    """

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if isinstance(error, ReadTimeoutError):  # as without retries (read=False): requests says ReadTimeout
            raise error.with_traceback(_stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)


def retry_stale_connections(session: Any) -> None:
    """Give a keystoneauth Session's HTTP adapters ``StaleConnectionRetry`` (one retry, reads only)."""
    retry = StaleConnectionRetry(
        total=1, connect=0, read=1, status=0, other=0, redirect=0, raise_on_redirect=False, raise_on_status=False
    )
    for adapter in session.session.adapters.values():
        adapter.max_retries = retry


class OpenStackDriver:
    """Compute driver for one OpenStack cloud (region). Connections are created lazily and reused."""

    def __init__(self, auth: OpenStackAuth, *, poll: float = 0.2) -> None:
        self.auth = auth
        self.poll = poll
        self._conn: openstack.connection.Connection | None = None
        self._scoped: dict[str, openstack.connection.Connection] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenStackDriver({self.auth.auth_url!r}, region={self.auth.region_name!r})"

    # ------------------------------------------------------------------ plumbing

    def _connect(self, *, project_id: str | None = None) -> openstack.connection.Connection:
        a = self.auth
        kwargs: dict[str, Any] = {
            "auth_url": a.auth_url,
            "region_name": a.region_name,
            "interface": a.interface,
            "verify": a.verify,
            "api_timeout": a.timeout,
            "connect_retries": 0,  # a cloud that is down must fail fast, not after retries
            "identity_api_version": "3",
        }
        if a.uses_application_credential:
            kwargs.update(
                auth_type="v3applicationcredential",
                application_credential_id=a.application_credential_id,
                application_credential_secret=a.application_credential_secret,
            )
        else:
            kwargs.update(username=a.username, password=a.password)
            if a.user_domain_id:
                kwargs.update(user_domain_id=a.user_domain_id)
            else:
                kwargs.update(user_domain_name=a.user_domain_name)
            if project_id or a.project_id:
                kwargs.update(project_id=project_id or a.project_id)
            elif a.project_domain_id:
                kwargs.update(project_name=a.project_name, project_domain_id=a.project_domain_id)
            else:
                kwargs.update(project_name=a.project_name, project_domain_name=a.project_domain_name)
        conn = openstack.connect(load_yaml_config=False, load_envvars=False, **kwargs)
        retry_stale_connections(conn.session)
        return conn

    @property
    def conn(self) -> openstack.connection.Connection:
        """The portal user's own connection (its project scope)."""
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            return self._conn

    def project_conn(self, project_id: str) -> openstack.connection.Connection:
        """A connection scoped to a tenant's project (the portal's user needs a role there: ``ensure_project``)."""
        with self._errors("log in"):
            own = self.conn.current_project_id
        if project_id == own:
            return self.conn
        with self._lock:
            conn = self._scoped.get(project_id)
        if conn is not None:
            return conn
        if self.auth.uses_application_credential:
            raise BackendError(
                f"project {project_id}: an application credential acts only in its own project; "
                "use a password login to manage tenant projects"
            )
        conn = self._connect(project_id=project_id)
        with self._errors(f"log in to project {project_id}"):
            conn.authorize()
        with self._lock:
            self._scoped.setdefault(project_id, conn)
            return self._scoped[project_id]

    def close(self) -> None:
        with self._lock:
            conns = [c for c in [self._conn, *self._scoped.values()] if c is not None]
            self._conn, self._scoped = None, {}
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def _translate(self, exc: Exception, what: str) -> BackendError:
        where = self.auth.auth_url
        root = _root_cause(exc)  # openstacksdk wraps keystoneauth's errors in SDKException (e.g. authorize())
        if root is not exc and isinstance(root, ksa_exc.ClientException):
            exc = root
        if isinstance(exc, ksa_exc.ConnectionError):
            return HostUnreachable(f"{what}: the cloud at {where} does not answer ({type(exc).__name__})")
        if isinstance(exc, ksa_exc.DiscoveryFailure):
            return HostUnreachable(f"{what}: no identity API found at {where}: {_details(exc)}")
        if isinstance(exc, ksa_exc.Unauthorized | ksa_exc.AuthorizationFailure | ksa_exc.MissingAuthPlugin):
            return AuthFailed(f"{what}: the cloud at {where} refused the portal's credentials ({_details(exc)})")
        if isinstance(exc, ksa_exc.EndpointNotFound | ksa_exc.EmptyCatalog):
            return BackendError(f"{what}: the cloud at {where} offers no such service here: {_details(exc)}")
        status, details = _status_of(exc), _details(exc)
        if status == 401:
            return AuthFailed(f"{what}: the cloud at {where} refused the portal's credentials ({details})")
        if status == 403 and "quota" in details.lower():
            return QuotaExceeded(f"{what}: quota exceeded: {details}")
        if status == 413 and "quota" in details.lower():  # older Nova/Glance answer 413 for quota
            return QuotaExceeded(f"{what}: quota exceeded: {details}")
        if status == 404 or isinstance(exc, os_exc.NotFoundException):
            return NotFound(f"{what}: not found: {details}")
        if status in _UNREACHABLE_HTTP:
            return HostUnreachable(f"{what}: the cloud at {where} is unavailable (HTTP {status}): {details}")
        if isinstance(exc, os_exc.ResourceTimeout):
            return BackendError(f"{what}: timed out: {details}")
        if status:
            return BackendError(f"{what}: refused by the cloud (HTTP {status}): {details}")
        return BackendError(f"{what}: {details}")

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except BackendError:
            raise
        except (os_exc.SDKException, ksa_exc.ClientException) as exc:
            raise self._translate(exc, what) from exc

    # ------------------------------------------------------------------ cloud

    def verify(self) -> CloudInfo:
        """Log in and ask Nova for its versions.

        HostUnreachable when the cloud is down, AuthFailed on bad credentials.
        """
        conn = self.conn
        with self._errors("connect to the cloud"):
            conn.authorize()
            compute_endpoint = conn.compute.get_endpoint()
            version = conn.compute.get_endpoint_data()
            services = tuple(sorted({s["type"] for s in conn.service_catalog}))
        return CloudInfo(
            auth_url=self.auth.auth_url,
            region_name=self.auth.region_name,
            user_id=conn.current_user_id,
            project_id=conn.current_project_id,
            compute_endpoint=compute_endpoint,
            compute_max_microversion=".".join(map(str, version.max_microversion))
            if version and version.max_microversion
            else "",
            services=services,
        )

    # ------------------------------------------------------------------ projects

    def ensure_project(
        self, *, name: str, description: str = "", domain: str = "Default", role: str = "member"
    ) -> ProjectInfo:
        """The Keystone project ``name`` (created if missing), with the portal's user given ``role`` in it."""
        conn = self.conn
        with self._errors(f"project {name}"):
            dom = conn.identity.find_domain(domain, ignore_missing=True)
            if dom is None:
                raise NotFound(f"project {name}: Keystone has no domain {domain!r}")
            project = conn.identity.find_project(name, domain_id=dom.id, ignore_missing=True)
            created = project is None
            if created:
                try:
                    project = conn.identity.create_project(name=name, domain_id=dom.id, description=description)
                except os_exc.ConflictException:  # made meanwhile by a concurrent call: the same project
                    project = conn.identity.find_project(name, domain_id=dom.id, ignore_missing=False)
                    created = False
            if not created and (project.description or "") != description:
                project = conn.identity.update_project(project, description=description)
            found_role = conn.identity.find_role(role, ignore_missing=True)
            if found_role is None:
                raise NotFound(f"project {name}: Keystone has no role {role!r}")
            conn.identity.assign_project_role_to_user(project, conn.current_user_id, found_role)
        return ProjectInfo(
            id=project.id, name=project.name, domain_id=project.domain_id, description=description, created=created
        )

    def project_roles(self, *, project_id: str) -> tuple[str, ...]:
        """Names of the roles the portal's user holds in the project (directly assigned)."""
        conn = self.conn
        with self._errors(f"roles in project {project_id}"):
            roles = conn.identity.role_assignments(scope_project_id=project_id, user_id=conn.current_user_id)
            ids = {r.role["id"] for r in roles}
            return tuple(sorted(conn.identity.get_role(i).name for i in ids))

    def delete_project(self, *, project_id: str) -> bool:
        """Remove a Keystone project (its servers must be gone). False when there was none."""
        with self._lock:
            scoped = self._scoped.pop(project_id, None)
        if scoped is not None:
            scoped.close()
        with self._errors(f"delete project {project_id}"):
            try:
                self.conn.identity.delete_project(project_id, ignore_missing=False)
            except os_exc.NotFoundException:
                return False
        return True

    # ------------------------------------------------------------------ flavors

    def _flavor_info(self, flavor: Any, action: str) -> FlavorInfo:
        project_ids: tuple[str, ...] = ()
        if not flavor.is_public:
            project_ids = tuple(sorted(a["tenant_id"] for a in self.conn.compute.get_flavor_access(flavor)))
        return FlavorInfo(
            id=flavor.id,
            name=flavor.name,
            vcpus=flavor.vcpus,
            ram_mib=flavor.ram,
            disk_gib=flavor.disk,
            is_public=bool(flavor.is_public),
            project_ids=project_ids,
            action=action,
        )

    def find_flavors(self, *, name: str) -> list[Any]:
        with self._errors(f"flavor {name}"):
            # is_public=None: every flavor, public and private (admin only)
            return [f for f in self.conn.compute.flavors(is_public="None") if f.name == name]

    def ensure_flavor(
        self,
        *,
        name: str,
        vcpus: int,
        ram_mib: int,
        disk_gib: int,
        is_public: bool = True,
        project_ids: Iterable[str] = (),
    ) -> FlavorInfo:
        """Make the Nova flavor ``name`` match: create it, or (flavors are immutable) recreate it on any change.

        A private flavor's access list is made exactly ``project_ids``; a public flavor ignores them.
        A recreated flavor gets a new id; running servers keep their embedded copy of the old one.
        """
        conn = self.conn
        wanted = set(project_ids)
        existing = self.find_flavors(name=name)
        action = "created"
        flavor = None
        with self._errors(f"flavor {name}"):
            for old in existing:
                same = (old.vcpus, old.ram, old.disk, bool(old.is_public)) == (vcpus, ram_mib, disk_gib, is_public)
                if same and flavor is None:
                    flavor, action = old, "unchanged"
                else:
                    conn.compute.delete_flavor(old, ignore_missing=True)
                    action = "recreated"
            if flavor is None:
                try:
                    flavor = conn.compute.create_flavor(
                        name=name, vcpus=vcpus, ram=ram_mib, disk=disk_gib, is_public=is_public
                    )
                except os_exc.ConflictException:  # a concurrent call created it: use theirs if it is the same
                    flavor = next(
                        f
                        for f in conn.compute.flavors(is_public="None")
                        if f.name == name
                        and (f.vcpus, f.ram, f.disk, bool(f.is_public)) == (vcpus, ram_mib, disk_gib, is_public)
                    )
            if not is_public:
                current = {a["tenant_id"] for a in conn.compute.get_flavor_access(flavor)}
                for project_id in sorted(wanted - current):
                    conn.compute.flavor_add_tenant_access(flavor, project_id)
                for project_id in sorted(current - wanted):
                    conn.compute.flavor_remove_tenant_access(flavor, project_id)
            return self._flavor_info(flavor, action)

    def delete_flavor(self, *, flavor_id: str) -> bool:
        with self._errors(f"delete flavor {flavor_id}"):
            try:
                self.conn.compute.delete_flavor(flavor_id, ignore_missing=False)
            except os_exc.NotFoundException:
                return False
        return True

    # ------------------------------------------------------------------ images

    def find_image_by_checksum(
        self, *, checksum: str, disk_format: str, visibility: str, project_id: str | None
    ) -> GlanceImage | None:
        """An active image with this content (sha512 ``os_hash_value`` or md5 ``checksum``) usable as asked."""
        key = "checksum" if len(checksum) == 32 else "os_hash_value"
        with self._errors("look for an image by checksum"):
            owner = project_id or self.conn.current_project_id
            resp = self.conn.image.get("/images", params={key: checksum.lower(), "status": "active"}, raise_exc=False)
            os_exc.raise_from_response(resp)
            for image in resp.json().get("images", []):
                if image.get("disk_format") != disk_format or image.get("visibility") != visibility:
                    continue
                if visibility in ("public", "community") or image.get("owner") == owner:
                    return _image_of(image, reused=True)
        return None

    def upload_image(
        self,
        *,
        path: Path | str,
        name: str,
        disk_format: str = "qcow2",
        container_format: str = "bare",
        visibility: str = "private",
        project_id: str | None = None,
        checksum: str | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> GlanceImage:
        """Upload a disk image to Glance, owned by ``project_id`` (default: the portal's project).

        When an active image with the same content (``checksum``: sha512 hex as Glance's ``os_hash_value``,
        or md5 hex as its ``checksum``; computed when not given), disk format and visibility already exists
        for that owner (or publicly), it is returned with ``reused=True`` and nothing is uploaded.
        A refused upload raises ImageRejected and leaves no image record behind.
        """
        if visibility not in VISIBILITIES:
            raise ValueError(f"visibility must be one of {VISIBILITIES}, not {visibility!r}")
        path = Path(path)
        checksum = checksum or file_sha512(path)
        found = self.find_image_by_checksum(
            checksum=checksum, disk_format=disk_format, visibility=visibility, project_id=project_id
        )
        if found is not None:
            return found
        conn = self.conn
        body: dict[str, Any] = {
            "name": name,
            "disk_format": disk_format,
            "container_format": container_format,
            "visibility": visibility,
            **dict(properties or {}),
        }
        if project_id:
            body["owner"] = project_id
        with self._errors(f"image {name}"):
            resp = conn.image.post("/images", json=body, raise_exc=False)
            os_exc.raise_from_response(resp)
        image_id = resp.json()["id"]
        try:
            with open(path, "rb") as fh, self._errors(f"upload image {name}"):
                resp = conn.image.put(
                    f"/images/{image_id}/file",
                    data=fh,
                    headers={"Content-Type": "application/octet-stream"},
                    raise_exc=False,
                )
                if resp.status_code >= 400:
                    status, details = resp.status_code, _details(os_exc.HttpException(response=resp))
                    if status in (400, 403, 409, 413, 415, 422) and "quota" not in details.lower():
                        raise ImageRejected(f"Glance rejected image {name} ({disk_format}): {details}")
                    os_exc.raise_from_response(resp)
                image = conn.image.get_image(image_id)
            if image.status != "active":
                raise ImageRejected(f"Glance rejected image {name}: it is {image.status} after the upload")
            found_checksum = image.checksum if len(checksum) == 32 else image.hash_value
            if found_checksum and found_checksum.lower() != checksum.lower():
                raise ImageRejected(f"image {name}: Glance computed checksum {found_checksum}, expected {checksum}")
        except BaseException:
            with contextlib.suppress(Exception):  # nothing half-created is left in Glance
                conn.image.delete_image(image_id, ignore_missing=True)
            raise
        return _image_of(image)

    def set_image_visibility(self, *, image_id: str, visibility: str) -> GlanceImage:
        """Change an image's visibility in Glance (public needs the admin role)."""
        if visibility not in VISIBILITIES:
            raise ValueError(f"visibility must be one of {VISIBILITIES}, not {visibility!r}")
        with self._errors(f"image {image_id}"):
            try:
                return _image_of(self.conn.image.update_image(image_id, visibility=visibility))
            except os_exc.NotFoundException as exc:
                raise NotFound(f"image {image_id} does not exist") from exc

    def forget_compute_quota(self, *, project_id: str) -> None:
        """Drop the project's own Nova quota values (back to the cloud's defaults); for a deleted project."""
        with self._errors(f"compute quota of project {project_id}"):
            self.conn.compute.revert_quota_set(project_id)

    def add_image_member(self, *, image_id: str, project_id: str) -> bool:
        """Share a ``shared`` image with a project (it may boot it by id at once). False when it was a member."""
        with self._errors(f"share image {image_id}"):
            if self.conn.image.find_member(project_id, image_id, ignore_missing=True) is not None:
                return False
            self.conn.image.add_member(image_id, member_id=project_id)
        return True

    def image_members(self, *, image_id: str) -> list[str]:
        """The projects a ``shared`` image is shared with."""
        with self._errors(f"members of image {image_id}"):
            return sorted(member.member_id for member in self.conn.image.members(image_id))

    def remove_image_member(self, *, image_id: str, project_id: str) -> bool:
        """Stop sharing an image with a project. False when it was not a member."""
        try:
            with self._errors(f"unshare image {image_id}"):
                self.conn.image.remove_member(project_id, image_id, ignore_missing=False)
        except NotFound:
            return False
        return True

    def image(self, *, image_id: str) -> GlanceImage:
        with self._errors(f"image {image_id}"):
            return _image_of(self.conn.image.get_image(image_id))

    def delete_image(self, *, image_id: str) -> bool:
        with self._errors(f"delete image {image_id}"):
            try:
                self.conn.image.delete_image(image_id, ignore_missing=False)
            except os_exc.NotFoundException:
                return False
        return True

    # ------------------------------------------------------------------ quotas

    def compute_quota(self, *, project_id: str) -> ComputeQuota:
        with self._errors(f"compute quota of project {project_id}"):
            q = self.conn.compute.get_quota_set(project_id, usage=True)
        usage = q.usage or {}
        return ComputeQuota(
            project_id=project_id,
            instances=q.instances,
            cores=q.cores,
            ram_mib=q.ram,
            instances_used=int(usage.get("instances") or 0),
            cores_used=int(usage.get("cores") or 0),
            ram_mib_used=int(usage.get("ram") or 0),
        )

    def set_compute_quota(self, *, project_id: str, instances: int, cores: int, ram_mib: int) -> ComputeQuota:
        """Push the portal's tenant quota to Nova (-1 = unlimited) and return what Nova now says."""
        with self._errors(f"set compute quota of project {project_id}"):
            self.conn.compute.update_quota_set(project_id, instances=instances, cores=cores, ram=ram_mib)
        quota = self.compute_quota(project_id=project_id)
        if (quota.instances, quota.cores, quota.ram_mib) != (instances, cores, ram_mib):
            raise BackendError(
                f"compute quota of project {project_id}: Nova kept instances={quota.instances} cores={quota.cores} "
                f"ram={quota.ram_mib} MiB instead of {instances}/{cores}/{ram_mib}"
            )
        return quota

    # ------------------------------------------------------------------ keypairs

    def ensure_keypair(self, *, public_key: str, name: str | None = None) -> KeypairInfo:
        """Import an SSH public key as a Nova keypair of the portal's user (named after the key unless ``name``).

        Nova keypairs belong to a user, not a project; the same key used in several projects is imported once.
        An existing keypair of that name with another key is replaced.
        """
        name = name or keypair_name_for(public_key)
        conn = self.conn
        with self._errors(f"keypair {name}"):
            existing = conn.compute.find_keypair(name, ignore_missing=True)
            if existing is not None:
                if _normalize_key(existing.public_key or "") == _normalize_key(public_key):
                    return KeypairInfo(name=name, fingerprint=existing.fingerprint, public_key=existing.public_key)
                conn.compute.delete_keypair(existing)
            try:
                created = conn.compute.create_keypair(name=name, public_key=public_key.strip())
            except os_exc.ConflictException:  # imported meanwhile by a concurrent call (the name is the key's hash)
                found = conn.compute.get_keypair(name)
                return KeypairInfo(name=name, fingerprint=found.fingerprint, public_key=found.public_key)
        return KeypairInfo(name=name, fingerprint=created.fingerprint, public_key=created.public_key, created=True)

    def delete_keypair(self, *, name: str) -> bool:
        with self._errors(f"delete keypair {name}"):
            try:
                self.conn.compute.delete_keypair(name, ignore_missing=False)
            except os_exc.NotFoundException:
                return False
        return True

    # ------------------------------------------------------------------ security groups (Neutron)

    def ensure_security_group(self, *, project_id: str, name: str, description: str = "") -> str:
        """The id of the project's Neutron security group ``name``, made if missing (without Neutron's two
        default egress rules: ``set_security_group_rules`` says what it allows).

        Neutron allows two groups of one name: two callers that made one each at the same moment both keep
        the one with the smaller id and delete the other, so they agree.
        """
        net = self.project_conn(project_id).network
        with self._errors(f"security group {name}"):
            groups = sorted(net.security_groups(name=name, project_id=project_id), key=lambda g: g.id)
            if not groups:
                made = net.create_security_group(name=name, description=description[:255], project_id=project_id)
                for rule in made.security_group_rules or ():
                    net.delete_security_group_rule(rule["id"], ignore_missing=True)
                groups = sorted(net.security_groups(name=name, project_id=project_id), key=lambda g: g.id)
            for extra in groups[1:]:
                with contextlib.suppress(os_exc.ConflictException):
                    net.delete_security_group(extra, ignore_missing=True)
            return groups[0].id

    def security_group_ids(self, *, project_id: str, names: Iterable[str]) -> dict[str, str]:
        """Name → id of the project's security groups among ``names``."""
        wanted = set(names)
        with self._errors("security groups"):
            groups = self.project_conn(project_id).network.security_groups(project_id=project_id)
            return {g.name: g.id for g in groups if g.name in wanted}

    def set_security_group_rules(self, *, project_id: str, group_id: str, rules: Iterable[NeutronRule]) -> int:
        """Make the group's rules exactly ``rules`` (added and deleted as needed); the number of changes."""
        net = self.project_conn(project_id).network
        wanted = {rule.key(): rule for rule in rules}
        changes = 0
        with self._errors(f"rules of security group {group_id}"):
            present = {}
            for rule in net.security_group_rules(security_group_id=group_id):
                key = NeutronRule.from_sdk(rule).key()
                if key in wanted and key not in present:
                    present[key] = rule.id
                else:
                    net.delete_security_group_rule(rule.id, ignore_missing=True)
                    changes += 1
            for key, rule in wanted.items():
                if key in present:
                    continue
                try:
                    net.create_security_group_rule(security_group_id=group_id, **rule.attrs())
                except os_exc.ConflictException:
                    continue  # added meanwhile by a concurrent sync
                changes += 1
        return changes

    def delete_security_group(self, *, project_id: str, name: str) -> bool:
        """Delete the project's group ``name``; False when it is not there or a port still uses it."""
        net = self.project_conn(project_id).network
        with self._errors(f"delete security group {name}"):
            for group in net.security_groups(name=name, project_id=project_id):
                try:
                    net.delete_security_group(group, ignore_missing=True)
                except os_exc.ConflictException:
                    return False  # in use by a port
                return True
        return False

    def server_security_group_ids(self, server_id: str, *, project_id: str) -> set[str]:
        """Ids of the security groups of a server's ports."""
        net = self.project_conn(project_id).network
        with self._errors(f"security groups of server {server_id}"):
            return {g for port in net.ports(device_id=server_id) for g in port.security_group_ids or ()}

    def set_server_security_groups(self, server_id: str, *, project_id: str, group_ids: Iterable[str]) -> bool:
        """Give every port of the server exactly the groups ``group_ids`` (Neutron ids); True when one changed."""
        wanted = sorted(set(group_ids))
        net = self.project_conn(project_id).network
        changed = False
        with self._errors(f"security groups of server {server_id}"):
            for port in net.ports(device_id=server_id):
                if sorted(port.security_group_ids or ()) != wanted:
                    net.update_port(port, security_groups=wanted)
                    changed = True
        return changed

    # ------------------------------------------------------------------ servers

    def create(
        self,
        *,
        project_id: str,
        name: str,
        flavor_id: str,
        image_id: str,
        network_id: str | None = None,
        security_group_ids: Iterable[str] = (),
        public_key: str | None = None,
        key_name: str | None = None,
        user_data: str | bytes | None = None,
        metadata: Mapping[str, str] | None = None,
        wait: bool = False,
        timeout: float = 300,
    ) -> str:
        """Boot a server in the tenant's project; returns its id at once (or once ACTIVE with ``wait``).

        ``network_id`` None boots with no network at all (``networks='none'``). ``public_key`` is imported
        as a keypair (``ensure_keypair``) unless ``key_name`` names one already there. ``user_data`` is
        cloud-init data (str or bytes; base64-encoded here). If the build ends in ERROR while waiting, the
        server is deleted and the fault raised as BackendError.
        """
        conn = self.project_conn(project_id)
        if public_key and not key_name:
            key_name = self.ensure_keypair(public_key=public_key).name
        attrs: dict[str, Any] = {
            "name": name,
            "flavor_id": flavor_id,
            "image_id": image_id,
            "networks": [{"uuid": network_id}] if network_id else "none",
        }
        if network_id and security_group_ids:  # a server without a port has no groups
            attrs["security_groups"] = [{"name": group_id} for group_id in security_group_ids]
        if key_name:
            attrs["key_name"] = key_name
        if user_data is not None:
            raw = user_data.encode() if isinstance(user_data, str) else user_data
            attrs["user_data"] = base64.b64encode(raw).decode()
        if metadata:
            attrs["metadata"] = dict(metadata)
        with self._errors(f"create server {name}"):
            server = conn.compute.create_server(**attrs)
        if wait:
            try:
                self.wait_for(server.id, states=("running",), timeout=timeout)
            except BackendError:
                with contextlib.suppress(BackendError):
                    self.delete(server.id)
                raise
        return server.id

    def _get(self, server_id: str) -> Any:
        with self._errors(f"server {server_id}"):
            try:
                return self.conn.compute.get_server(server_id)
            except os_exc.NotFoundException as exc:
                raise NotFound(f"server {server_id} does not exist") from exc

    def state(self, server_id: str) -> ServerState:
        return server_state_of(self._get(server_id))

    def list_servers(
        self, *, project_id: str | None = None, changes_since: datetime | str | None = None
    ) -> list[ServerState]:
        """Servers of one project (or of all projects), for the watcher.

        With ``changes_since`` only servers changed since then, including those deleted since (state
        ``deleted``): poll with the time of the previous poll, and do a full list now and then to reconcile.
        """
        query: dict[str, Any] = {}
        if project_id:
            query["project_id"] = project_id
        if changes_since is not None:
            query["changes_since"] = changes_since.isoformat() if isinstance(changes_since, datetime) else changes_since
        with self._errors("list servers"):
            return [server_state_of(s) for s in self.conn.compute.servers(all_projects=True, **query)]

    def wait_for(self, server_id: str, *, states: Iterable[str], timeout: float = 120) -> ServerState:
        """Poll until the server is in one of ``states`` with no task in progress.

        BackendError (with Nova's fault) when it goes to ERROR unless waited for; after ``timeout`` seconds.
        """
        wanted = set(states)
        deadline = time.monotonic() + timeout
        while True:
            current = self.state(server_id)
            if current.state in wanted and not current.busy:
                return current
            if current.state == "error" and "error" not in wanted:
                raise BackendError(f"server {current.name or server_id} failed: {current.fault or 'status ERROR'}")
            if time.monotonic() > deadline:
                raise BackendError(
                    f"server {server_id} is {current.status}"
                    f"{f' ({current.task_state})' if current.task_state else ''} after {timeout:.0f} s, "
                    f"expected {' or '.join(sorted(wanted))}"
                )
            time.sleep(self.poll)

    def _action(
        self,
        server_id: str,
        what: str,
        call: Any,
        *,
        done: Iterable[str],
        wait: bool,
        timeout: float,
    ) -> ServerState:
        """Run a Nova action; a 409 when the server is already where it should be is a no-op (idempotence)."""
        target = set(done)
        try:
            with self._errors(f"{what} server {server_id}"):
                call()
        except BackendError as exc:
            if isinstance(exc.__cause__, os_exc.ConflictException):
                current = self.state(server_id)
                if current.state in target and not current.busy:
                    return current
            raise
        if not wait:
            return self.state(server_id)
        return self.wait_for(server_id, states=target, timeout=timeout)

    def start(self, server_id: str, *, wait: bool = True, timeout: float = 120) -> ServerState:
        compute = self.conn.compute
        return self._action(
            server_id, "start", lambda: compute.start_server(server_id), done=("running",), wait=wait, timeout=timeout
        )

    def stop(self, server_id: str, *, wait: bool = True, timeout: float = 120) -> ServerState:
        compute = self.conn.compute
        return self._action(
            server_id, "stop", lambda: compute.stop_server(server_id), done=("shutoff",), wait=wait, timeout=timeout
        )

    def reboot(self, server_id: str, *, kind: str = "soft", wait: bool = True, timeout: float = 120) -> ServerState:
        if kind not in REBOOT_KINDS:
            raise ValueError(f"reboot kind must be one of {REBOOT_KINDS}, not {kind!r}")
        compute = self.conn.compute
        return self._action(
            server_id,
            f"{kind} reboot",
            lambda: compute.reboot_server(server_id, kind.upper()),
            done=("running",),
            wait=wait,
            timeout=timeout,
        )

    def pause(self, server_id: str, *, wait: bool = True, timeout: float = 120) -> ServerState:
        compute = self.conn.compute
        return self._action(
            server_id, "pause", lambda: compute.pause_server(server_id), done=("paused",), wait=wait, timeout=timeout
        )

    def resume(self, server_id: str, *, wait: bool = True, timeout: float = 120) -> ServerState:
        """Unpause a paused server (Nova's ``unpause``; a suspended one is resumed)."""
        compute = self.conn.compute
        current = self.state(server_id)
        call = compute.resume_server if current.status == "SUSPENDED" else compute.unpause_server
        return self._action(server_id, "resume", lambda: call(server_id), done=("running",), wait=wait, timeout=timeout)

    def resize(self, server_id: str, *, flavor_id: str, confirm: bool = True, timeout: float = 300) -> ServerState:
        """Move the server to another flavor and (``confirm``) confirm it; waits for the result.

        A resize Nova gives up on (the server is back without VERIFY_RESIZE) raises BackendError with the
        reason from the server's last instance action.
        """
        compute = self.conn.compute
        before = self.state(server_id)
        with self._errors(f"resize server {server_id}"):
            compute.resize_server(server_id, flavor_id)
        deadline = time.monotonic() + timeout
        while True:
            current = self.state(server_id)
            if current.status == "VERIFY_RESIZE" and not current.busy:
                break
            if current.state == "error":
                raise BackendError(f"resize server {server_id} failed: {current.fault or 'status ERROR'}")
            if current.status == before.status and not current.busy:
                raise BackendError(f"resize server {server_id} failed: {self._last_action_error(server_id)}")
            if time.monotonic() > deadline:
                raise BackendError(f"resize server {server_id}: still {current.status} after {timeout:.0f} s")
            time.sleep(self.poll)
        if not confirm:
            return current
        with self._errors(f"confirm resize of server {server_id}"):
            compute.confirm_server_resize(server_id)
        while True:  # VERIFY_RESIZE maps to the power state too: wait for Nova's status to move on
            current = self.state(server_id)
            if current.status != "VERIFY_RESIZE" and not current.busy:
                return current
            if time.monotonic() > deadline:
                raise BackendError(
                    f"confirm resize of server {server_id}: still {current.status} after {timeout:.0f} s"
                )
            time.sleep(self.poll)

    def _last_action_error(self, server_id: str) -> str:
        with contextlib.suppress(Exception):
            for action in self.conn.compute.server_actions(server_id):
                if action.message:
                    return str(action.message)
        return "Nova gave up (no reason recorded)"

    def delete(self, server_id: str, *, timeout: float = 120) -> bool:
        """Delete and poll until Nova no longer shows the server. False when there was none."""
        try:
            with self._errors(f"delete server {server_id}"):
                self.conn.compute.delete_server(server_id, ignore_missing=False)
        except NotFound:
            return False
        deadline = time.monotonic() + timeout
        marked_deleted_at: float | None = None
        while True:
            try:
                current = self.state(server_id)
            except NotFound:
                return True
            if current.state == "deleted":
                # Nova's compute saves vm_state DELETED a moment before it destroys the row; until then the
                # server still shows in lists. Wait for the 404, but a row stuck in DELETED is deleted too.
                marked_deleted_at = marked_deleted_at or time.monotonic()
                if time.monotonic() - marked_deleted_at > min(DELETED_ROW_GRACE, timeout / 2):
                    return True
            if time.monotonic() > deadline:
                raise BackendError(f"delete server {server_id}: still {current.status} after {timeout:.0f} s")
            time.sleep(self.poll)

    def snapshot(
        self, server_id: str, *, name: str, metadata: Mapping[str, str] | None = None, timeout: float = 300
    ) -> str:
        """Snapshot a server into a Glance image owned by the server's project; returns the image id.

        Waits until Nova has finished its part (no task left on the server). Whether the image data is
        there depends on the compute driver (the fake driver leaves the image queued, without data).
        """
        image_id = self.start_snapshot(server_id, name=name, metadata=metadata)
        self.wait_idle(server_id, timeout=timeout)
        return image_id

    def start_snapshot(self, server_id: str, *, name: str, metadata: Mapping[str, str] | None = None) -> str:
        """Ask Nova for a snapshot image of the server (in its project); returns the image id at once."""
        server = self._get(server_id)
        conn = self.project_conn(server.project_id)
        with self._errors(f"snapshot server {server_id}"):
            return conn.compute.get_server(server_id).create_image(conn.compute, name, dict(metadata or {}))

    def wait_idle(self, server_id: str, *, timeout: float = 300) -> None:
        """Poll until Nova has no task left on the server (e.g. the snapshot upload)."""
        deadline = time.monotonic() + timeout
        while self.state(server_id).busy:
            if time.monotonic() > deadline:
                raise BackendError(f"server {server_id}: still busy after {timeout:.0f} s")
            time.sleep(self.poll)

    def console(self, server_id: str, *, console_type: str = "novnc") -> RemoteConsole:
        """URL of Nova's remote console for the server (remote-consoles API, microversion 2.6+)."""
        if console_type not in CONSOLE_TYPES:
            raise ValueError(f"console_type must be one of {CONSOLE_TYPES}, not {console_type!r}")
        try:
            with self._errors(f"console of server {server_id}"):
                found = self.conn.compute.create_console(server_id, console_type)
        except (HostUnreachable, AuthFailed, NotFound):
            raise
        except BackendError as exc:
            raise ConsoleUnavailable(
                f"the {console_type} console of server {server_id} is not available: {exc.message}"
            ) from exc
        if not found or not found.get("url"):
            raise ConsoleUnavailable(f"the {console_type} console of server {server_id} is not available: no URL")
        return RemoteConsole(
            url=found["url"], type=found.get("type") or console_type, protocol=found.get("protocol") or ""
        )
