"""Dashboard pages of the image catalogue.

Reads go through the access gate (``Image.objects.restrict`` via the selectors), writes
through images.services; a ``ServiceError`` is shown to the user and changes nothing.
Uploads are sent by static/images/upload.js to the REST API in resumable chunks; the
upload view's own POST is the fallback for browsers without JavaScript (small files).
Pages with images in progress poll a small htmx partial every 2 s.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext, pgettext
from django.views.decorators.http import require_GET, require_POST

from images import imports, services, sharing
from images.access import access_image_by_id, access_share_by_id
from images.api.filtersets import ImageFilter
from images.forms import DistributeForm, ImageEditForm, ImageImportForm, ImageUploadForm, ShareForm
from images.models import Image, ImageShare
from images.selectors import (
    accepted_share,
    images_for,
    incoming_shares,
    launch_sources_for,
    may_download,
    visible_to_tenant,
)
from portal.access import ADMIN_ROLES, CHANGE, DELETE, is_cloud_admin, tenant_ids_for
from portal.middleware import client_ip
from portal.services import ServiceError
from portal.sorting import sort_by
from portal.views import current_tenant
from vms.compute import Capability, kinds_with
from vms.selectors import hosts_for, operations_for_target


def distribution_hosts(user):
    """Hosts an image may be copied to ahead of launches (libvirt hosts; clouds get it through Glance at launch)."""
    return hosts_for(user=user).filter(enabled=True, kind__in=kinds_with(Capability.IMAGE_COPIES))


FINAL_STATUSES = frozenset({Image.Status.ACTIVE, Image.Status.FAILED})
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024
# Largest file the plain form (no JavaScript) accepts; Django spools it to a temporary file first.
FALLBACK_UPLOAD_LIMIT = 2 * 1024**3
PAGE_SIZE = 50
OPERATIONS_SHOWN = 10
INCOMING_SHOWN = 50


def _api_url(name: str, fallback: str, *args) -> str:
    """A URL of the REST API by route name, or its documented path while the route is not registered."""
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return fallback


def _is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _answers_shares(user, tenant) -> bool:
    """Whether ``user`` may accept or reject what is offered to ``tenant``: its admins and cloud admins."""
    if tenant is None:
        return False
    return is_cloud_admin(user) or tenant_ids_for(user, ADMIN_ROLES).filter(tenant_id=tenant.pk).exists()


# ---------------------------------------------------------------- list


FILTERS = {
    "kind": (gettext_lazy("Kind"), Image.Kind.choices),
    "status": (gettext_lazy("Status"), Image.Status.choices),
    "visibility": (gettext_lazy("Visibility"), Image.Visibility.choices),
}


# The catalogue's sortable columns (portal.sorting); by name unless asked otherwise.
SORT_COLUMNS = {
    "name": ("name", "id"),
    "status": ("status", "name", "id"),
    "type": ("kind", "name", "id"),
    "visibility": ("visibility", "name", "id"),
    "size": ("size", "name", "id"),
    "owner": ("tenant__name", "name", "id"),
    "created": ("created_at", "id"),
}


@login_required
@require_GET
def image_list(request):
    tenant = current_tenant(request)
    staff = is_cloud_admin(request.user)
    catalogue = images = _catalogue(request.user, tenant, staff)
    filters = []
    for name, (label, choices) in FILTERS.items():
        value = request.GET.get(name, "")
        filters.append(
            {"name": name, "label": label, "choices": choices, "value": value if value in dict(choices) else ""}
        )
    # The API's filters, with the values the page accepted.
    images = ImageFilter({f["name"]: f["value"] for f in filters}, queryset=images, request=request).qs
    query = request.GET.get("q", "").strip()[:100]
    if query:
        images = images.filter(name__icontains=query)
    images, sorting = sort_by(images.order_by("name", "id"), request.GET.get("sort", ""), SORT_COLUMNS)
    page = Paginator(images, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    context = {
        "tenant": tenant,
        "staff": staff,
        "page": page,
        "images": rows,
        "live": any(image.status not in FINAL_STATUSES for image in rows),
        "filtered": bool(query or any(f["value"] for f in filters)),
        "query": query,
        "sorting": sorting,
        "filters": filters,
        "can_add": staff or tenant is not None,
        # "Delete failed images": offered when some of the catalogue's failed images are the user's to delete.
        "failed_deletable": catalogue.restrict(request.user, DELETE).filter(status=Image.Status.FAILED).count(),
    }
    if _is_htmx(request):
        return render(request, "images/_image_rows.html", context)
    if tenant is not None:
        # What other tenants offer the active one, waiting for one of its admins to answer.
        context["incoming"] = list(incoming_shares(user=request.user, tenant=tenant)[:INCOMING_SHOWN])
        context["answers_shares"] = bool(context["incoming"]) and _answers_shares(request.user, tenant)
    return render(request, "images/list.html", context)


# ---------------------------------------------------------------- upload and import


@login_required
def image_upload(request):
    tenant = current_tenant(request)
    staff = is_cloud_admin(request.user)
    if tenant is None and not staff:
        return render(request, "images/upload.html", {"tenant": None, "form": None})
    form_kwargs = {"tenant": tenant, "staff": staff, "fallback_limit": FALLBACK_UPLOAD_LIMIT}
    if request.method == "POST":
        form = ImageUploadForm(request.POST, request.FILES, **form_kwargs)
        if form.is_valid():
            image = _upload_without_javascript(request, form)
            if image is not None:
                messages.success(request, _("Image “%(name)s” uploaded; it is being checked.") % {"name": image.name})
                return redirect("image_detail", pk=image.pk)
    else:
        form = ImageUploadForm(**form_kwargs)
    return render(
        request,
        "images/upload.html",
        {
            "tenant": tenant,
            "form": form,
            "chunk_size": UPLOAD_CHUNK_BYTES,
            "fallback_limit": FALLBACK_UPLOAD_LIMIT,
            "upload_limit": settings.LABCLOUD_IMAGE_MAX_UPLOAD_BYTES,
            "upload_text": _upload_text(),
            "api_images_url": _api_url("image-list", "/api/v1/images/"),
            "detail_url_template": reverse("image_detail", args=[0]),
        },
    )


def _upload_text() -> dict[str, str]:
    """Messages of static/images/upload.js, translated here ({placeholders} are filled in by the script)."""
    return {
        "chooseFile": _("Choose a file to upload."),
        "creating": _("Creating the image…"),
        "uploading": _("Uploading…"),
        "bytes": _("{sent} of {total}"),
        "speed": _("{speed}/s"),
        "eta": _("· {time} left"),
        "retrying": _("Connection problem; retrying this chunk ({attempt} of {max})…"),
        "resuming": _("Resuming at {sent}…"),
        "finishing": _("Upload complete. The image is being checked…"),
        "cancelling": _("Cancelling…"),
        "cancelled": _("The upload was cancelled and the image deleted."),
        "failed": _("The upload failed: {error}"),
        "network": _("The server could not be reached."),
        "upload": _("Upload"),
        "resume": _("Resume upload"),
        "leave": _("The upload is still running. Leave the page and stop it?"),
        "units": [
            pgettext("file size unit", "B"),
            pgettext("file size unit", "KB"),
            pgettext("file size unit", "MB"),
            pgettext("file size unit", "GB"),
            pgettext("file size unit", "TB"),
        ],
    }


def _upload_without_javascript(request, form: ImageUploadForm) -> Image | None:
    """The plain form: create the image and store the posted file as its one and only chunk.

    The image is created in a transaction of its own, so the tenant's quota row is not held
    locked while the file is copied; if storing the file fails, the image is deleted again.
    """
    upload = form.cleaned_data["file"]
    try:
        image = services.create_image(
            actor=request.user,
            tenant=form.owner_tenant(),
            name=form.cleaned_data["name"],
            disk_format=form.cleaned_data["disk_format"],
            size=upload.size,
            ip=client_ip(request),
            **form.options(),
        )
    except ServiceError as exc:
        form.add_service_error(exc)
        return None
    try:
        upload.seek(0)
        return services.receive_chunk(
            actor=request.user, image=image, stream=upload, offset=0, length=upload.size, ip=client_ip(request)
        )
    except Exception as exc:
        image.refresh_from_db()
        services.delete_image(actor=request.user, image=image, ip=client_ip(request))
        if not isinstance(exc, ServiceError):
            raise
        form.add_service_error(exc)
        return None


@login_required
def image_import(request):
    tenant = current_tenant(request)
    staff = is_cloud_admin(request.user)
    if tenant is None and not staff:
        return render(request, "images/import.html", {"tenant": None, "form": None})
    if request.method == "POST":
        form = ImageImportForm(request.POST, tenant=tenant, staff=staff)
        if form.is_valid():
            try:
                image = imports.import_image(
                    actor=request.user,
                    tenant=form.owner_tenant(),
                    name=form.cleaned_data["name"],
                    url=form.cleaned_data["url"],
                    disk_format=form.cleaned_data["disk_format"],
                    ip=client_ip(request),
                    **form.options(),
                )
            except ServiceError as exc:
                form.add_service_error(exc)
            else:
                messages.success(
                    request, _("Import of “%(name)s” queued: the file is being downloaded.") % {"name": image.name}
                )
                return redirect("image_detail", pk=image.pk)
    else:
        form = ImageImportForm(tenant=tenant, staff=staff)
    return render(request, "images/import.html", {"tenant": tenant, "form": form})


# ---------------------------------------------------------------- detail


def _live_context(request, image: Image) -> dict:
    operations = list(operations_for_target(user=request.user, target=image)[:OPERATIONS_SHOWN])
    busy = image.status not in FINAL_STATUSES or any(not op.finished for op in operations)
    upload_percent = 0
    if image.size:
        upload_percent = min(100, image.received_bytes * 100 // image.size)
    return {"image": image, "operations": operations, "live": busy, "upload_percent": upload_percent}


def _render_detail(request, image: Image, *, status: int = 200, **forms) -> HttpResponse:
    user = request.user
    staff = is_cloud_admin(user)
    can_change = Image.objects.restrict(user, CHANGE).filter(pk=image.pk).exists()
    can_delete = Image.objects.restrict(user, DELETE).filter(pk=image.pk).exists()
    context = {
        **_live_context(request, image),
        "staff": staff,
        "can_change": can_change,
        "can_delete": can_delete,
        # Downloads are for the owner tenant's members and cloud admins, as in the API (images.selectors).
        "can_download": may_download(user=user, image=image) and image.status == Image.Status.ACTIVE,
        "download_url": _api_url("image-file", f"/api/v1/images/{image.pk}/file/", image.pk),
    }
    # "Launch" only where the launch form would take it: active, and usable by the tenant the user works in.
    tenant = current_tenant(request)
    context["can_launch"] = (
        tenant is not None and launch_sources_for(user=user, tenant=tenant).filter(pk=image.pk).exists()
    )
    if can_change:
        context["edit_form"] = forms.get("edit_form") or ImageEditForm(image=image, staff=staff)
        context["share_form"] = forms.get("share_form") or ShareForm()
        context["shares"] = list(image.shares.select_related("tenant").order_by("created_at", "id"))
        accepted = [share.tenant.name for share in context["shares"] if share.status == ImageShare.Status.ACCEPTED]
        context["accepted_names"] = accepted
    else:
        # Shared with the active tenant: its admins may take it out of their catalogue again.
        tenant = current_tenant(request)
        share = accepted_share(user=user, image=image, tenant=tenant)
        context["accepted_share"] = share
        context["answers_shares"] = share is not None and _answers_shares(user, tenant)
    if staff:
        hosts = distribution_hosts(user)
        context["distribute_form"] = forms.get("distribute_form") or DistributeForm(hosts=hosts)
        context["has_hosts"] = hosts.exists()
        context["replicas"] = list(image.replicas.select_related("host").order_by("host__name"))
    return render(request, "images/detail.html", context, status=status)


def _catalogue(user, tenant, staff: bool):
    """The images the list shows: cloud admins all; everyone else what their active tenant sees (its own,
    shared with it, public)."""
    images = images_for(user=user)
    if staff:
        return images
    if tenant is None:
        return images.none()
    return images.filter(pk__in=Image.objects.filter(visible_to_tenant(tenant_id=tenant.pk)).values("pk"))


@login_required
@require_POST
def image_delete_failed(request):
    """Delete every failed image of the list (uploads and imports that went wrong) the user may delete."""
    done = services.delete_failed_images(
        actor=request.user,
        images=_catalogue(request.user, current_tenant(request), is_cloud_admin(request.user)),
        ip=client_ip(request),
    )
    if done.deleted:
        messages.success(
            request,
            ngettext("%(count)d failed image deleted.", "%(count)d failed images deleted.", len(done.deleted))
            % {"count": len(done.deleted)},
        )
    for reason in done.refused:
        messages.error(request, reason)
    if not done.deleted and not done.refused:
        messages.info(request, _("There are no failed images to delete."))
    return redirect("images")


@login_required
@require_GET
def image_detail(request, pk: int):
    image = access_image_by_id(user=request.user, image_id=pk)
    return _render_detail(request, image)


@login_required
@require_GET
def image_live(request, pk: int):
    """The polled part of the detail page: status, failure reason and operations with their progress.

    When nothing is in progress any more, the page reloads itself (``HX-Refresh``) so every
    fact that processing changed (size, checksum, formats) is shown.
    """
    image = images_for(user=request.user).filter(pk=pk).first()
    if image is None:
        if _is_htmx(request):
            response = HttpResponse(status=200)
            response["HX-Redirect"] = reverse("images")
            return response
        raise Http404
    context = _live_context(request, image)
    response = render(request, "images/_image_live.html", context)
    if not context["live"] and _is_htmx(request):
        response["HX-Refresh"] = "true"
    return response


# ---------------------------------------------------------------- actions


@login_required
@require_POST
def image_edit(request, pk: int):
    image = access_image_by_id(user=request.user, image_id=pk, action=CHANGE)
    form = ImageEditForm(request.POST, image=image, staff=is_cloud_admin(request.user))
    if form.is_valid():
        changes = form.changes()
        if not changes:
            messages.info(request, _("Nothing was changed."))
            return redirect("image_detail", pk=image.pk)
        try:
            services.update_image(actor=request.user, image=image, ip=client_ip(request), **changes)
        except ServiceError as exc:
            form.add_service_error(exc)
            image.refresh_from_db()
        else:
            messages.success(request, _("Image “%(name)s” has been saved.") % {"name": image.name})
            return redirect("image_detail", pk=image.pk)
    return _render_detail(request, image, edit_form=form)


@login_required
@require_POST
def image_share(request, pk: int):
    image = access_image_by_id(user=request.user, image_id=pk, action=CHANGE)
    form = ShareForm(request.POST)
    if form.is_valid():
        reference = form.cleaned_data["tenant"]
        try:
            # One answer for every tenant named, existing or not: nobody learns here which tenants exist.
            sharing.share_image(actor=request.user, image=image, reference=reference, ip=client_ip(request))
        except ServiceError as exc:
            form.add_service_error(exc)
        else:
            messages.success(
                request,
                _("Image “%(name)s” offered to “%(tenant)s”: it is shared once an admin of that tenant accepts it.")
                % {"name": image.name, "tenant": reference},
            )
            return redirect("image_detail", pk=image.pk)
    return _render_detail(request, image, share_form=form)


@login_required
@require_POST
def image_share_withdraw(request, pk: int, share_pk: int):
    image = access_image_by_id(user=request.user, image_id=pk, action=CHANGE)
    share = access_share_by_id(user=request.user, share_id=share_pk, action=DELETE)
    if share.image_id != image.pk:
        raise Http404
    sharing.withdraw_share(actor=request.user, share=share, ip=client_ip(request))
    messages.success(
        request,
        _("Image “%(name)s” is no longer offered to “%(tenant)s”.") % {"name": image.name, "tenant": share.reference},
    )
    return redirect("image_detail", pk=image.pk)


@login_required
@require_POST
def image_share_accept(request, share_pk: int):
    share = access_share_by_id(user=request.user, share_id=share_pk, action=CHANGE)
    try:
        share = sharing.accept_share(actor=request.user, share=share, ip=client_ip(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("images")
    messages.success(
        request,
        _("Image “%(name)s” is now in the catalogue of %(tenant)s.")
        % {"name": share.image.name, "tenant": share.tenant.name},
    )
    return redirect("image_detail", pk=share.image_id)


@login_required
@require_POST
def image_share_reject(request, share_pk: int):
    share = access_share_by_id(user=request.user, share_id=share_pk, action=CHANGE)
    was_accepted = share.status == ImageShare.Status.ACCEPTED
    try:
        share = sharing.reject_share(actor=request.user, share=share, ip=client_ip(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("images")
    if was_accepted:
        message = _("Image “%(name)s” was removed from the catalogue of %(tenant)s.")
    else:
        message = _("Image “%(name)s” was declined: it stays out of the catalogue of %(tenant)s.")
    messages.success(request, message % {"name": share.image.name, "tenant": share.tenant.name})
    return redirect("images")


@login_required
@require_POST
def image_delete(request, pk: int):
    image = access_image_by_id(user=request.user, image_id=pk, action=DELETE)
    name = image.name
    try:
        services.delete_image(actor=request.user, image=image, ip=client_ip(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("image_detail", pk=pk)
    messages.success(request, _("Image “%(name)s” has been deleted.") % {"name": name})
    return redirect("images")


@login_required
@require_POST
def image_distribute(request, pk: int):
    image = access_image_by_id(user=request.user, image_id=pk)
    if not is_cloud_admin(request.user):
        raise PermissionDenied
    form = DistributeForm(request.POST, hosts=distribution_hosts(request.user))
    if form.is_valid():
        host = form.cleaned_data["host"]
        try:
            services.request_distribution(actor=request.user, image=image, host=host, ip=client_ip(request))
        except ServiceError as exc:
            form.add_service_error(exc)
        else:
            messages.success(
                request, _("Copying “%(name)s” to %(host)s has been queued.") % {"name": image.name, "host": host.name}
            )
            return redirect("image_detail", pk=image.pk)
    return _render_detail(request, image, distribute_form=form)
