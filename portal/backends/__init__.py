"""Compute backends. Drivers speak libvirt/OpenStack and plain dataclasses; they never import the ORM."""
