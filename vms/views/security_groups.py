"""Dashboard pages for security groups: the active tenant's groups, one group's rules, and an instance's groups.

Thin: reads through vms.security_groups' selectors, writes through its services; another
tenant's group, rule or instance answers 404 (the access gate).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from portal.access import CHANGE, DELETE, VIEW, access_by_id, is_cloud_admin
from portal.middleware import client_ip
from portal.services import ServiceError
from portal.sorting import sort_by
from portal.views import current_tenant
from vms.access import access_instance_by_id
from vms.forms import InstanceSecurityGroupsForm, SecurityGroupForm, SecurityGroupRuleForm
from vms.models import SecurityGroup, SecurityGroupRule
from vms.security_groups import (
    add_rule,
    create_security_group,
    delete_rule,
    delete_security_group,
    rules_for,
    security_groups_for,
    set_instance_security_groups,
)

# The group list's sortable columns (portal.sorting).
GROUP_SORT_COLUMNS = {
    "name": ("name", "id"),
    "tenant": ("tenant__name", "name", "id"),
    "rules": ("rule_count", "name", "id"),
    "instances": ("instance_count", "name", "id"),
}


def _group(request, pk: int, action: str = VIEW) -> SecurityGroup:
    return access_by_id(security_groups_for(user=request.user), user=request.user, pk=pk, action=action)


def _groups_page(request, *, form=None):
    tenant = current_tenant(request)
    staff = is_cloud_admin(request.user)
    if tenant is not None:
        groups = security_groups_for(user=request.user, tenant=tenant)
    elif staff:
        groups = security_groups_for(user=request.user)
    else:
        groups = SecurityGroup.objects.none()
    groups, sorting = sort_by(groups, request.GET.get("sort", ""), GROUP_SORT_COLUMNS)
    return render(
        request,
        "vms/security_groups.html",
        {
            "tenant": tenant,
            "staff": staff,
            "groups": list(groups),
            "sorting": sorting,
            "form": form or SecurityGroupForm(),
        },
    )


@login_required
def security_group_list(request):
    return _groups_page(request)


@login_required
@require_POST
def security_group_create(request):
    tenant = current_tenant(request)
    if tenant is None:
        raise PermissionDenied
    form = SecurityGroupForm(request.POST)
    if form.is_valid():
        try:
            group = create_security_group(actor=request.user, tenant=tenant, ip=client_ip(request), **form.cleaned_data)
        except ServiceError as exc:
            form.add_service_error(exc)
        else:
            messages.success(request, _("Security group “%(name)s” created.") % {"name": group.name})
            return redirect("security_group_detail", pk=group.pk)
    return _groups_page(request, form=form)


def _detail_page(request, group: SecurityGroup, *, form=None):
    tenant_groups = SecurityGroup.objects.filter(tenant_id=group.tenant_id).order_by("name")
    rules = rules_for(user=request.user, group=group).order_by("direction", "protocol", "port_min", "id")
    return render(
        request,
        "vms/security_group_detail.html",
        {
            "group": group,
            "rules": list(rules),
            "instances": list(group.instances.restrict(request.user, VIEW).order_by("name")[:50]),
            "form": form or SecurityGroupRuleForm(groups=tenant_groups),
            "can_change": SecurityGroup.objects.restrict(request.user, CHANGE).filter(pk=group.pk).exists(),
        },
    )


@login_required
def security_group_detail(request, pk: int):
    return _detail_page(request, _group(request, pk))


@login_required
@require_POST
def security_group_delete(request, pk: int):
    group = _group(request, pk, DELETE)
    try:
        delete_security_group(actor=request.user, group=group, ip=client_ip(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("security_group_detail", pk=group.pk)
    messages.success(request, _("Security group “%(name)s” has been deleted.") % {"name": group.name})
    return redirect("security_groups")


@login_required
@require_POST
def security_group_rule_add(request, pk: int):
    group = _group(request, pk, CHANGE)
    form = SecurityGroupRuleForm(request.POST, groups=SecurityGroup.objects.filter(tenant_id=group.tenant_id))
    if form.is_valid():
        data = dict(form.cleaned_data)
        try:
            add_rule(actor=request.user, group=group, ip=client_ip(request), **data)
        except ServiceError as exc:
            form.add_service_error(exc)
        else:
            messages.success(request, _("Rule added; the group's instances follow within a moment."))
            return redirect("security_group_detail", pk=group.pk)
    return _detail_page(request, group, form=form)


@login_required
@require_POST
def security_group_rule_delete(request, pk: int, rule_pk: int):
    group = _group(request, pk, CHANGE)
    rule = SecurityGroupRule.objects.filter(group=group, pk=rule_pk).first()
    if rule is None:
        raise Http404
    delete_rule(actor=request.user, rule=rule, ip=client_ip(request))
    messages.success(request, _("Rule removed; the group's instances follow within a moment."))
    return redirect("security_group_detail", pk=group.pk)


@login_required
@require_POST
def instance_security_groups(request, pk: int):
    instance = access_instance_by_id(user=request.user, instance_id=pk, action=CHANGE)
    form = InstanceSecurityGroupsForm(request.POST, groups=SecurityGroup.objects.filter(tenant_id=instance.tenant_id))
    if not form.is_valid():
        messages.error(request, _("Choose security groups of this instance's tenant."))
        return redirect("instance_detail", pk=instance.pk)
    groups = list(form.cleaned_data["security_groups"])
    if not groups:
        messages.error(request, _("An instance needs at least one security group."))
        return redirect("instance_detail", pk=instance.pk)
    try:
        set_instance_security_groups(actor=request.user, instance=instance, groups=groups, ip=client_ip(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("Security groups of “%(name)s” changed.") % {"name": instance.name})
    return redirect("instance_detail", pk=instance.pk)
