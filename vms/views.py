"""Dashboard pages of the compute app: flavors, instances (list, launch, detail and its actions) and hosts.

Reads go through the access gate (``restrict`` via the selectors); every POST goes through a
service of vms.lifecycle, whose ``ServiceError``/``ConflictError`` is shown as a message and
changes nothing. Another tenant's instance is a 404. Live state reaches the pages over the
``/ws/live/`` websocket (static/vms/live.js); nothing here talks to a hypervisor except the
staff-only host refresh.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_POST

from images.models import Image
from images.selectors import images_for, visible_to_tenant
from portal.access import CHANGE, DELETE, VIEW, is_cloud_admin
from portal.middleware import client_ip
from portal.models import Quota
from portal.selectors import quota_overview
from portal.services import ServiceError
from portal.views import current_tenant
from vms import consoles, lifecycle
from vms.dashboard import LIVE_SOCKET_PATH, host_capacity, toast_config
from vms.forms import (
    BULK_ACTIONS,
    POWER_ACTIONS,
    AttachDiskForm,
    BulkActionForm,
    CaptureForm,
    LaunchForm,
    ResizeForm,
    ResourcesForm,
    SnapshotForm,
    source_needs,
)
from vms.keypairs import keypairs_for
from vms.models import Host, Instance, InstanceDisk, Operation, Snapshot
from vms.networks import networks_for
from vms.selectors import (
    flavors_for,
    hosts_for,
    instances_for,
    metric_points_for,
    operations_for_target,
    tenant_cloud,
)

PAGE_SIZE = 50
OPERATIONS_SHOWN = 10
SERIAL_SOCKET_PATH = "/ws/instances/{pk}/serial/"
INSTANCE_TARGET = "vms.instance"
QUOTA_RESOURCES_OF_LAUNCH = ("instances", "vcpus", "ram_mib", "disk_gib")

TASK_LABELS = {
    "launch": gettext_lazy("Launching"),
    "start": gettext_lazy("Starting"),
    "shutdown": gettext_lazy("Shutting down"),
    "stop": gettext_lazy("Powering off"),
    "reboot": gettext_lazy("Rebooting"),
    "reset": gettext_lazy("Resetting"),
    "pause": gettext_lazy("Pausing"),
    "resume": gettext_lazy("Resuming"),
    "finish_install": gettext_lazy("Finishing the install"),
    "resize": gettext_lazy("Resizing"),
    "set_resources": gettext_lazy("Changing vCPUs/RAM"),
    "attach_disk": gettext_lazy("Attaching a disk"),
    "detach_disk": gettext_lazy("Detaching a disk"),
    "snapshot_create": gettext_lazy("Taking a snapshot"),
    "snapshot_revert": gettext_lazy("Reverting to a snapshot"),
    "snapshot_delete": gettext_lazy("Deleting a snapshot"),
    "delete": gettext_lazy("Deleting"),
}
# Detail-page power buttons: label, icon, Bootstrap tone, confirmation question (None: no confirmation).
ACTION_BUTTONS = {
    "start": (gettext_lazy("Start"), "play-fill", "success", None),
    "shutdown": (gettext_lazy("Shut down"), "power", "secondary", None),
    "stop": (
        gettext_lazy("Power off"),
        "plug",
        "warning",
        gettext_lazy("Power off “%(name)s” now? Unsaved data in the guest is lost."),
    ),
    "reboot": (gettext_lazy("Reboot"), "arrow-clockwise", "secondary", None),
    "reset": (
        gettext_lazy("Hard reset"),
        "lightning-charge",
        "warning",
        gettext_lazy("Reset “%(name)s” like the reset button of a PC? Unsaved data in the guest is lost."),
    ),
    "pause": (gettext_lazy("Pause"), "pause-fill", "secondary", None),
    "resume": (gettext_lazy("Resume"), "play", "success", None),
    "finish_install": (
        gettext_lazy("Finish install"),
        "check2-circle",
        "primary",
        gettext_lazy("Finish the install of “%(name)s”? The ISO is ejected and the instance restarts from its disk."),
    ),
}


def _admin_url(name: str, *args) -> str | None:
    """A Django admin URL, or None while the model is not registered there."""
    try:
        return reverse(f"admin:{name}", args=args)
    except NoReverseMatch:
        return None


# ---------------------------------------------------------------- flavors


@login_required
def flavor_list(request):
    tenant = current_tenant(request)
    staff = is_cloud_admin(request.user)
    # Staff manage every flavor, disabled ones included; everyone else sees what the active tenant may launch.
    if staff:
        flavors = list(flavors_for(user=request.user))
    elif tenant is not None:
        flavors = list(flavors_for(user=request.user, tenant=tenant))
    else:
        flavors = []  # the page shows how to join a tenant instead
    if staff:
        for flavor in flavors:
            flavor.admin_url = _admin_url("vms_flavor_change", flavor.pk)
    return render(
        request,
        "vms/flavors.html",
        {
            "tenant": tenant,
            "flavors": flavors,
            "staff": staff,
            "add_url": _admin_url("vms_flavor_add") if staff else None,
        },
    )


# ---------------------------------------------------------------- shared helpers


def _live_config(*, tenant_id: int | None, instance_id: int | None = None) -> dict:
    """What static/vms/live.js needs: the socket, the tenant to listen to, and its texts in the page's language."""
    return {
        "socket": LIVE_SOCKET_PATH
        + "?"
        + urlencode({k: v for k, v in (("tenant", tenant_id), ("instance", instance_id)) if v}),
        "instance": instance_id,
        "states": {value: str(label) for value, label in Instance.State.choices},
        "tasks": {key: str(label) for key, label in TASK_LABELS.items()},
        "operationStates": {value: str(label) for value, label in Operation.State.choices},
        "allowed": {action: sorted(states) for action, states in lifecycle.ACTION_STATES.items()},
        "text": {
            "live": _("Live"),
            "offline": _("Offline"),
            "connecting": _("Connecting…"),
            "deleted": _("This instance has been deleted."),
            "changed": _("The instance changed. Reload to see every detail."),
            "operation": _("Operation"),
        },
        **toast_config(),  # operation toasts (static/vms/live.js)
    }


def _attach_active_operations(user, instances: list[Instance]) -> None:
    """Give each instance its newest unfinished operation (``active_op``), in one query for the whole page."""
    ids = [str(instance.pk) for instance in instances]
    active: dict[str, Operation] = {}
    if ids:
        operations = (
            Operation.objects.restrict(user, VIEW)
            .filter(target_type=INSTANCE_TARGET, target_id__in=ids)
            .filter(state__in=[Operation.State.QUEUED, Operation.State.RUNNING])
            .order_by("created_at", "id")
        )
        active = {op.target_id: op for op in operations}  # the newest wins
    for instance in instances:
        instance.active_op = active.get(str(instance.pk))
        instance.task_label = TASK_LABELS.get(instance.task, instance.task)


def _instance_for(request, pk: int, action: str = CHANGE) -> Instance:
    """An instance the user may see and ``action`` (else 404: another tenant's instance does not exist)."""
    return get_object_or_404(instances_for(user=request.user).filter(pk__in=_allowed(request.user, action)), pk=pk)


def _allowed(user, action: str):
    return Instance.objects.restrict(user, action).values("pk")


def _report(request, exc: ServiceError) -> None:
    messages.error(request, exc.message)


def _form_errors(request, form) -> None:
    for field, errors in form.errors.items():
        label = form.fields[field].label if field in form.fields else ""
        for error in errors:
            messages.error(request, f"{label}: {error}" if label else error)


# ---------------------------------------------------------------- list and bulk actions


@login_required
@require_GET
def instance_list(request):
    tenant = current_tenant(request)
    staff = is_cloud_admin(request.user)
    if staff:
        instances = instances_for(user=request.user)
    elif tenant is not None:
        instances = instances_for(user=request.user, tenant=tenant)
    else:
        instances = Instance.objects.none()
    state = request.GET.get("state", "")
    if state not in Instance.State.values:
        state = ""
    if state:
        instances = instances.filter(state=state)
    query = request.GET.get("q", "").strip()[:100]
    if query:
        instances = instances.filter(name__icontains=query)
    page = Paginator(instances, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    _attach_active_operations(request.user, rows)
    return render(
        request,
        "vms/instances.html",
        {
            "tenant": tenant,
            "staff": staff,
            "page": page,
            "instances": rows,
            "state": state,
            "states": Instance.State.choices,
            "query": query,
            "filtered": bool(state or query),
            "bulk_actions": BULK_ACTIONS,
            "can_launch": tenant is not None,
            "live_config": _live_config(tenant_id=None if staff else getattr(tenant, "pk", None)),
        },
    )


@login_required
@require_POST
def instance_bulk(request):
    form = BulkActionForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose an action and at least one instance."))
        return redirect("instances")
    action = form.cleaned_data["action"]
    ids = form.cleaned_data["instances"]
    allowed = _allowed(request.user, _gate(action))
    instances = list(instances_for(user=request.user).filter(pk__in=ids).filter(pk__in=allowed).order_by("name"))
    done, ip = [], client_ip(request)
    for instance in instances:
        try:
            if action == "delete":
                lifecycle.delete_instance(actor=request.user, instance=instance, ip=ip)
            else:
                lifecycle.request_action(actor=request.user, instance=instance, action=action, ip=ip)
        except ServiceError as exc:
            messages.error(request, f"{instance.name}: {exc.message}")
        else:
            done.append(instance.name)
    missing = len(set(ids)) - len(instances)
    if missing:
        messages.error(request, _("%(count)d of the chosen instances no longer exist.") % {"count": missing})
    if done:
        messages.success(
            request,
            _("%(action)s requested for %(names)s.") % {"action": BULK_ACTIONS[action], "names": ", ".join(done)},
        )
    return redirect("instances")


def _gate(action: str) -> str:
    return DELETE if action == "delete" else CHANGE


# ---------------------------------------------------------------- launch


@dataclass(frozen=True)
class ImpactLine:
    """One quota resource of a launch: what is used, what the launch adds, the limit (-1: unlimited)."""

    resource: str
    label: str
    used: int
    add: int
    limit: int

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
    usable = Image.objects.filter(visible_to_tenant(tenant_id=tenant.pk)).values("pk")
    return list(images_for(user=user, launchable=True).filter(pk__in=usable).order_by("kind", "name", "id"))


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
        initial = {"count": 1}
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
            "impact": _impact(quota, flavor, count),
            "tenant_cloud": tenant_cloud(tenant=tenant),
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


# ---------------------------------------------------------------- detail


def _action_buttons(instance: Instance) -> list[dict]:
    buttons = []
    for action in POWER_ACTIONS:
        if action == "finish_install" and not instance.installing:
            continue
        label, icon, tone, confirm = ACTION_BUTTONS[action]
        allowed = lifecycle.ACTION_STATES.get(action, set())
        buttons.append(
            {
                "action": action,
                "label": label,
                "icon": icon,
                "tone": tone,
                "confirm": (confirm % {"name": instance.name}) if confirm else "",
                "enabled": instance.state in allowed and not instance.task,
            }
        )
    return buttons


def _can(instance: Instance, action: str) -> bool:
    return instance.state in lifecycle.ACTION_STATES.get(action, set()) and not instance.task


@login_required
@require_GET
def instance_detail(request, pk: int):
    instance = get_object_or_404(instances_for(user=request.user), pk=pk)
    user = request.user
    staff = is_cloud_admin(user)
    _attach_active_operations(user, [instance])
    flavors = flavors_for(user=user, tenant=instance.tenant).exclude(pk=instance.flavor_id)
    can_delete = Instance.objects.restrict(user, DELETE).filter(pk=pk).exists()
    can_console = Instance.objects.restrict(user, CHANGE).filter(pk=pk).exists()
    operations = list(operations_for_target(user=user, target=instance).select_related("user")[:OPERATIONS_SHOWN])
    for op in operations:
        op.label = TASK_LABELS.get(op.kind.removeprefix("instance."), op.kind)
    return render(
        request,
        "vms/instance_detail.html",
        {
            "instance": instance,
            "staff": staff,
            "buttons": _action_buttons(instance),
            "can_delete": can_delete and instance.state != Instance.State.DELETING,
            "can": {action: _can(instance, action) for action in lifecycle.ACTION_STATES},
            "resize_form": ResizeForm(flavors=flavors),
            "has_other_flavors": flavors.exists(),
            "resources_form": ResourcesForm(instance=instance),
            "disk_form": AttachDiskForm(),
            "snapshot_form": SnapshotForm(),
            "capture_form": CaptureForm(initial={"name": f"{instance.name}-image"}),
            "disks": list(InstanceDisk.objects.restrict(user, VIEW).filter(instance=instance).order_by("pk")),
            "snapshots": list(Snapshot.objects.restrict(user, VIEW).filter(instance=instance)),
            "operations": operations,
            "live_config": _live_config(tenant_id=instance.tenant_id, instance_id=instance.pk),
            "console_config": _console_config(request, instance, auto_connect=False) if can_console else None,
            "metrics_data": _metrics_data(user, instance),
        },
    )


def _metrics_data(user, instance: Instance) -> dict:
    """What static/vms/metrics.js needs: the history so far and the graphs' texts (live points come over ws/live/)."""
    return {
        "instance": instance.pk,
        "points": metric_points_for(user=user, instance=instance),
        "keep": settings.METRICS_HISTORY,
        "text": {
            "cpu": _("CPU (%)"),
            "memoryUsed": _("Used (MiB)"),
            "memoryAvailable": _("Available (MiB)"),
            "diskRead": _("Read"),
            "diskWrite": _("Write"),
            "netRx": _("Received"),
            "netTx": _("Sent"),
            "perSecond": _("/s"),
        },
    }


# ---------------------------------------------------------------- detail actions


def _perform(request, pk: int, call: Callable[[], object], success: str) -> HttpResponse:
    """Run one instance service for a POST: its refusal or ``success`` as a message, back to the instance page."""
    try:
        call()
    except ServiceError as exc:
        _report(request, exc)
    else:
        messages.success(request, success)
    return redirect("instance_detail", pk=pk)


def _posted_form(request, form):
    """The bound form when valid; otherwise its errors become messages and None is returned."""
    if form.is_valid():
        return form
    _form_errors(request, form)
    return None


@login_required
@require_POST
def instance_action(request, pk: int):
    instance = _instance_for(request, pk)
    action = request.POST.get("action", "")
    if action not in POWER_ACTIONS:
        messages.error(request, _("Unknown action."))
        return redirect("instance_detail", pk=pk)
    return _perform(
        request,
        pk,
        lambda: lifecycle.request_action(actor=request.user, instance=instance, action=action, ip=client_ip(request)),
        _("%(action)s of “%(name)s” requested.") % {"action": ACTION_BUTTONS[action][0], "name": instance.name},
    )


@login_required
@require_POST
def instance_delete(request, pk: int):
    instance = _instance_for(request, pk, DELETE)
    try:
        lifecycle.delete_instance(actor=request.user, instance=instance, ip=client_ip(request))
    except ServiceError as exc:
        _report(request, exc)
        return redirect("instance_detail", pk=pk)
    messages.success(request, _("Instance “%(name)s” is being deleted.") % {"name": instance.name})
    return redirect("instances")


@login_required
@require_POST
def instance_resize(request, pk: int):
    instance = _instance_for(request, pk)
    flavors = flavors_for(user=request.user, tenant=instance.tenant).exclude(pk=instance.flavor_id)
    if (form := _posted_form(request, ResizeForm(request.POST, flavors=flavors))) is None:
        return redirect("instance_detail", pk=pk)
    flavor = form.cleaned_data["flavor"]
    return _perform(
        request,
        pk,
        lambda: lifecycle.resize_instance(actor=request.user, instance=instance, flavor=flavor, ip=client_ip(request)),
        _("Resizing “%(name)s” to %(flavor)s.") % {"name": instance.name, "flavor": flavor.name},
    )


@login_required
@require_POST
def instance_resources(request, pk: int):
    instance = _instance_for(request, pk)
    if (form := _posted_form(request, ResourcesForm(request.POST, instance=instance))) is None:
        return redirect("instance_detail", pk=pk)
    return _perform(
        request,
        pk,
        lambda: lifecycle.set_resources(
            actor=request.user,
            instance=instance,
            vcpus=form.cleaned_data["vcpus"],
            ram_mib=form.cleaned_data["ram_mib"],
            ip=client_ip(request),
        ),
        _("Changing the vCPUs and RAM of “%(name)s”.") % {"name": instance.name},
    )


@login_required
@require_POST
def instance_disk_attach(request, pk: int):
    instance = _instance_for(request, pk)
    if (form := _posted_form(request, AttachDiskForm(request.POST))) is None:
        return redirect("instance_detail", pk=pk)
    size_gib = form.cleaned_data["size_gib"]
    return _perform(
        request,
        pk,
        lambda: lifecycle.attach_disk(actor=request.user, instance=instance, size_gib=size_gib, ip=client_ip(request)),
        _("A %(size)d GiB disk is being attached to “%(name)s”.") % {"size": size_gib, "name": instance.name},
    )


@login_required
@require_POST
def instance_disk_detach(request, pk: int, disk_pk: int):
    instance = _instance_for(request, pk)
    disk = get_object_or_404(InstanceDisk.objects.restrict(request.user, CHANGE).filter(instance=instance), pk=disk_pk)
    return _perform(
        request,
        pk,
        lambda: lifecycle.detach_disk(actor=request.user, disk=disk, ip=client_ip(request)),
        _("The disk is being detached and deleted."),
    )


@login_required
@require_POST
def instance_snapshot_create(request, pk: int):
    instance = _instance_for(request, pk)
    if (form := _posted_form(request, SnapshotForm(request.POST))) is None:
        return redirect("instance_detail", pk=pk)
    name = form.cleaned_data["name"]
    return _perform(
        request,
        pk,
        lambda: lifecycle.create_snapshot(
            actor=request.user,
            instance=instance,
            name=name,
            description=form.cleaned_data["description"],
            ip=client_ip(request),
        ),
        _("Taking snapshot “%(name)s”.") % {"name": name},
    )


def _snapshot_for(request, pk: int, snapshot_pk: int) -> Snapshot:
    instance = _instance_for(request, pk)
    return get_object_or_404(
        Snapshot.objects.restrict(request.user, CHANGE).filter(instance=instance).select_related("instance"),
        pk=snapshot_pk,
    )


@login_required
@require_POST
def instance_snapshot_revert(request, pk: int, snapshot_pk: int):
    snapshot = _snapshot_for(request, pk, snapshot_pk)
    return _perform(
        request,
        pk,
        lambda: lifecycle.revert_snapshot(actor=request.user, snapshot=snapshot, ip=client_ip(request)),
        _("Reverting to snapshot “%(name)s”.") % {"name": snapshot.name},
    )


@login_required
@require_POST
def instance_snapshot_delete(request, pk: int, snapshot_pk: int):
    snapshot = _snapshot_for(request, pk, snapshot_pk)
    return _perform(
        request,
        pk,
        lambda: lifecycle.delete_snapshot(actor=request.user, snapshot=snapshot, ip=client_ip(request)),
        _("Deleting snapshot “%(name)s”.") % {"name": snapshot.name},
    )


@login_required
@require_POST
def instance_capture(request, pk: int):
    instance = _instance_for(request, pk)
    if (form := _posted_form(request, CaptureForm(request.POST))) is None:
        return redirect("instance_detail", pk=pk)
    try:
        image = lifecycle.capture_instance(
            actor=request.user, instance=instance, name=form.cleaned_data["name"], ip=client_ip(request)
        )
    except ServiceError as exc:
        _report(request, exc)
        return redirect("instance_detail", pk=pk)
    messages.success(request, _("The disk is being captured as image “%(name)s”.") % {"name": image.name})
    return redirect("image_detail", pk=image.pk)


# ---------------------------------------------------------------- hosts (staff)


def _staff_only(request) -> None:
    if not is_cloud_admin(request.user):
        raise Http404


@login_required
@require_GET
def host_list(request):
    _staff_only(request)
    rows = host_capacity(user=request.user)
    return render(request, "vms/hosts.html", {"rows": rows, "add_url": _admin_url("vms_host_add")})


@login_required
@require_POST
def host_refresh(request, pk: int):
    _staff_only(request)
    from vms.hosts import check_host

    host = get_object_or_404(hosts_for(user=request.user), pk=pk)
    host = check_host(host=host)
    if host.state == Host.State.DOWN:
        messages.warning(
            request,
            _("Host %(name)s did not answer: %(reason)s") % {"name": host.name, "reason": host.state_reason},
        )
    else:
        messages.success(request, _("Capacity of host %(name)s refreshed.") % {"name": host.name})
    return redirect("hosts")


# ---------------------------------------------------------------- console


def _console_config(request, instance: Instance, *, auto_connect: bool) -> dict:
    """What static/vms/console.js needs: where to get a ticket, the serial socket, and its texts."""
    return {
        "instance": instance.pk,
        "name": instance.name,
        "ticketUrl": reverse("instance_console_ticket", args=[instance.pk]),
        "windowUrl": reverse("instance_console", args=[instance.pk]),
        "serialSocket": SERIAL_SOCKET_PATH.format(pk=instance.pk),
        "autoConnect": auto_connect,
        "text": {
            "idle": _("Not connected."),
            "connecting": _("Connecting…"),
            "connected": _("Connected."),
            "connectedTo": _("Connected to %(name)s."),
            "disconnected": _("Disconnected."),
            "ended": _(
                "The console session ended: the instance stopped or restarted, your access ended, or the "
                "session reached its maximum length."
            ),
            "lost": _(
                "The connection was refused or lost: the console link may have expired, the instance may have "
                "stopped, or your access ended."
            ),
            "securityFailure": _("The console refused the one-time password: %(reason)s"),
            "ticketFailed": _("The console could not be opened: %(reason)s"),
            "network": _("The portal could not be reached."),
            "pasted": _("Typed %(count)s characters."),
            "nothingToPaste": _("Nothing to type."),
            "serialClosed": {
                "1000": _("The guest stopped: the serial console ended."),
                "4401": _("You are signed out. Sign in again to use the console."),
                "4403": _("You no longer have access to this instance."),
                "4409": _("The serial console is only available while the instance is running."),
                "4408": _("The serial session reached its maximum length. Reconnect to go on."),
                "4410": _("Another session took over the serial console. Reconnect to take it back."),
                "4406": _("Instances on an OpenStack cloud have no serial console here; use the graphical console."),
                "4502": _("The serial console could not be opened or broke."),
                "default": _("The serial console connection was lost."),
            },
        },
    }


@login_required
@require_GET
def instance_console(request, pk: int):
    """The console on a page of its own (the "open in a separate window" target): connects at once."""
    instance = _instance_for(request, pk)
    return render(
        request,
        "vms/instance_console.html",
        {"instance": instance, "console_config": _console_config(request, instance, auto_connect=True)},
    )


@require_POST
def instance_console_ticket(request, pk: int):
    """A one-time console ticket as JSON, for the page's viewer; refusals are a 409 with the reason.

    Signed out, it answers 401 with a message (not the sign-in page's redirect, which fetch would follow).
    """
    if not request.user.is_authenticated:
        return JsonResponse({"error": _("You are signed out. Sign in again to use the console.")}, status=401)
    instance = _instance_for(request, pk)
    try:
        ticket = consoles.open_console(user=request.user, instance=instance, ip=client_ip(request))
    except ServiceError as exc:
        return JsonResponse({"error": exc.message}, status=409)
    return JsonResponse(
        {
            "protocol": "vnc",
            "url": ticket.url,
            "password": ticket.password,
            "expires_at": ticket.expires_at.isoformat(),
        },
        status=201,
    )
