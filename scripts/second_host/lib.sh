# Shared settings and helpers of the second libvirt host (sourced by up.sh, down.sh, status.sh, ns-init.sh).
# shellcheck shell=bash
#
# A second, independent libvirtd (with its own virtlogd and an sshd) on this machine, in a mount + UTS
# namespace of its own. Everything of it lives under $H2 (git-ignored var/second-host by default):
#
#   etc/    seen as /etc/libvirt inside     libvirtd.conf, qemu.conf, virtlogd.conf; domain and pool XML
#   lib/    seen as /var/lib/libvirt        domain state; images/ is the "default" pool
#   log/    seen as /var/log/libvirt        libvirtd.log, virtlogd.log, qemu/*.log, sshd.log
#   cache/  seen as /var/cache/libvirt      QEMU capabilities (copied from the system daemon's)
#   run/    seen as /run                    PID files, sockets, info (what the pytest fixture reads)
#   pool/   (same path inside and out)      the "$POOL" dir pool
#   ssh/                                    host key, client key, authorized_keys, known_hosts, sshd_config
#   pki/                                    TLS: a CA of its own, the server's certificate and key;
#   pki/client/                             the portal side's (cacert.pem, clientcert.pem, clientkey.pem)
#   system-run/                             inside only: the system daemon's /run/libvirt
#   hosts   seen as /etc/hosts              the system's, plus its own name on 127.0.0.1
#   root/   seen as /root                   root's home there (SSH sessions start from a plain shell)
#   host-uuid                               its host_uuid, kept across restarts
#
# Nothing of it listens on anything but 127.0.0.1.

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
H2=${LABCLOUD_SECOND_HOST_DIR:-$ROOT/var/second-host}
POOL=${LABCLOUD_SECOND_HOST_POOL:-lctest-host2}
NAME=lctest-host2 # its hostname (UTS namespace) and the SSH host alias of the portal side
TCP_PORT=16510
TLS_PORT=16511 # not libvirt's 16514, which a real libvirtd-tls.socket of this machine would take
SSH_PORT=10022
TCP_URI="qemu+tcp://127.0.0.1:$TCP_PORT/system"
SSH_URI="qemu+ssh://root@$NAME/system"
PKI=$H2/pki
# The client reads its CA, certificate and key from pkipath= instead of /etc/pki (the machine's own).
TLS_URI="qemu+tls://127.0.0.1:$TLS_PORT/system?pkipath=$PKI/client"
# Port ranges of its own; the system daemon's defaults are 49152-49215 (migration) and 5900 upwards (VNC).
MIGRATION_PORTS=(49400 49499)
VNC_PORTS=(15900 15999)
RUN=$H2/run
# The SSH client side: a Host block for the alias $NAME (127.0.0.1:$SSH_PORT, our key, our known_hosts).
# libvirt's qemu+ssh transport runs the ssh binary, which reads /etc/ssh/ssh_config; Debian's includes
# ssh_config.d/*.conf. (The portal refuses keyfile= and known_hosts= in host URIs, and ssh ignores $HOME.)
SSH_DROPIN=/etc/ssh/ssh_config.d/$NAME.conf
DAEMONS=(libvirtd virtlogd sshd)

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# ns_of PID: its mount namespace ("mnt:[4026532…]"), empty when it is gone.
ns_of() { readlink "/proc/$1/ns/mnt" 2>/dev/null || true; }
# recorded_pid NAME: the PID in run/NAME.pid, empty without one.
recorded_pid() { cat "$RUN/$1.pid" 2>/dev/null || true; }
# ours PID NAME: PID is alive, is NAME, and runs in the namespace recorded at start (so a stale PID file
# can never make us signal an unrelated process that got the same PID).
ours() {
    local pid=$1 name=$2 ns
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    ns=$(cat "$RUN/mntns" 2>/dev/null) || return 1
    [[ -n $ns && $ns != "$(ns_of self)" && $(ns_of "$pid") == "$ns" ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}
daemon_alive() { ours "$(recorded_pid "$1")" "$1"; }
# ns_pids: every process in the recorded namespace (its daemons, QEMU, SSH sessions).
ns_pids() {
    local ns p
    ns=$(cat "$RUN/mntns" 2>/dev/null) || return 0
    [[ -n $ns && $ns != "$(ns_of self)" ]] || return 0
    for p in /proc/[0-9]*; do
        [[ $(ns_of "${p#/proc/}") == "$ns" ]] && echo "${p#/proc/}"
    done
    return 0
}
# listening PORT: something accepts TCP connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
virsh2() { timeout 20 virsh -q -c "$TCP_URI" "$@"; }
