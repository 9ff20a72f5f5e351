"""The compute app's models, one module per concern; import them from here."""

from vms.models.flavors import Flavor, FlavorQuerySet, SharedWithTenantsQuerySet
from vms.models.hosts import (
    CloudFlavor,
    CloudProject,
    Host,
    HostQuerySet,
    InfrastructureQuerySet,
    PlacementRule,
    UnmanagedDomain,
    validate_libvirt_uri,
    validate_vnc_listen,
)
from vms.models.instances import ConsoleSession, Instance, InstanceDisk, InstanceMetricSample, Snapshot
from vms.models.keypairs import Keypair
from vms.models.metrics import HostMetricRollup, HostMetricSample, InstanceMetricRollup
from vms.models.networks import Network, NetworkQuerySet
from vms.models.notifications import NotificationMark
from vms.models.operations import Operation
from vms.models.security_groups import DEFAULT_GROUP, SecurityGroup, SecurityGroupRule

__all__ = [
    "DEFAULT_GROUP",
    "CloudFlavor",
    "CloudProject",
    "ConsoleSession",
    "Flavor",
    "FlavorQuerySet",
    "Host",
    "HostMetricRollup",
    "HostMetricSample",
    "HostQuerySet",
    "InfrastructureQuerySet",
    "Instance",
    "InstanceDisk",
    "InstanceMetricRollup",
    "InstanceMetricSample",
    "Keypair",
    "Network",
    "NetworkQuerySet",
    "NotificationMark",
    "Operation",
    "PlacementRule",
    "SecurityGroup",
    "SecurityGroupRule",
    "SharedWithTenantsQuerySet",
    "Snapshot",
    "UnmanagedDomain",
    "validate_libvirt_uri",
    "validate_vnc_listen",
]
