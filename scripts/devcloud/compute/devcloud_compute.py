"""Nova's fake compute driver with a console that points at 127.0.0.1, for the devcloud.

``fake.FakeDriverWithoutFakeNodes`` answers a console request with ``fakevncconsole.com:6969``:
nova-novncproxy would then look that name up in the DNS and connect to it. Here the console is the VNC
server the harness starts on 127.0.0.1 (a QEMU without a machine, ``DEVCLOUD_VNC_PORT``), so a
websocket through Nova's proxy gets a real RFB banner and nothing leaves the machine.

nova.conf: ``compute_driver = devcloud_compute.DevcloudComputeDriver``. Nova loads compute drivers
from its ``nova.virt`` package only, so up.sh copies this module into venv-nova's ``nova/virt/``.
"""

import os

from nova.console import type as ctype
from nova.virt import fake


class DevcloudComputeDriver(fake.FakeDriverWithoutFakeNodes):
    def get_vnc_console(self, context, instance):
        port = int(os.environ.get("DEVCLOUD_VNC_PORT", "16081"))
        return ctype.ConsoleVNC(host="127.0.0.1", port=port, internal_access_path=None)
