"""manage.py detect_virt_type: set each host's virtualization type (kvm or qemu/TCG) by booting a probe guest."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from portal.services import ServiceError
from vms.compute.libvirt import detect_virt_type
from vms.models import Host


class Command(BaseCommand):
    help = "Boot a tiny probe guest under KVM on each host; use kvm only where it really boots, else qemu (TCG)."

    def add_arguments(self, parser):
        parser.add_argument("--host", action="append", dest="hosts", help="host name (repeatable); default: all")
        parser.add_argument(
            "--image",
            type=Path,
            default=Path(settings.BASE_DIR) / "var" / "test-media" / "tiny.qcow2",
            help="bootable probe disk printing LABCLOUD-TINY-BOOTED on its serial console",
        )
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, *args, hosts=None, image: Path, timeout: float, **options):
        if not image.exists():
            raise CommandError(f"probe image {image} not found (scripts/build_test_media.sh builds it)")
        selected = Host.objects.libvirt().filter(enabled=True)
        if hosts:
            selected = selected.filter(name__in=hosts)
        for host in selected:
            try:
                virt_type = detect_virt_type(host=host, probe_image=image, timeout=timeout)
            except ServiceError as exc:
                self.stderr.write(f"{host.name}: probe failed: {exc.message}")
                continue
            self.stdout.write(f"{host.name}: {virt_type}")
