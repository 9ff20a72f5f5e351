"""The networks page: those the active tenant may use (cloud admins: every network, with links to change them)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from portal.access import is_cloud_admin
from portal.views import current_tenant
from vms.networks import networks_for
from vms.views.common import admin_url


@login_required
def network_list(request):
    tenant = current_tenant(request)
    staff = is_cloud_admin(request.user)
    if staff:
        networks = list(networks_for(user=request.user))
        for network in networks:
            network.admin_url = admin_url("vms_network_change", network.pk)
    elif tenant is not None:
        networks = list(networks_for(user=request.user, tenant=tenant).prefetch_related(None))
    else:
        networks = []
    return render(
        request,
        "vms/networks.html",
        {
            "tenant": tenant,
            "staff": staff,
            "networks": networks,
            "add_url": admin_url("vms_network_add") if staff else None,
        },
    )
