"""OpenStack clouds: the adapter (``adapter``), the login (``login``), the tenants' projects, quotas and
flavors mirrored in the cloud (``mirror``) and the portal's images in its Glance (``images``)."""

from vms.compute.openstack.adapter import OpenStackAdapter

__all__ = ["OpenStackAdapter"]
