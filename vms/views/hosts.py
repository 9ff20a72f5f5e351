"""The hosts page (cloud admins): every host and cloud with its state and, where the portal knows it, capacity."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from portal.access import CHANGE, is_cloud_admin
from portal.middleware import client_ip
from portal.services import ServiceError
from vms import moves
from vms.access import access_host_by_id
from vms.compute import Capability
from vms.compute.base import host_can
from vms.dashboard import host_capacity
from vms.hosts import check_host
from vms.models import Host
from vms.selectors import host_instances_for, host_metric_points_for
from vms.views.common import admin_url, report
from vms.views.graphs import graph_config, page_range


def _staff_only(request) -> None:
    """The hosts pages do not exist for anyone but cloud admins."""
    if not is_cloud_admin(request.user):
        raise Http404


@login_required
@require_GET
def host_list(request):
    _staff_only(request)
    rows = host_capacity(user=request.user)
    return render(request, "vms/hosts.html", {"rows": rows, "add_url": admin_url("vms_host_add")})


@login_required
@require_GET
def host_detail(request, pk: int):
    """One host: its facts and capacity, the graphs of its own CPU, memory and running instances (where its
    kind samples them), and the instances placed on it."""
    _staff_only(request)
    host = access_host_by_id(user=request.user, host_id=pk)
    metric_range = page_range(request)
    graphs = None
    if host_can(host, Capability.HOST_METRICS):
        graphs = graph_config(
            kind="host",
            owner_id=host.pk,
            points=host_metric_points_for(user=request.user, host=host, metric_range=metric_range),
            metric_range=metric_range,
            api=reverse("host-metrics", args=[host.pk]),
            text={"memoryUsed": _("Used (MiB)"), "memoryTotal": _("Total (MiB)"), "instances": _("Running")},
        )
    return render(
        request,
        "vms/host_detail.html",
        {
            "host": host,
            "row": host_capacity(user=request.user, host_id=host.pk)[0],
            "metrics_data": graphs,
            "instances": list(host_instances_for(user=request.user, host=host)),
        },
    )


@login_required
@require_POST
def host_refresh(request, pk: int):
    _staff_only(request)
    host = access_host_by_id(user=request.user, host_id=pk, action=CHANGE)
    host = check_host(host=host)
    if host.state == Host.State.DOWN:
        messages.warning(
            request,
            _("Host %(name)s did not answer: %(reason)s") % {"name": host.name, "reason": host.state_reason},
        )
    else:
        messages.success(request, _("Capacity of host %(name)s refreshed.") % {"name": host.name})
    return redirect("hosts")


def _perform(request, call, success: str):
    """Run one host service for a POST: its refusal or ``success`` as a message, back to the hosts page."""
    try:
        call()
    except ServiceError as exc:
        report(request, exc)
    else:
        messages.success(request, success)
    return redirect("hosts")


@login_required
@require_POST
def host_drain(request, pk: int):
    _staff_only(request)
    host = access_host_by_id(user=request.user, host_id=pk, action=CHANGE)
    return _perform(
        request,
        lambda: moves.drain_host(actor=request.user, host=host, ip=client_ip(request)),
        _("Host %(name)s takes no new instances; its instances are moving to other hosts.") % {"name": host.name},
    )


@login_required
@require_POST
def host_evacuate(request, pk: int):
    _staff_only(request)
    host = access_host_by_id(user=request.user, host_id=pk, action=CHANGE)
    confirm = request.POST.get("confirm") == "1"
    return _perform(
        request,
        lambda: moves.evacuate_host(actor=request.user, host=host, confirm=confirm, ip=client_ip(request)),
        _("The instances of host %(name)s are being rebuilt on other hosts.") % {"name": host.name},
    )
