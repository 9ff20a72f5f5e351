"""Dashboard forms of the tenancy core. They only validate input; the services decide."""

from __future__ import annotations

import datetime

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from portal.middleware import client_ip
from portal.models import ApiToken, Membership
from portal.selectors import Lockout, login_address_key, login_lockout
from portal.services import record_login_failure, reset_login_failures


class BootstrapForm(forms.Form):
    """Bootstrap 5 classes on every widget, ``is-invalid`` on fields with errors, and service errors on the form."""

    # Maps a ServiceError's ``field`` to this form's field name when they differ.
    service_fields: dict[str, str] = {}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            widget = field.widget
            css = "form-select" if isinstance(widget, forms.Select) else "form-control"
            widget.attrs["class"] = f"{widget.attrs.get('class', '')} {css}".strip()

    def add_error(self, field, error) -> None:
        super().add_error(field, error)
        for name in self.errors:
            if name in self.fields:
                attrs = self.fields[name].widget.attrs
                if "is-invalid" not in attrs.get("class", ""):
                    attrs["class"] = f"{attrs.get('class', '')} is-invalid".strip()

    def add_service_error(self, exc) -> None:
        """Show a ServiceError's message on the field it names, else above the form."""
        field = self.service_fields.get(exc.field, exc.field)
        self.add_error(field if field in self.fields else None, exc.message)


class ApiTokenForm(BootstrapForm):
    name = forms.CharField(
        label=_("Name"),
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": _("e.g. CI pipeline"), "autocomplete": "off"}),
    )
    scope = forms.ChoiceField(label=_("Scope"), choices=ApiToken.Scope.choices, initial=ApiToken.Scope.READ)
    expires_at = forms.DateField(
        label=_("Expires on"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text=_("The token stops working at the end of this day. Leave empty for a token that never expires."),
    )

    def expiry(self) -> datetime.datetime | None:
        """The chosen day's last second in the current time zone, or None for a token that never expires."""
        day = self.cleaned_data.get("expires_at")
        if day is None:
            return None
        return timezone.make_aware(datetime.datetime.combine(day, datetime.time(23, 59, 59)))


class AddMemberForm(BootstrapForm):
    service_fields = {"user": "username"}

    username = forms.CharField(
        label=_("Username"),
        max_length=150,
        widget=forms.TextInput(attrs={"placeholder": _("username"), "autocomplete": "off"}),
    )
    role = forms.ChoiceField(label=_("Role"), choices=Membership.Role.choices, initial=Membership.Role.MEMBER)


class RoleForm(BootstrapForm):
    role = forms.ChoiceField(label=_("Role"), choices=Membership.Role.choices)


class SwitchTenantForm(forms.Form):
    tenant = forms.IntegerField(min_value=1)


# ---------------------------------------------------------------- sign-in


class ThrottledLoginMixin:
    """Sign-in throttling for Django's authentication forms (docs/access-control.md).

    A locked account or address is refused before the password is checked; a wrong password
    is counted (and may start a lock); a successful sign-in resets the account's count.
    """

    login_via = "dashboard"

    def clean(self):
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if not username or not password:  # a field error: nothing was tried
            return super().clean()
        ip = client_ip(self.request) if self.request is not None else None
        lock = login_lockout(username=username, address=login_address_key(ip))
        if lock is not None:
            raise self.lockout_error(lock)
        try:
            cleaned = super().clean()
        except ValidationError:
            # user_cache is None: wrong password, unknown or inactive account. Otherwise the password was
            # right and the login refused for another reason (the admin site for a non-staff user).
            if self.user_cache is None:
                lock = record_login_failure(username=username, ip=ip, via=self.login_via)
                if lock is not None:
                    raise self.lockout_error(lock) from None
            raise
        reset_login_failures(username=username)
        return cleaned

    @staticmethod
    def lockout_error(lock: Lockout) -> ValidationError:
        minutes = lock.minutes_left()
        message = ngettext(
            "Too many failed sign-in attempts; try again in %(minutes)d minute.",
            "Too many failed sign-in attempts; try again in %(minutes)d minutes.",
            minutes,
        ) % {"minutes": minutes}
        return ValidationError(message, code="locked_out")


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    """The dashboard's sign-in form."""


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    """The admin site's sign-in form (staff only); shares the counters with the dashboard's."""

    login_via = "admin"
