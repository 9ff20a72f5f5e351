"""Copies of images where instances run (``ImageReplica``), made once and reused: the claim rules.

The host's adapter makes the copy (a libvirt host: a storage volume, ``vms.compute.libvirt.images``;
an OpenStack cloud: a Glance image, ``vms.compute.openstack.images``). Both follow these rules: one copy
at a time per image and host, the copier touching the row as it goes, a copy silent for
``LABCLOUD_OPERATION_STALE_SECONDS`` counted as dead (its worker died) and redone, and a launch that
finds a copy under way waiting for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from images.models import ImageReplica
from portal.services import ConflictError
from vms import operations
from vms.models import Operation

T = TypeVar("T")
COPY_WAIT = 3600  # seconds a launch waits while another launch copies the same image to the same host


def stale_copy() -> Q:
    """Copies another worker may redo: failed ones, and those whose copier went silent for the stale delay."""
    cutoff = timezone.now() - timedelta(seconds=settings.LABCLOUD_OPERATION_STALE_SECONDS)
    return Q(state=ImageReplica.State.FAILED) | Q(state=ImageReplica.State.COPYING, updated_at__lt=cutoff)


def claim_copy(replica: ImageReplica, *, claimable: Q, **reset) -> bool:
    """Take over the copy of ``replica`` if it is ``claimable`` (one conditional UPDATE); False if another has it."""
    return bool(
        ImageReplica.objects.filter(claimable, pk=replica.pk).update(
            state=ImageReplica.State.COPYING, error="", updated_at=timezone.now(), **reset
        )
    )


def copy_failed(replica: ImageReplica, error: str) -> None:
    ImageReplica.objects.filter(pk=replica.pk).update(state=ImageReplica.State.FAILED, error=error[:1000])


def wait_for_copy(make_copy: Callable[[], T], *, operation: Operation, timeout: float = COPY_WAIT) -> T:
    """``make_copy()``, waiting (with heartbeats for the operation) while another launch makes the same copy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return make_copy()
        except ConflictError:
            if time.monotonic() > deadline:
                raise
            operations.heartbeat(operation=operation)
            time.sleep(0.5)
