"""`manage.py watch_hosts`: keep the database in step with the libvirt hosts (see vms/watcher/)."""

from __future__ import annotations

import signal

from django.core.management.base import BaseCommand, CommandError

from vms.models import Host
from vms.watcher import HostWatcher


class Command(BaseCommand):
    help = "Watch the libvirt hosts: domain events and a periodic full reconcile into the database."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="refresh and reconcile every host once, then exit")
        parser.add_argument(
            "--host", action="append", default=[], dest="hosts", metavar="NAME", help="only this host (repeatable)"
        )

    def handle(self, *args, once: bool, hosts: list[str], **options):
        unknown = sorted(set(hosts) - set(Host.objects.filter(name__in=hosts).values_list("name", flat=True)))
        if unknown:
            raise CommandError(f"unknown host(s): {', '.join(unknown)}")
        watcher = HostWatcher(host_names=hosts)
        if once:
            watcher.once()
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, watcher.stop)
        watcher.run()
