"""The compute interface: ``compute_for(host)`` is the adapter of the host's kind (see ``vms.compute.base``).

The built-in adapters (``vms.compute.libvirt``, ``vms.compute.openstack``) are registered when the app
is ready (``vms.apps``), so that importing this package never imports a backend.
"""

from vms.compute.base import (
    Capability,
    ComputeAdapter,
    ConsoleEndpoint,
    MissingCapability,
    compute_for,
    host_can,
    host_free,
    instance_capabilities,
    kinds_with,
    register,
)

__all__ = [
    "Capability",
    "ComputeAdapter",
    "ConsoleEndpoint",
    "MissingCapability",
    "compute_for",
    "host_can",
    "host_free",
    "instance_capabilities",
    "kinds_with",
    "register",
]
