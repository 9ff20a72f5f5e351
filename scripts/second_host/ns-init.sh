#!/bin/bash
# Runs inside the second host's own mount + UTS namespace (up.sh starts it with
# `setsid unshare --mount --uts --propagation private`): puts the second host's folders over libvirt's,
# names the host, starts virtlogd and sshd (both daemonize), then becomes libvirtd (foreground).
# The namespace and its bind mounts go away with the last of its processes: nothing of the system's
# mount table changes.
set -euo pipefail
# shellcheck source=scripts/second_host/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The system daemon's sockets stay reachable in here (peer-to-peer migration back to qemu:///system:
# qemu+unix:///system?socket=$H2/system-run/libvirt-sock). First, before /run is covered.
[[ ! -d /run/libvirt ]] || mount --bind /run/libvirt "$H2/system-run"
mount --bind "$H2/etc" /etc/libvirt
mount --bind "$H2/lib" /var/lib/libvirt
mount --bind "$H2/log" /var/log/libvirt
mount --bind "$H2/cache" /var/cache/libvirt
# A root home of its own: SSH sessions start from a plain shell, not the machine's ~/.bashrc.
mount --bind "$H2/root" /root
mount --bind "$H2/run" /run
# Its hostname resolves from /etc/hosts (libvirtd looks it up): no DNS query leaves the machine for it.
mount --bind "$H2/hosts" /etc/hosts
hostname "$NAME"
ns_of self >/run/mntns

virtlogd -d -f /etc/libvirt/virtlogd.conf -p /run/virtlogd.pid
/usr/sbin/sshd -f "$H2/ssh/sshd_config" -E /var/log/libvirt/sshd.log
exec libvirtd --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirtd.pid
