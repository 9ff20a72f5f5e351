"""The OpenStack compute driver (openstacksdk): see ``driver.py``."""

from portal.backends.openstack.driver import (
    AuthFailed,
    CloudInfo,
    ComputeQuota,
    ConsoleUnavailable,
    FlavorInfo,
    GlanceImage,
    ImageRejected,
    KeypairInfo,
    OpenStackAuth,
    OpenStackDriver,
    ProjectInfo,
    QuotaExceeded,
    RemoteConsole,
    ServerState,
    server_state_of,
)

__all__ = [
    "AuthFailed",
    "CloudInfo",
    "ComputeQuota",
    "ConsoleUnavailable",
    "FlavorInfo",
    "GlanceImage",
    "ImageRejected",
    "KeypairInfo",
    "OpenStackAuth",
    "OpenStackDriver",
    "ProjectInfo",
    "QuotaExceeded",
    "RemoteConsole",
    "ServerState",
    "server_state_of",
]
