"""The instance pages: the list with its bulk actions, one instance's page and the actions posted from it.

Reads go through the access gate (``vms.access``, the selectors); every POST goes through a service of
``vms.lifecycle``, whose ``ServiceError``/``ConflictError`` is shown as a message and changes nothing.
Another tenant's instance is a 404. What the page offers and enables comes from the action registry
(``vms.actions``): an action the instance's host cannot do is not shown; one it cannot do now is
disabled, and live updates (``allowed_actions``) enable it when it can. Live state reaches the pages
over the ``/ws/live/`` websocket (static/vms/live.js); nothing here talks to a hypervisor.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from portal.access import CHANGE, DELETE, VIEW, is_cloud_admin
from portal.middleware import client_ip
from portal.services import ServiceError
from portal.sorting import sort_by
from portal.views import current_tenant
from vms import actions, lifecycle, moves
from vms.access import access_disk_by_id, access_instance_by_id, access_snapshot_by_id
from vms.api.filtersets import InstanceFilter
from vms.compute import Capability, compute_for, instance_capabilities
from vms.dashboard import live_socket, toast_config
from vms.forms import (
    AttachDiskForm,
    BulkActionForm,
    CaptureForm,
    InstanceSecurityGroupsForm,
    MigrateForm,
    ResizeForm,
    ResourcesForm,
    SnapshotForm,
)
from vms.metric_ranges import MetricRange
from vms.models import Instance, InstanceDisk, Operation, SecurityGroup, Snapshot
from vms.selectors import (
    flavors_for,
    instance_shape,
    instances_for,
    metric_points_for,
    operations_for_target,
    resize_flavors_for,
    snapshot_fits,
)
from vms.views.common import form_errors, report
from vms.views.consoles import console_config
from vms.views.graphs import graph_config, page_range

PAGE_SIZE = 50
OPERATIONS_SHOWN = 10
INSTANCE_TARGET = "vms.instance"


def live_config(*, tenant_id: int | None, instance_id: int | None = None) -> dict:
    """What static/vms/live.js needs: the socket, the tenant to listen to, and its texts in the page's language."""
    return {
        "socket": live_socket(tenant=tenant_id, instance=instance_id),
        "instance": instance_id,
        "states": {value: str(label) for value, label in Instance.State.choices},
        "tasks": {name: str(action.progress) for name, action in actions.ACTIONS.items()},
        "operationStates": {value: str(label) for value, label in Operation.State.choices},
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
        instance.task_label = actions.task_label(instance.task)


def _instance_for(request, pk: int, action: str = CHANGE) -> Instance:
    """An instance the user may see (else 404) and ``action`` (else 403)."""
    return access_instance_by_id(user=request.user, instance_id=pk, action=action)


# ---------------------------------------------------------------- list and bulk actions


def _sort_columns(staff: bool) -> dict[str, tuple[str, ...]]:
    """The instance list's sortable columns (the tenant and the host for cloud admins only)."""
    columns = {
        "name": ("name", "id"),
        "state": ("state", "name", "id"),
        "flavor": ("flavor__name", "name", "id"),
        "image": ("image__name", "name", "id"),
        "created": ("created_at", "id"),
    }
    if staff:
        columns |= {"tenant": ("tenant__name", "name", "id"), "host": ("host__name", "name", "id")}
    return columns


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
    query = request.GET.get("q", "").strip()[:100]
    instances = InstanceFilter({"state": state, "name": query}, queryset=instances, request=request).qs
    instances, sorting = sort_by(instances, request.GET.get("sort", ""), _sort_columns(staff))
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
            "sorting": sorting,
            "filtered": bool(state or query),
            "bulk_actions": {name: actions.get(name).button for name in actions.BULK_ACTIONS},
            "can_launch": tenant is not None,
            "live_config": live_config(tenant_id=None if staff else getattr(tenant, "pk", None)),
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
    allowed = Instance.objects.restrict(request.user, DELETE if action == "delete" else CHANGE).values("pk")
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
            _("%(action)s requested for %(names)s.") % {"action": actions.get(action).button, "names": ", ".join(done)},
        )
    return redirect("instances")


# ---------------------------------------------------------------- detail


def _power_buttons(instance: Instance, offered: list[str], allowed: list[str]) -> list[dict]:
    """The power card's buttons the instance's host offers, each enabled when the instance accepts it now."""
    buttons = []
    for name in actions.POWER_CARD:
        if name not in offered:
            continue
        action = actions.get(name)
        buttons.append(
            {
                "action": name,
                "label": action.button,
                "icon": action.icon,
                "tone": action.tone,
                "confirm": (action.confirm % {"name": instance.name}) if action.confirm else "",
                "enabled": name in allowed,
            }
        )
    return buttons


def _limits(instance: Instance, offered: list[str]) -> dict:
    """What the instance's host cannot do (the page lists it under the adapter's note); nothing without a host."""
    if instance.host_id is None:
        return {"not_offered": [], "limits_note": ""}
    missing = [
        str(action.verb)
        for name, action in actions.ACTIONS.items()
        if name in actions.REQUESTABLE and name not in offered and action.applies(instance)
    ]
    return {"not_offered": missing, "limits_note": compute_for(instance.host).limits_note(instance)}


def _groups_form(instance: Instance) -> InstanceSecurityGroupsForm | None:
    """The instance's security groups to change, where its host applies them."""
    if Capability.SECURITY_GROUPS not in instance_capabilities(instance):
        return None
    groups = SecurityGroup.objects.filter(tenant_id=instance.tenant_id).order_by("name")
    return InstanceSecurityGroupsForm(
        groups=groups, initial={"security_groups": list(instance.security_groups.values_list("pk", flat=True))}
    )


@login_required
@require_GET
def instance_detail(request, pk: int):
    user = request.user
    instance = access_instance_by_id(user=user, instance_id=pk)
    staff = is_cloud_admin(user)
    _attach_active_operations(user, [instance])
    flavors = resize_flavors_for(user=user, instance=instance)  # only those a resize would take
    can_delete = Instance.objects.restrict(user, DELETE).filter(pk=pk).exists()
    can_console = Instance.objects.restrict(user, CHANGE).filter(pk=pk).exists()
    operations = list(operations_for_target(user=user, target=instance).select_related("user")[:OPERATIONS_SHOWN])
    for op in operations:
        op.label = actions.task_label(op.kind.removeprefix("instance."))
    offered = actions.offered_actions(instance)
    allowed = actions.allowed_actions(instance)
    return render(
        request,
        "vms/instance_detail.html",
        {
            "instance": instance,
            "staff": staff,
            "buttons": _power_buttons(instance, offered, allowed),
            "can_delete": can_delete and "delete" in offered,
            "offered": dict.fromkeys(offered, True),
            "allowed": allowed,
            "can": {name: name in allowed for name in actions.REQUESTABLE},
            **_limits(instance, offered),
            "resize_form": ResizeForm(flavors=flavors),
            "has_other_flavors": flavors.exists(),
            "resources_form": ResourcesForm(instance=instance),
            "disk_form": AttachDiskForm(),
            "snapshot_form": SnapshotForm(),
            "capture_form": CaptureForm(initial={"name": f"{instance.name}-image"}),
            "migrate_form": MigrateForm(instance=instance) if staff and actions.offered(instance, "migrate") else None,
            "can_migrate": staff and actions.refusal(instance, "migrate") is None,
            "disks": list(InstanceDisk.objects.restrict(user, VIEW).filter(instance=instance).order_by("pk")),
            "snapshots": _snapshots(user, instance),
            "operations": operations,
            "live_config": live_config(tenant_id=instance.tenant_id, instance_id=instance.pk),
            "console_config": console_config(request, instance, auto_connect=False) if can_console else None,
            "offered_metrics": Capability.METRICS in instance_capabilities(instance),
            "groups_form": _groups_form(instance),
            "can_console": can_console,
            "metrics_data": _metrics_data(user, instance, page_range(request)),
        },
    )


def _snapshots(user, instance: Instance) -> list[Snapshot]:
    """The instance's snapshots, each marked ``fits`` when a revert would take it (same sizes and disks as now)."""
    snapshots = list(Snapshot.objects.restrict(user, VIEW).filter(instance=instance))
    if snapshots:
        shape = instance_shape(instance=instance)
        for snapshot in snapshots:
            snapshot.fits = snapshot_fits(snapshot=snapshot, shape=shape)
    return snapshots


def _metrics_data(user, instance: Instance, metric_range: MetricRange) -> dict:
    """What static/vms/metrics.js needs: the history of the range so far and the graphs' texts (live points come
    over ws/live/, other ranges from the API)."""
    return graph_config(
        kind="instance",
        owner_id=instance.pk,
        points=metric_points_for(user=user, instance=instance, metric_range=metric_range),
        metric_range=metric_range,
        api=reverse("instance-metrics", args=[instance.pk]),
        text={
            "memoryUsed": _("Used (MiB)"),
            "memoryAvailable": _("Available (MiB)"),
            "diskRead": _("Read"),
            "diskWrite": _("Write"),
            "netRx": _("Received"),
            "netTx": _("Sent"),
        },
    )


# ---------------------------------------------------------------- detail actions


def _perform(request, pk: int, call: Callable[[], object], success: str) -> HttpResponse:
    """Run one instance service for a POST: its refusal or ``success`` as a message, back to the instance page."""
    try:
        call()
    except ServiceError as exc:
        report(request, exc)
    else:
        messages.success(request, success)
    return redirect("instance_detail", pk=pk)


def _posted_form(request, form):
    """The bound form when valid; otherwise its errors become messages and None is returned."""
    if form.is_valid():
        return form
    form_errors(request, form)
    return None


@login_required
@require_POST
def instance_action(request, pk: int):
    instance = _instance_for(request, pk)
    action = request.POST.get("action", "")
    if action not in actions.POWER_CARD:
        messages.error(request, _("Unknown action."))
        return redirect("instance_detail", pk=pk)
    return _perform(
        request,
        pk,
        lambda: lifecycle.request_action(actor=request.user, instance=instance, action=action, ip=client_ip(request)),
        _("%(action)s of “%(name)s” requested.") % {"action": actions.get(action).button, "name": instance.name},
    )


@login_required
@require_POST
def instance_delete(request, pk: int):
    instance = _instance_for(request, pk, DELETE)
    try:
        lifecycle.delete_instance(actor=request.user, instance=instance, ip=client_ip(request))
    except ServiceError as exc:
        report(request, exc)
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
    disk = access_disk_by_id(user=request.user, instance=instance, disk_id=disk_pk, action=CHANGE)
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
    return access_snapshot_by_id(user=request.user, instance=instance, snapshot_id=snapshot_pk, action=CHANGE)


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
def instance_migrate(request, pk: int):
    instance = _instance_for(request, pk)
    if (form := _posted_form(request, MigrateForm(request.POST, instance=instance))) is None:
        return redirect("instance_detail", pk=pk)
    return _perform(
        request,
        pk,
        lambda: moves.migrate_instance(
            actor=request.user, instance=instance, host=form.cleaned_data["host"], ip=client_ip(request)
        ),
        _("Migration of “%(name)s” requested.") % {"name": instance.name},
    )


@login_required
@require_POST
def instance_migration_cancel(request, pk: int, operation_pk: int):
    instance = _instance_for(request, pk)
    operation = operations_for_target(user=request.user, target=instance).filter(pk=operation_pk).first()
    if operation is None:
        raise Http404
    return _perform(
        request,
        pk,
        lambda: moves.cancel_operation(actor=request.user, operation=operation, ip=client_ip(request)),
        _("Cancelling the migration of “%(name)s”.") % {"name": instance.name},
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
        report(request, exc)
        return redirect("instance_detail", pk=pk)
    messages.success(request, _("The disk is being captured as image “%(name)s”.") % {"name": image.name})
    return redirect("image_detail", pk=image.pk)
