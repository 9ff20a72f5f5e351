"""What the compute app's admin pages share."""

from __future__ import annotations

from django.contrib import messages

from portal.services import ServiceError


def run_each(model_admin, request, queryset, call, done_message) -> None:
    """Call ``call(obj)`` for each selected object; refusals become error messages, the rest one success."""
    done = 0
    for obj in queryset:
        try:
            call(obj)
        except ServiceError as exc:
            model_admin.message_user(request, f"{obj}: {exc.message}", messages.ERROR)
        else:
            done += 1
    if done:
        model_admin.message_user(request, done_message(done), messages.SUCCESS)


def adopt_saved(obj, saved) -> None:
    """Make the admin's unsaved ``obj`` the row a service saved, so the admin redirects to it."""
    for field in type(saved)._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db
