"""Seed a fresh portal: an admin account, a demo tenant, default flavors and the local libvirt host.

Idempotent: re-running changes nothing that exists. The admin's password comes from
LABCLOUD_ADMIN_PASSWORD, or is generated and printed once, when the account is created.
"""

from __future__ import annotations

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from portal.models import Membership, Tenant
from portal.services import add_member, create_tenant
from vms.models import Flavor
from vms.services import create_flavor, ensure_host

DEFAULT_FLAVORS = [
    # name, vCPUs, RAM MiB, disk GiB, description
    ("m1.nano", 1, 128, 1, "Test guests and tiny appliances"),
    ("m1.tiny", 1, 512, 5, ""),
    ("m1.small", 1, 2048, 20, ""),
    ("m1.medium", 2, 4096, 40, ""),
    ("m1.large", 4, 8192, 80, ""),
]


class Command(BaseCommand):
    help = "Create the admin account, a demo tenant, default flavors and the local host (idempotent)."

    def handle(self, *args, **options) -> None:
        with transaction.atomic():
            admin, password = self._admin()
            tenant = self._demo_tenant(admin)
            created_flavors = self._flavors(admin)
            host = ensure_host(name="local", uri=settings.LABCLOUD_DEFAULT_LIBVIRT_URI, actor=admin)
        self.stdout.write(
            f"seed: admin '{admin.get_username()}', tenant '{tenant.name}', "
            f"{created_flavors} new flavor(s), host '{host.name}' ({host.uri})"
        )
        if password:
            self.stdout.write(
                self.style.WARNING(
                    f"\n  Admin account created: username '{admin.get_username()}', password '{password}'\n"
                    "  This password is shown only once. Change it with: "
                    f".venv/bin/python manage.py changepassword {admin.get_username()}\n"
                )
            )

    def _admin(self):
        User = get_user_model()
        username = os.environ.get("LABCLOUD_ADMIN_USERNAME", "admin")
        user = User.objects.filter(username=username).first()
        if user is not None:
            return user, None
        given = os.environ.get("LABCLOUD_ADMIN_PASSWORD", "")
        password = given or secrets.token_urlsafe(12)
        user = User.objects.create_superuser(
            username=username, email=os.environ.get("LABCLOUD_ADMIN_EMAIL", ""), password=password
        )
        return user, (None if given else password)

    def _demo_tenant(self, admin) -> Tenant:
        tenant = Tenant.objects.filter(slug="demo").first()
        if tenant is None:
            tenant = create_tenant(actor=admin, name="Demo", slug="demo", description="Demo tenant created at set-up.")
        if not Membership.objects.filter(tenant=tenant, user=admin).exists():
            add_member(actor=admin, tenant=tenant, user=admin, role=Membership.Role.ADMIN)
        return tenant

    def _flavors(self, admin) -> int:
        created = 0
        for name, vcpus, ram, disk, description in DEFAULT_FLAVORS:
            if not Flavor.objects.filter(name=name).exists():
                create_flavor(actor=admin, name=name, vcpus=vcpus, ram_mib=ram, disk_gib=disk, description=description)
                created += 1
        return created
