"""ML2 mechanism driver for a neutron-server without agents: every port binds at once, on any host.

In a real cloud an L2 agent (OVS, OVN, linuxbridge) reports the host and a mechanism driver binds the
port to it. The devcloud has no agents and its Nova compute runs the fake driver, which plugs nothing:
this driver marks the port bound and ACTIVE, with vif_type "tap" (a plain tap device, which a libvirt
compute can plug without OVS or a bridge). Networks, subnets, IP allocation, security groups and
quotas stay Neutron's own.
"""

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class DevcloudMechanismDriver(api.MechanismDriver):
    def initialize(self):
        pass

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_TAP,
                {portbindings.CAP_PORT_FILTER: False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return
