"""The launch page: a source (disk image or installer ISO), a flavor, how many, with the quota impact shown live."""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from images.models import Image
from images.selectors import launch_sources_for
from portal.middleware import client_ip
from portal.models import Quota
from portal.selectors import heading, quota_overview
from portal.services import ServiceError
from portal.views import current_tenant
from vms import lifecycle
from vms.compute import Capability, compute_for, host_can
from vms.forms import LaunchForm, source_needs
from vms.keypairs import keypairs_for
from vms.networks import networks_for
from vms.security_groups import ensure_default_group, security_groups_for
from vms.selectors import flavors_for, tenant_placement

QUOTA_RESOURCES_OF_LAUNCH = ("instances", "vcpus", "ram_mib", "disk_gib")


@dataclass(frozen=True)
class ImpactLine:
    """One quota resource of a launch: what is used, what the launch adds, the limit (-1: unlimited)."""

    resource: str
    label: str
    used: int
    add: int
    limit: int

    @property
    def heading(self) -> str:
        return heading(self.label)  # capfirst made "VCPU" of the Chinese "vCPU"

    @property
    def after(self) -> int:
        return self.used + self.add

    @property
    def unlimited(self) -> bool:
        return self.limit < 0

    @property
    def over(self) -> bool:
        return not self.unlimited and self.after > self.limit

    @property
    def percent(self) -> int:
        if self.unlimited:
            return 0
        if self.limit == 0:
            return 100 if self.after else 0
        return min(100, math.ceil(100 * self.after / self.limit))


def _launch_quota(tenant) -> dict[str, dict]:
    try:
        lines = quota_overview(tenant=tenant)
    except Quota.DoesNotExist:
        return {}
    return {
        line.resource: {"label": line.label, "used": line.used, "limit": line.limit}
        for line in lines
        if line.resource in QUOTA_RESOURCES_OF_LAUNCH
    }


def _impact(quota: dict[str, dict], flavor, count: int) -> list[ImpactLine]:
    per_instance = {"instances": 1}
    if flavor is not None:
        per_instance.update(vcpus=flavor.vcpus, ram_mib=flavor.ram_mib, disk_gib=flavor.disk_gib)
    return [
        ImpactLine(
            resource=resource,
            label=entry["label"],
            used=entry["used"],
            add=per_instance.get(resource, 0) * count,
            limit=entry["limit"],
        )
        for resource, entry in quota.items()
    ]


def _launch_sources(user, tenant) -> list[Image]:
    return list(launch_sources_for(user=user, tenant=tenant).order_by("kind", "name", "id"))


SOURCE_ICONS = {Image.OsType.WINDOWS: "windows", Image.OsType.LINUX: "tux"}


@dataclass
class SourceCard:
    """One image or ISO in the launch form's source picker."""

    image: Image
    checked: bool

    @property
    def icon(self) -> str:
        return SOURCE_ICONS.get(self.image.os_type) or ("disc" if self.image.kind == Image.Kind.ISO else "hdd")

    @property
    def size(self) -> int:
        return self.image.virtual_size or self.image.size

    @property
    def needs(self) -> list[str]:
        return source_needs(self.image)


def _source_groups(images: list[Image], chosen: str) -> list[dict]:
    groups = []
    for kind, label in ((Image.Kind.DISK, _("Disk images")), (Image.Kind.ISO, _("Installer ISOs"))):
        cards = [SourceCard(image=i, checked=str(i.pk) == chosen) for i in images if i.kind == kind]
        if cards:
            groups.append({"kind": kind, "label": label, "sources": cards})
    return groups


# What a launch offers that a placement target may not take.
LAUNCH_NEEDS = {
    Capability.INSTALL_FROM_ISO: gettext_lazy("installer ISOs"),
    Capability.PORTAL_NETWORKS: gettext_lazy("the portal's networks"),
}


def _placement_note(tenant) -> dict | None:
    """Where a tenant-wide rule sends new instances, when that host cannot take all the form offers."""
    host = tenant_placement(tenant=tenant)
    if host is None:
        return None
    missing = [str(label) for capability, label in LAUNCH_NEEDS.items() if not host_can(host, capability)]
    return {"where": compute_for(host).describe(host), "missing": ", ".join(missing)} if missing else None


@login_required
def instance_launch(request):
    tenant = current_tenant(request)
    if tenant is None:
        return render(request, "vms/instance_launch.html", {"tenant": None, "form": None})
    user = request.user
    images = _launch_sources(user, tenant)
    flavors = list(flavors_for(user=user, tenant=tenant))
    form_kwargs = {
        "images": images,
        "flavors": flavors_for(user=user, tenant=tenant),
        "networks": networks_for(user=user, tenant=tenant),
        "keypairs": keypairs_for(user=user, tenant=tenant),
        "security_groups": security_groups_for(user=user, tenant=tenant),
    }
    if request.method == "POST":
        form = LaunchForm(request.POST, **form_kwargs)
        if form.is_valid():
            data = form.cleaned_data
            try:
                launch = lifecycle.launch_instances(
                    actor=user,
                    tenant=tenant,
                    name=data["name"],
                    flavor=data["flavor"],
                    image=data["image"],
                    count=data["count"],
                    keypair=data["keypair"],
                    network=data["network"],
                    security_groups=list(data["security_groups"]) or None,  # none ticked: "default"
                    user_data=data["user_data"],
                    ip=client_ip(request),
                )
            except ServiceError as exc:
                form.add_service_error(exc)
            else:
                names = ", ".join(instance.name for instance in launch.instances)
                messages.success(request, _("Launching %(names)s.") % {"names": names})
                if len(launch.instances) == 1:
                    return redirect("instance_detail", pk=launch.instances[0].pk)
                return redirect("instances")
    else:
        initial = {"count": 1, "security_groups": [ensure_default_group(tenant=tenant).pk]}
        if flavors:
            initial["flavor"] = flavors[0].pk
        if request.GET.get("image", "").isdigit():
            initial["image"] = int(request.GET["image"])
        form = LaunchForm(initial=initial, **form_kwargs)
    quota = _launch_quota(tenant)
    selected = str(form["flavor"].value() or "")
    flavor = next((f for f in flavors if str(f.pk) == selected), None)
    try:
        count = max(1, int(form["count"].value() or 1))
    except (TypeError, ValueError):
        count = 1
    chosen = str(form["image"].value() or "")
    impact = _impact(quota, flavor, count)
    return render(
        request,
        "vms/instance_launch.html",
        {
            "tenant": tenant,
            "form": form,
            "source_groups": _source_groups(images, chosen),
            "flavors": flavors,
            "selected_flavor": selected,
            "has_sources": bool(images),
            "impact": impact,
            "over_quota": any(line.over for line in impact),  # Launch is not offered (launch.js keeps it so)
            "placement": _placement_note(tenant),
            "max_batch": settings.LABCLOUD_MAX_BATCH,
            "launch_data": {
                "quota": quota,
                "flavors": {
                    str(f.pk): {"vcpus": f.vcpus, "ram_mib": f.ram_mib, "disk_gib": f.disk_gib} for f in flavors
                },
                "images": {
                    str(i.pk): {"min_disk_gib": i.min_disk_gib, "min_ram_mib": i.min_ram_mib, "kind": i.kind}
                    for i in images
                },
                "text": {"unlimited": _("unlimited"), "tooSmall": _("too small for the chosen source")},
            },
        },
    )
