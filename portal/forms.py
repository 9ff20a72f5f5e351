"""Dashboard forms of the tenancy core. They only validate input; the services decide."""

from __future__ import annotations

import datetime

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from portal.models import ApiToken, Membership


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
