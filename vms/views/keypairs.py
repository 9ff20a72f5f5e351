"""Dashboard pages for keypairs and networks.

Keypairs belong to the active tenant: its members list, import, generate and delete them. A
generated keypair's private key is in the one response that creates it (not cached, never
stored), with a download button. Networks are listed read-only: those the active tenant may use,
or every network for cloud admins (who define them in the admin site).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from portal.access import DELETE, is_cloud_admin
from portal.middleware import client_ip
from portal.services import ServiceError
from portal.sorting import sort_by
from portal.views import current_tenant
from vms.access import access_keypair_by_id
from vms.forms import KeypairGenerateForm, KeypairImportForm
from vms.keypairs import delete_keypair, generate_keypair, import_keypair, keypairs_for
from vms.models import Keypair

# The keypair list's sortable columns (portal.sorting).
KEYPAIR_SORT_COLUMNS = {
    "name": ("name", "id"),
    "tenant": ("tenant__name", "name", "id"),
    "added_by": ("owner__username", "name", "id"),
    "created": ("created_at", "id"),
}


def _keypairs_page(request, *, import_form=None, generate_form=None, status: int = 200):
    tenant = current_tenant(request)
    staff = is_cloud_admin(request.user)
    if tenant is not None:
        keypairs = keypairs_for(user=request.user, tenant=tenant)
    elif staff:
        keypairs = keypairs_for(user=request.user)  # no active tenant: every keypair, to look at
    else:
        keypairs = Keypair.objects.none()
    keypairs, sorting = sort_by(keypairs, request.GET.get("sort", ""), KEYPAIR_SORT_COLUMNS)
    keypairs = list(keypairs)
    for keypair in keypairs:
        keypair.key_type = keypair.public_key.split(" ", 1)[0]
    return render(
        request,
        "vms/keypairs.html",
        {
            "tenant": tenant,
            "staff": staff,
            "keypairs": keypairs,
            "sorting": sorting,
            "import_form": import_form or KeypairImportForm(),
            "generate_form": generate_form or KeypairGenerateForm(),
        },
        status=status,
    )


@login_required
def keypair_list(request):
    return _keypairs_page(request)


def _tenant_or_refuse(request):
    tenant = current_tenant(request)
    if tenant is None:
        raise PermissionDenied
    return tenant


@login_required
@require_POST
def keypair_import(request):
    tenant = _tenant_or_refuse(request)
    form = KeypairImportForm(request.POST)
    if form.is_valid():
        try:
            keypair = import_keypair(
                actor=request.user,
                tenant=tenant,
                name=form.cleaned_data["name"],
                public_key=form.cleaned_data["public_key"],
                ip=client_ip(request),
            )
        except ServiceError as exc:
            form.add_service_error(exc)
        else:
            messages.success(
                request,
                _("Keypair “%(name)s” imported (%(fingerprint)s).")
                % {"name": keypair.name, "fingerprint": keypair.fingerprint},
            )
            return redirect("keypairs")
    return _keypairs_page(request, import_form=form)


@never_cache  # the response carries the private key
@login_required
@require_POST
def keypair_generate(request):
    tenant = _tenant_or_refuse(request)
    form = KeypairGenerateForm(request.POST)
    if form.is_valid():
        try:
            keypair, private_key = generate_keypair(
                actor=request.user, tenant=tenant, name=form.cleaned_data["name"], ip=client_ip(request)
            )
        except ServiceError as exc:
            form.add_service_error(exc)
        else:
            return render(
                request,
                "vms/keypair_created.html",
                {
                    "tenant": tenant,
                    "keypair": keypair,
                    "private_key": private_key,
                    "filename": f"{slugify(keypair.name) or 'keypair'}.pem",
                },
            )
    return _keypairs_page(request, generate_form=form)


@login_required
@require_POST
def keypair_delete(request, pk: int):
    keypair = access_keypair_by_id(user=request.user, keypair_id=pk, action=DELETE)
    name = keypair.name
    delete_keypair(actor=request.user, keypair=keypair, ip=client_ip(request))
    messages.success(request, _("Keypair “%(name)s” has been deleted.") % {"name": name})
    return redirect("keypairs")
