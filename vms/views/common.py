"""What the compute app's pages share: admin links, refusals as messages."""

from __future__ import annotations

from django.contrib import messages
from django.urls import NoReverseMatch, reverse

from portal.services import ServiceError


def admin_url(name: str, *args) -> str | None:
    """A Django admin URL, or None while the model is not registered there."""
    try:
        return reverse(f"admin:{name}", args=args)
    except NoReverseMatch:
        return None


def report(request, exc: ServiceError) -> None:
    messages.error(request, exc.message)


def form_errors(request, form) -> None:
    for field, errors in form.errors.items():
        label = form.fields[field].label if field in form.fields else ""
        for error in errors:
            messages.error(request, f"{label}: {error}" if label else error)
