"""Networks: admin-defined libvirt networks (NAT, isolated, or an existing bridge) that tenants choose from.

A ``Network`` row is the definition; it reaches a host the first time an instance on that host
uses it (``ensure_on_host``, called by the launch task), under the same libvirt name everywhere.
Creating, changing and deleting definitions is for cloud admins. Deleting a definition does not
remove the libvirt network from hosts (it may be one the admin made by hand, such as ``default``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import ProtectedError, QuerySet
from django.utils.text import slugify
from django.utils.translation import gettext as _

from portal.access import VIEW
from portal.backends.base import BackendError
from portal.backends.libvirt import network as libvirt_network
from portal.models import Tenant
from portal.services import ConflictError, ServiceError, record_audit, require_cloud_admin
from vms.models import Host, Network

NETWORK_FIELDS = ("name", "libvirt_name", "mode", "bridge", "cidr", "dhcp", "description", "is_public")
# What a host already made from the definition: not changed while instances are attached.
HOST_FIELDS = ("libvirt_name", "mode", "bridge", "cidr", "dhcp")


def _require_staff(actor) -> None:
    require_cloud_admin(actor, _("Only cloud admins can define networks."))


def default_libvirt_name(name: str) -> str:
    return slugify(name)[:50]


def validate_network(values: Mapping[str, Any], *, exclude_pk: int | None = None) -> dict[str, Any]:
    """Check a whole network definition; returns it cleaned (stripped names, canonical subnet).

    Raises ServiceError naming the field at fault, or ConflictError for a name, libvirt name or
    subnet another network already uses.
    """
    clean = dict(values)
    name = str(clean.get("name") or "").strip()
    if not name:
        raise ServiceError(_("A network needs a name."), field="name")
    if len(name) > 100:
        raise ServiceError(_("Keep the name to 100 characters."), field="name")
    clean["name"] = name
    libvirt_name = str(clean.get("libvirt_name") or "").strip() or default_libvirt_name(name)
    if not libvirt_network.NAME_RE.fullmatch(libvirt_name):
        raise ServiceError(
            _("The libvirt name may use letters, digits, “_”, “.” and “-” (at most 50 characters)."),
            field="libvirt_name",
        )
    clean["libvirt_name"] = libvirt_name
    mode = clean.get("mode")
    if mode not in Network.Mode.values:
        raise ServiceError(_("Choose the mode: NAT, isolated or existing bridge."), field="mode")
    bridge = str(clean.get("bridge") or "").strip()
    cidr = str(clean.get("cidr") or "").strip()
    if mode == Network.Mode.BRIDGE:
        if not libvirt_network.BRIDGE_RE.fullmatch(bridge):
            raise ServiceError(
                _("Name the host bridge to attach to, e.g. br0 (at most 15 letters, digits, “_”, “.”, “-”, “:”)."),
                field="bridge",
            )
        if cidr:
            raise ServiceError(
                _("A bridged network takes its addresses from the physical network: leave the subnet empty."),
                field="cidr",
            )
    else:
        if bridge:
            raise ServiceError(
                _("Only the mode “existing bridge” uses a host bridge; NAT and isolated networks get their own."),
                field="bridge",
            )
        if mode == Network.Mode.NAT and not cidr:
            raise ServiceError(_("A NAT network needs a subnet, e.g. 192.168.150.0/24."), field="cidr")
    if cidr:
        cidr = _validate_cidr(cidr)
    clean["bridge"], clean["cidr"] = bridge, cidr
    clean["dhcp"] = bool(clean.get("dhcp", True))
    if len(str(clean.get("description") or "")) > 255:
        raise ServiceError(_("Keep the description to 255 characters."), field="description")

    others = Network.objects.exclude(pk=exclude_pk) if exclude_pk else Network.objects.all()
    if others.filter(name=name).exists():
        raise ConflictError(_("A network named “%(name)s” already exists.") % {"name": name}, field="name")
    if others.filter(libvirt_name=libvirt_name).exists():
        raise ConflictError(
            _("Another network already uses the libvirt name “%(name)s”.") % {"name": libvirt_name},
            field="libvirt_name",
        )
    if cidr:
        subnet = ipaddress.ip_network(cidr)
        for other_name, other_cidr in others.exclude(cidr="").values_list("name", "cidr"):
            try:
                overlaps = subnet.overlaps(ipaddress.ip_network(other_cidr, strict=False))
            except ValueError:
                continue
            if overlaps:
                raise ConflictError(
                    _("The subnet %(cidr)s overlaps network “%(other)s” (%(other_cidr)s).")
                    % {"cidr": cidr, "other": other_name, "other_cidr": other_cidr},
                    field="cidr",
                )
    return clean


def _validate_cidr(cidr: str) -> str:
    try:
        subnet = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise ServiceError(
            _("“%(cidr)s” is not a subnet; write it like 192.168.150.0/24.") % {"cidr": cidr[:50]}, field="cidr"
        ) from exc
    if subnet.version != 4:
        raise ServiceError(_("Only IPv4 subnets are supported."), field="cidr")
    if not libvirt_network.MIN_PREFIX <= subnet.prefixlen <= libvirt_network.MAX_PREFIX:
        raise ServiceError(
            _("The prefix must be between /%(min)d and /%(max)d.")
            % {"min": libvirt_network.MIN_PREFIX, "max": libvirt_network.MAX_PREFIX},
            field="cidr",
        )
    if str(subnet) != cidr:
        raise ServiceError(
            _("“%(cidr)s” has host bits set; did you mean %(subnet)s?") % {"cidr": cidr, "subnet": subnet},
            field="cidr",
        )
    return cidr


def create_network(
    *,
    actor,
    name: str,
    mode: str,
    libvirt_name: str | None = None,
    bridge: str = "",
    cidr: str = "",
    dhcp: bool = True,
    description: str = "",
    is_public: bool = False,
    tenants: Iterable[Tenant] = (),
    ip: str | None = None,
) -> Network:
    _require_staff(actor)
    values = validate_network(
        {
            "name": name,
            "libvirt_name": libvirt_name,
            "mode": mode,
            "bridge": bridge,
            "cidr": cidr,
            "dhcp": dhcp,
            "description": description,
        }
    )
    try:
        with transaction.atomic():
            network = Network.objects.create(**values, is_public=bool(is_public))
            network.tenants.set(list(tenants))
            record_audit(
                user=actor,
                action="network.create",
                target=network,
                ip=ip,
                detail={"mode": network.mode, "libvirt_name": network.libvirt_name, "cidr": network.cidr},
            )
    except IntegrityError as exc:
        raise ConflictError(_("A network with that name was created at the same time; pick another name.")) from exc
    return network


def validate_network_update(*, network: Network, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Check changes to a definition without saving them; returns the fields that really change."""
    unknown = set(changes) - set(NETWORK_FIELDS)
    if unknown:
        raise ServiceError(_("These fields cannot be changed: %(fields)s.") % {"fields": ", ".join(sorted(unknown))})
    current = {field: getattr(network, field) for field in NETWORK_FIELDS}
    mode = changes.get("mode", current["mode"])
    if mode != Network.Mode.BRIDGE and "bridge" not in changes:
        current["bridge"] = ""  # leaving bridge mode drops the bridge name
    if mode == Network.Mode.BRIDGE and "cidr" not in changes:
        current["cidr"] = ""  # and entering it drops the subnet
    merged = validate_network({**current, **changes}, exclude_pk=network.pk)
    changed = {field: merged[field] for field in NETWORK_FIELDS if merged[field] != getattr(network, field)}
    host_changes = sorted(set(changed) & set(HOST_FIELDS))
    if host_changes and network.instances.exists():
        raise ConflictError(
            _("Network “%(name)s” is used by instances: %(fields)s cannot change now.")
            % {"name": network.name, "fields": ", ".join(host_changes)},
            field=host_changes[0],
        )
    return changed


def update_network(
    *,
    actor,
    network: Network,
    tenants: Iterable[Tenant] | None = None,
    ip: str | None = None,
    **changes: Any,
) -> Network:
    """Change some fields of a definition. What hosts already built from it (libvirt name, mode, bridge,
    subnet, DHCP) cannot change while instances are attached to it."""
    _require_staff(actor)
    changed = validate_network_update(network=network, changes=changes)
    try:
        with transaction.atomic():
            for field, value in changed.items():
                setattr(network, field, value)
            network.save()
            detail: dict[str, Any] = dict(changed)
            if tenants is not None:
                network.tenants.set(list(tenants))
                detail["tenants"] = sorted(t.slug for t in network.tenants.all())
            record_audit(user=actor, action="network.update", target=network, ip=ip, detail=detail)
    except IntegrityError as exc:
        raise ConflictError(_("Another network was given that name at the same time.")) from exc
    return network


def delete_network(*, actor, network: Network, ip: str | None = None) -> None:
    """Delete a definition no instance uses. The libvirt networks on hosts stay (see the module docstring)."""
    _require_staff(actor)
    in_use = ConflictError(
        _("Network “%(name)s” is used by instances; delete or move them first.") % {"name": network.name}
    )
    if network.instances.exists():
        raise in_use
    try:
        with transaction.atomic():
            record_audit(
                user=actor,
                action="network.delete",
                target=network,
                ip=ip,
                detail={"libvirt_name": network.libvirt_name},
            )
            network.delete()
    except ProtectedError as exc:
        raise in_use from exc


def spec_for(network: Network) -> libvirt_network.NetworkSpec:
    return libvirt_network.NetworkSpec(
        name=network.libvirt_name,
        mode=network.mode,
        bridge=network.bridge or None,
        cidr=network.cidr or None,
        dhcp=network.dhcp,
    )


def ensure_on_host(*, network: Network, host: Host) -> str:
    """Make the network exist and run on ``host`` (defined, started, autostart); returns its libvirt name.

    Raises BackendError when the host refuses or cannot be reached (the launch task records it).
    """
    try:
        spec = spec_for(network)
    except ValueError as exc:  # a row edited around the services
        raise BackendError(f"network {network.name!r} is not valid: {exc}") from exc
    return libvirt_network.ensure_network(host.uri, spec)


def networks_for(*, user, tenant: Tenant | None = None) -> QuerySet[Network]:
    """Networks the user may see; with ``tenant``, only those that tenant may use."""
    networks = Network.objects.restrict(user, VIEW)
    if tenant is not None:
        networks = networks.filter(pk__in=Network.objects.usable_by(tenant).values("pk"))
    return networks.prefetch_related("tenants")
