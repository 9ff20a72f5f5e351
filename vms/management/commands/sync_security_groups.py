"""`manage.py sync_security_groups`: every tenant's security groups onto its hosts and clouds, now.

For an upgrade from a portal without security groups (the migration put every instance in its
tenant's ``default`` group; running guests follow at once instead of at their next start), or
after a host was repaired by hand. Safe to run at any time: it changes only what differs.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from portal.models import Tenant
from vms.security_groups import sync_firewall


class Command(BaseCommand):
    help = "Apply every tenant's security groups on its hosts and clouds now (only what differs changes)."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", action="append", default=[], help="a tenant's slug (repeatable; default: all)")

    def handle(self, *args, tenant: list[str], **options):
        tenants = Tenant.objects.order_by("pk")
        if tenant:
            tenants = tenants.filter(slug__in=tenant)
        for row in tenants:
            hosts = sync_firewall(tenant=row)
            self.stdout.write(f"{row.slug}: {hosts} host(s)")
