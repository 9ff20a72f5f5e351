"""Dashboard pages of the compute app."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse

from portal.access import is_cloud_admin
from portal.views import current_tenant
from vms.selectors import flavors_for


def _admin_url(name: str, *args) -> str | None:
    """A Django admin URL, or None while the model is not registered there."""
    try:
        return reverse(f"admin:{name}", args=args)
    except NoReverseMatch:
        return None


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
