"""`manage.py consoleproxy`: the browser console proxy (websockify + the portal's token plugin)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connections

from vms.consoles.proxy import make_proxy


class Command(BaseCommand):
    help = "Run the console proxy: WebSocket clients with a console token ⇄ the instance's VNC server."

    def add_arguments(self, parser):
        parser.add_argument(
            "--host", default=settings.CONSOLE_PROXY_HOST, help="listen address (default: CONSOLE_PROXY_HOST)"
        )
        parser.add_argument(
            "--port", type=int, default=settings.CONSOLE_PROXY_PORT, help="listen port (default: CONSOLE_PROXY_PORT)"
        )

    def handle(self, *args, host: str, port: int, **options):
        proxy = make_proxy(host=host, port=port)
        connections.close_all()  # the listener never holds a connection its forked children would share
        self.stdout.write(f"console proxy listening on {host}:{port}")
        self.stdout.flush()
        proxy.start_server()
