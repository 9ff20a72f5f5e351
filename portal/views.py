"""Dashboard pages of the tenancy core.

Views stay thin: reads go through the access gate (``restrict``) or the selectors,
writes through the services. A ``ServiceError`` is shown to the user and changes nothing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import kombu.exceptions
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render, resolve_url
from django.template import loader
from django.utils import timezone
from django.utils.functional import SimpleLazyObject
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST
from django.views.defaults import bad_request as django_bad_request

from portal.access import CHANGE, DELETE, VIEW, access_by_id, is_cloud_admin
from portal.api.exceptions import problem_response, refused_request_problem
from portal.forms import AddMemberForm, ApiTokenForm, RoleForm, SwitchTenantForm
from portal.middleware import SESSION_KEY, client_ip
from portal.models import ApiToken, Membership, Quota, Tenant
from portal.selectors import QuotaLine, heading, quota_overview, role_in, tenants_for_user
from portal.services import (
    ServiceError,
    add_member,
    change_role,
    create_api_token,
    find_user,
    remove_member,
    revoke_api_token,
)
from portal.sorting import sort_by
from vms.dashboard import host_capacity, instance_states, overview_live_config, recent_operations

# ---------------------------------------------------------------- helpers


def current_tenant(request) -> Tenant | None:
    """The active tenant of the request (set by ActiveTenantMiddleware) as a plain model instance, or None."""
    tenant = getattr(request, "tenant", None)
    if not tenant:  # also evaluates the lazy object
        return None
    if isinstance(tenant, SimpleLazyObject):
        tenant = tenant._wrapped
    return tenant


def safe_next(request, fallback: str = "overview") -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return resolve_url(fallback)


def can_manage_members(user, tenant: Tenant | None) -> bool:
    return tenant is not None and Tenant.objects.restrict(user, CHANGE).filter(pk=tenant.pk).exists()


def role_label(user, tenant: Tenant) -> str:
    role = role_in(user=user, tenant=tenant)
    if role is not None:
        return str(Membership.Role(role).label)
    return _("Cloud admin") if is_cloud_admin(user) else ""


# ---------------------------------------------------------------- overview

RESOURCE_ICONS = {
    "instances": "pc-display",
    "vcpus": "cpu",
    "ram_mib": "memory",
    "disk_gib": "hdd-stack",
    "snapshots": "camera",
    "snapshot_mib": "layers",
    "images": "disc",
    "image_storage_gib": "database",
}


@dataclass(frozen=True)
class QuotaCard:
    line: QuotaLine

    @property
    def label(self) -> str:
        return heading(self.line.label)

    @property
    def icon(self) -> str:
        return RESOURCE_ICONS.get(self.line.resource, "box")

    @property
    def level(self) -> str:
        """Bootstrap colour of the bar: green below 70 %, amber below 90 %, red from 90 %."""
        if self.line.unlimited:
            return "info"
        if self.line.percent >= 90:
            return "danger"
        if self.line.percent >= 70:
            return "warning"
        return "success"


@login_required
def overview(request):
    tenant = current_tenant(request)
    context: dict = {"tenant": tenant}
    if tenant is not None:
        try:
            lines = quota_overview(tenant=tenant)
        except Quota.DoesNotExist:
            lines = []
        cards = [QuotaCard(line) for line in lines]
        limited = [card for card in cards if not card.line.unlimited]
        states = instance_states(user=request.user, tenant=tenant)
        context.update(
            cards=cards,
            role=role_label(request.user, tenant),
            member_count=tenant.memberships.count(),
            can_manage=can_manage_members(request.user, tenant),
            chart={
                "labels": [card.label for card in limited],
                "values": [card.line.percent for card in limited],
                "levels": [card.level for card in limited],
                "title": _("Usage in percent"),
            },
            instance_states=states,
            # live.js keeps the doughnut and the counts current from instance events.
            state_chart={
                "states": [count.state for count in states.counts],
                "labels": [count.label for count in states.counts],
                "tones": [count.tone for count in states.counts],
                "counts": [count.count for count in states.counts],
                "instances": {str(pk): state for pk, state in states.states.items()},
                "title": _("Instances by state"),
            },
            operations=recent_operations(user=request.user, tenant=tenant),
            live_config=overview_live_config(tenant=tenant),
        )
    if is_cloud_admin(request.user):
        context["hosts"] = host_capacity(user=request.user)
    return render(request, "portal/overview.html", context)


# ---------------------------------------------------------------- tenant switch


@login_required
@require_POST
def switch_tenant(request):
    form = SwitchTenantForm(request.POST)
    if not form.is_valid():
        raise Http404
    tenant = get_object_or_404(tenants_for_user(user=request.user).filter(enabled=True), pk=form.cleaned_data["tenant"])
    request.session[SESSION_KEY] = tenant.pk
    messages.success(request, _("You are now working in %(tenant)s.") % {"tenant": tenant.name})
    return redirect(safe_next(request))


# ---------------------------------------------------------------- API tokens


def token_status(token: ApiToken, now) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


# Sortable columns of the tokens and members pages (portal.sorting).
TOKEN_SORT = {
    "name": ("name", "id"),
    "scope": ("scope", "name", "id"),
    "created": ("created_at", "id"),
    "expires": ("expires_at", "id"),
    "last_used": ("last_used_at", "id"),
}
MEMBER_SORT = {
    "user": ("user__username", "id"),
    "role": ("role", "user__username", "id"),
    "since": ("created_at", "id"),
}


@never_cache  # the response to a creation carries the raw secret
@login_required
def tokens(request):
    created = raw = None
    if request.method == "POST":
        form = ApiTokenForm(request.POST)
        if form.is_valid():
            try:
                created, raw = create_api_token(
                    user=request.user,
                    name=form.cleaned_data["name"],
                    scope=form.cleaned_data["scope"],
                    expires_at=form.expiry(),
                    ip=client_ip(request),
                )
            except ServiceError as exc:
                form.add_service_error(exc)
            else:
                form = ApiTokenForm()
    else:
        form = ApiTokenForm()
    now = timezone.now()
    tokens, sorting = sort_by(ApiToken.objects.restrict(request.user, VIEW), request.GET.get("sort", ""), TOKEN_SORT)
    token_list = list(tokens)
    for token in token_list:
        token.status = token_status(token, now)
    return render(
        request,
        "portal/tokens.html",
        {"form": form, "tokens": token_list, "sorting": sorting, "created": created, "raw_token": raw},
    )


@login_required
@require_POST
def token_revoke(request, pk: int):
    token = access_by_id(ApiToken.objects.restrict(request.user, VIEW), user=request.user, pk=pk, action=CHANGE)
    if token.revoked_at is not None:
        messages.info(request, _("Token “%(name)s” was already revoked.") % {"name": token.name})
    else:
        revoke_api_token(actor=request.user, token=token, ip=client_ip(request))
        messages.success(request, _("Token “%(name)s” has been revoked.") % {"name": token.name})
    return redirect("tokens")


# ---------------------------------------------------------------- members


@login_required
def members(request):
    tenant = current_tenant(request)
    can_manage = can_manage_members(request.user, tenant)
    form = AddMemberForm()
    if request.method == "POST":
        if not can_manage:
            raise PermissionDenied
        form = AddMemberForm(request.POST)
        if form.is_valid():
            try:
                user = find_user(username=form.cleaned_data["username"].strip())
                membership = add_member(
                    actor=request.user, tenant=tenant, user=user, role=form.cleaned_data["role"], ip=client_ip(request)
                )
            except ServiceError as exc:
                form.add_service_error(exc)
            else:
                messages.success(
                    request,
                    _("%(user)s has been added to %(tenant)s as %(role)s.")
                    % {"user": user.get_username(), "tenant": tenant.name, "role": membership.get_role_display()},
                )
                return redirect("members")
    memberships = Membership.objects.none()
    if tenant is not None:
        memberships = Membership.objects.restrict(request.user, VIEW).filter(tenant=tenant)
        memberships = memberships.select_related("user", "tenant")
    memberships, sorting = sort_by(memberships, request.GET.get("sort", ""), MEMBER_SORT)
    memberships = list(memberships)
    return render(
        request,
        "portal/members.html",
        {
            "tenant": tenant,
            "memberships": memberships,
            "sorting": sorting,
            "can_manage": can_manage,
            "form": form,
            "role_choices": Membership.Role.choices,
        },
    )


def _membership_for(request, pk: int, action: str) -> Membership:
    """A membership the user may see (else 404) and act on (else 403)."""
    memberships = Membership.objects.restrict(request.user, VIEW).select_related("tenant", "user")
    return access_by_id(memberships, user=request.user, pk=pk, action=action)


@login_required
@require_POST
def member_role(request, pk: int):
    membership = _membership_for(request, pk, CHANGE)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose a valid role."))
        return redirect("members")
    try:
        change_role(actor=request.user, membership=membership, role=form.cleaned_data["role"], ip=client_ip(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            _("%(user)s is now %(role)s.")
            % {"user": membership.user.get_username(), "role": membership.get_role_display()},
        )
    return redirect("members")


@login_required
@require_POST
def member_remove(request, pk: int):
    membership = _membership_for(request, pk, DELETE)
    username, tenant_name = membership.user.get_username(), membership.tenant.name
    try:
        remove_member(actor=request.user, membership=membership, ip=client_ip(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request, _("%(user)s has been removed from %(tenant)s.") % {"user": username, "tenant": tenant_name}
        )
    return redirect("members")


# ---------------------------------------------------------------- errors

# What a part of the portal that is away raises (the database restarting, the broker stopped): a 503, try again.
UNAVAILABLE = (OperationalError, InterfaceError, kombu.exceptions.OperationalError)
RETRY_AFTER_SECONDS = 5


def bad_request(request, exception):
    """``handler400``: a request Django refused before any view (``SuspiciousOperation``). problem+json under
    /api/ — 413 for a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` —, Django's own page elsewhere."""
    if not request.path.startswith("/api/"):
        return django_bad_request(request, exception)
    return refused_request_problem(exception)


def server_error(request):
    """``handler500``: an error no view handled. problem+json under /api/, the error page elsewhere.

    A part that is away (the database or the broker: ``UNAVAILABLE``) answers 503 with Retry-After,
    anything else 500; the details never leave the server (Django logs the traceback). Nothing here
    touches the database, which may be what failed.
    """
    error = sys.exc_info()[1]
    unavailable = isinstance(error, UNAVAILABLE)
    status = 503 if unavailable else 500
    if request.path.startswith("/api/"):
        if unavailable:
            response = problem_response(
                status_code=status,
                code="service_unavailable",
                title=_("Service unavailable"),
                detail=_("A part of the portal is restarting; try again in a few seconds."),
            )
        else:
            response = problem_response(
                status_code=status,
                code="server_error",
                title=_("Server error"),
                detail=_("Something went wrong on our side; the administrators can find the details in the log."),
            )
    else:
        page = loader.get_template("503.html" if unavailable else "500.html")
        response = HttpResponse(page.render({}), status=status)
    if unavailable:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
