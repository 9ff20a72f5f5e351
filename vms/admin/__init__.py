"""The compute app's admin pages, one module per concern (each registers its models when imported)."""

from vms.admin import hosts, instances, networks, security_groups

__all__ = ["hosts", "instances", "networks", "security_groups"]
