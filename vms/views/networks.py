"""The networks page: those the active tenant may use (cloud admins: every network, with links to change them)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from portal.access import is_cloud_admin
from portal.sorting import sort_by
from portal.views import current_tenant
from vms.models import Network
from vms.networks import networks_for
from vms.views.common import admin_url

# The network list's sortable columns (portal.sorting).
SORT_COLUMNS = {
    "name": ("name", "id"),
    "mode": ("mode", "name", "id"),
    "visibility": ("is_public", "name", "id"),
}


@login_required
def network_list(request):
    tenant = current_tenant(request)
    staff = is_cloud_admin(request.user)
    if staff:
        networks = networks_for(user=request.user)
    elif tenant is not None:
        networks = networks_for(user=request.user, tenant=tenant).prefetch_related(None)
    else:
        networks = Network.objects.none()
    networks, sorting = sort_by(networks, request.GET.get("sort", ""), SORT_COLUMNS)
    networks = list(networks)
    if staff:
        for network in networks:
            network.admin_url = admin_url("vms_network_change", network.pk)
    return render(
        request,
        "vms/networks.html",
        {
            "tenant": tenant,
            "staff": staff,
            "networks": networks,
            "sorting": sorting,
            "add_url": admin_url("vms_network_add") if staff else None,
        },
    )
