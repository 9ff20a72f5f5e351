"""The driver-facing vocabulary: frozen dataclasses in and out, and the errors drivers raise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ProgressCallback = Callable[[int], None]  # percent 0..100


class BackendError(Exception):
    """A hypervisor or cloud refused or failed; ``message`` is safe to show to users."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HostUnreachable(BackendError):
    pass


@dataclass(frozen=True)
class VolumeRef:
    """A storage volume on a host: pool name, volume name and its path there."""

    pool: str
    name: str
    path: str
    capacity: int
    allocation: int
