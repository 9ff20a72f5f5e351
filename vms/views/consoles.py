"""The console of an instance: its page of its own, and the one-time ticket the page's viewer asks for."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from portal.access import CHANGE
from portal.middleware import client_ip
from portal.services import ServiceError
from vms.access import access_instance_by_id
from vms.compute import Capability, instance_capabilities
from vms.consoles import tokens
from vms.models import Instance

SERIAL_SOCKET_PATH = "/ws/instances/{pk}/serial/"


def console_config(request, instance: Instance, *, auto_connect: bool) -> dict:
    """What static/vms/console.js needs: where to get a ticket, the serial socket, and its texts."""
    return {
        "instance": instance.pk,
        "name": instance.name,
        "ticketUrl": reverse("instance_console_ticket", args=[instance.pk]),
        "windowUrl": reverse("instance_console", args=[instance.pk]),
        "serialSocket": SERIAL_SOCKET_PATH.format(pk=instance.pk),
        "serial": Capability.SERIAL_CONSOLE in instance_capabilities(instance),
        "autoConnect": auto_connect,
        "text": {
            "idle": _("Not connected."),
            "connecting": _("Connecting…"),
            "connected": _("Connected."),
            "connectedTo": _("Connected to %(name)s."),
            "disconnected": _("Disconnected."),
            "ended": _(
                "The console session ended: the instance stopped or restarted, your access ended, or the "
                "session reached its maximum length."
            ),
            "lost": _(
                "The connection was refused or lost: the console link may have expired, the instance may have "
                "stopped, or your access ended."
            ),
            "securityFailure": _("The console refused the one-time password: %(reason)s"),
            "ticketFailed": _("The console could not be opened: %(reason)s"),
            "network": _("The portal could not be reached."),
            "pasted": _("Typed %(count)s characters."),
            "nothingToPaste": _("Nothing to type."),
            "serialClosed": {
                "1000": _("The guest stopped: the serial console ended."),
                "4401": _("You are signed out. Sign in again to use the console."),
                "4403": _("You no longer have access to this instance."),
                "4409": _("The serial console is only available while the instance is running."),
                "4408": _("The serial session reached its maximum length. Reconnect to go on."),
                "4410": _("Another session took over the serial console. Reconnect to take it back."),
                "4406": _("Instances on an OpenStack cloud have no serial console here; use the graphical console."),
                "4502": _("The serial console could not be opened or broke."),
                "4503": _("The instance's host is unavailable; try again when it is back."),
                "default": _("The serial console connection was lost."),
            },
        },
    }


@login_required
@require_GET
def instance_console(request, pk: int):
    """The console on a page of its own (the "open in a separate window" target): connects at once."""
    instance = access_instance_by_id(user=request.user, instance_id=pk, action=CHANGE)
    return render(
        request,
        "vms/instance_console.html",
        {"instance": instance, "console_config": console_config(request, instance, auto_connect=True)},
    )


@require_POST
def instance_console_ticket(request, pk: int):
    """A one-time console ticket as JSON, for the page's viewer; refusals are a 409 with the reason.

    Signed out, it answers 401 with a message (not the sign-in page's redirect, which fetch would follow).
    """
    if not request.user.is_authenticated:
        return JsonResponse({"error": _("You are signed out. Sign in again to use the console.")}, status=401)
    instance = access_instance_by_id(user=request.user, instance_id=pk, action=CHANGE)
    try:
        ticket = tokens.open_console(user=request.user, instance=instance, ip=client_ip(request))
    except ServiceError as exc:
        return JsonResponse({"error": exc.message}, status=409)
    return JsonResponse(
        {
            "protocol": "vnc",
            "url": ticket.url,
            "password": ticket.password,
            "expires_at": ticket.expires_at.isoformat(),
        },
        status=201,
    )
