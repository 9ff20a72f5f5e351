"""WebSocket routes of every app, gathered in one list for portal.asgi."""

from django.urls import path

from vms.consoles.serial import SerialConsumer
from vms.consumers import LiveConsumer

websocket_urlpatterns: list = [
    path("ws/live/", LiveConsumer.as_asgi()),
    path("ws/instances/<int:pk>/serial/", SerialConsumer.as_asgi()),
]
