"""Which virtualization a libvirt host really has: KVM only if a guest boots under it there."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

from django.conf import settings

from portal.backends.base import (
    BackendError,
)
from portal.services import ServiceError, record_audit
from vms.compute.libvirt.spec import driver_for
from vms.models import Host


def detect_virt_type(*, host: Host, probe_image: Path, actor=None, timeout: float = 60.0) -> str:
    """Choose the host's virtualization type by proof: ``kvm`` only if a guest really boots under KVM there.

    ``probe_image`` is a small bootable disk whose serial console prints ``LABCLOUD-TINY-BOOTED``
    (the tiny guest of ``scripts/build_test_media.sh``). It is copied into the host's pool, booted
    once under KVM (CPU model from the host's CPU mode; QEMU's default model stands in for
    host-model), and removed again. A host where /dev/kvm exists but cannot boot a kernel (nested
    paravirtual KVM) ends up with ``qemu`` (TCG). Stores and returns the choice.
    """
    driver = driver_for(host)
    volume = f"{settings.LABCLOUD_DOMAIN_PREFIX}probe-{secrets.token_hex(4)}.qcow2"
    cpu_mode = host.cpu_mode if host.cpu_mode != Host.CpuMode.DEFAULT else Host.CpuMode.HOST_MODEL
    try:
        driver.upload_file(host.storage_pool, volume, probe_image)
        boots = driver.probe_kvm(
            pool=host.storage_pool,
            disk_volume=volume,
            cpu_mode=cpu_mode,
            timeout=timeout,
            name_prefix=f"{settings.LABCLOUD_DOMAIN_PREFIX}probe-",
        )
    except BackendError as exc:
        raise ServiceError(exc.message) from exc
    finally:
        with contextlib.suppress(BackendError):
            driver.delete_volume(host.storage_pool, volume)
    virt_type = Host.VirtType.KVM if boots else Host.VirtType.QEMU
    Host.objects.filter(pk=host.pk).update(virt_type=virt_type)
    host.virt_type = virt_type
    record_audit(user=actor, action="host.detect_virt_type", target=host, detail={"virt_type": virt_type})
    return virt_type
