"""The flavors page: what the active tenant may launch (cloud admins: every flavor, with links to change them)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from portal.access import is_cloud_admin
from portal.views import current_tenant
from vms.selectors import flavors_for
from vms.views.common import admin_url


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
            flavor.admin_url = admin_url("vms_flavor_change", flavor.pk)
    return render(
        request,
        "vms/flavors.html",
        {
            "tenant": tenant,
            "flavors": flavors,
            "staff": staff,
            "add_url": admin_url("vms_flavor_add") if staff else None,
        },
    )
