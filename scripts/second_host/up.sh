#!/bin/bash
# Start the tests' second libvirt host: an independent libvirtd (+ virtlogd, + sshd) on this machine, in a
# mount + UTS namespace of its own, with its own folders under var/second-host (see lib.sh), host UUID
# and hostname (lctest-host2). Reachable on 127.0.0.1 only:
#
#   qemu+tcp://127.0.0.1:16510/system     (no authentication: loopback only, tests only)
#   qemu+ssh://root@lctest-host2/system   (its sshd on 127.0.0.1:10022; the alias is an ssh_config Host
#                                          block in /etc/ssh/ssh_config.d/lctest-host2.conf, see lib.sh)
#   qemu+tls://127.0.0.1:16511/system?pkipath=var/second-host/pki/client
#                                         (a CA of its own, made once: the server's certificate names
#                                          127.0.0.1; the client's is the portal side's, checked by libvirtd)
#
# with a dir pool "$LABCLOUD_SECOND_HOST_POOL" (default lctest-host2, in var/second-host/pool) and a pool
# "default" (its own /var/lib/libvirt/images), both active. Guests on it must be <domain type='qemu'>.
#
# Usage: scripts/second_host/up.sh      (as root; stop it with down.sh, ask status.sh)
# Idempotent: when it is up and answering it says so and exits 0; leftovers of a half-dead one are
# stopped first. Waits until the daemon answers over tcp and over ssh, then asks once over tls; fails
# with the daemon's log when it does not start.
set -euo pipefail
# shellcheck source=scripts/second_host/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T0=$(date +%s.%N)
took() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

((EUID == 0)) || die "needs root (unshare, bind mounts, a libvirtd of its own)"
for c in unshare libvirtd virtlogd virsh ssh ssh-keygen /usr/sbin/sshd openssl; do
    command -v "$c" >/dev/null || die "$c is missing: run scripts/bootstrap.sh --test"
done

ssh_ok() { timeout 20 virsh -q -c "$SSH_URI" version >/dev/null 2>&1; }
tcp_ok() { virsh2 version >/dev/null 2>&1; }
tls_ok() { timeout 20 virsh -q -c "$TLS_URI" version >/dev/null 2>&1; }

# TLS (qemu+tls): a CA of its own, a server certificate for 127.0.0.1 and a client certificate for the
# portal side, RSA as libvirt's docs make them (key usage digitalSignature + keyEncipherment, checked by
# libvirt). Made once, kept across restarts (down.sh leaves pki/); the CA key signs nothing else.
ossl() { # openssl, its output shown only when it fails
    local out
    out=$(openssl "$@" 2>&1) || die "openssl $1 failed: $out"
}
issue() { # issue NAME SUBJECT EXTENSIONS: NAME-key.pem and NAME-cert.pem signed by the CA
    local name=$1 subject=$2 extensions=$3
    ossl req -new -newkey rsa:2048 -nodes -subj "$subject" \
        -keyout "$PKI/$name-key.pem" -out "$PKI/$name.csr"
    printf '%s\n' "$extensions" >"$PKI/$name.ext"
    ossl x509 -req -in "$PKI/$name.csr" -CA "$PKI/cacert.pem" -CAkey "$PKI/cakey.pem" -CAcreateserial \
        -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name-cert.pem"
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}
pki() {
    [[ -s $PKI/client/clientkey.pem && -s $PKI/server-cert.pem ]] && return 0
    rm -rf "$PKI"
    mkdir -p "$PKI/client"
    chmod 700 "$PKI"
    ossl req -x509 -new -newkey rsa:2048 -nodes -days 3650 -sha256 \
        -subj "/O=labcloud tests/CN=$NAME test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$PKI/cakey.pem" -out "$PKI/cacert.pem"
    issue server "/O=labcloud tests/CN=$NAME" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:$NAME"
    issue client "/O=labcloud tests/CN=labcloud portal" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    cp "$PKI/cacert.pem" "$PKI/client/cacert.pem"
    mv "$PKI/client-cert.pem" "$PKI/client/clientcert.pem"
    mv "$PKI/client-key.pem" "$PKI/client/clientkey.pem"
    chmod 600 "$PKI"/*key.pem "$PKI/client/clientkey.pem"
}

# pool_ensure NAME PATH: a persistent, autostarted, active dir pool
pool_ensure() {
    local name=$1 path=$2
    virsh2 pool-info "$name" >/dev/null 2>&1 || virsh2 pool-define-as "$name" dir --target "$path" >/dev/null
    [[ $(virsh2 pool-info "$name" | awk '$1 == "State:" { print $2 }') == running ]] || virsh2 pool-start "$name" >/dev/null
    virsh2 pool-autostart "$name" >/dev/null
}
pools() {
    pool_ensure "$POOL" "$H2/pool"
    pool_ensure default /var/lib/libvirt/images # as the namespace sees it: $H2/lib/images
}
write_info() {
    {
        echo "tcp_uri=$TCP_URI"
        echo "ssh_uri=$SSH_URI"
        echo "tls_uri=$TLS_URI"
        echo "pool=$POOL"
        echo "host_uuid=$(cat "$H2/host-uuid")"
        echo "hostname=$NAME"
        echo "dir=$H2"
    } >"$RUN/info.tmp"
    mv "$RUN/info.tmp" "$RUN/info"
}

# ------------------------------------------------------------------ already up?
state=$(bash "$HERE/status.sh" || true)
if [[ $state == up ]] && tcp_ok && ssh_ok && tls_ok; then
    pools
    write_info
    say "second host already up (libvirtd $(recorded_pid libvirtd)): $TCP_URI, $SSH_URI, $TLS_URI, pool $POOL"
    exit 0
fi
if [[ $state != down ]]; then
    say "stopping what runs of an earlier start ($state, not answering over tcp, ssh and tls)"
    bash "$HERE/down.sh"
fi
for port in "$TCP_PORT" "$TLS_PORT" "$SSH_PORT"; do
    ! listening "$port" || die "127.0.0.1:$port is taken by a process this script did not start"
done

# ------------------------------------------------------------------ folders and configuration
mkdir -p "$H2"/{etc,lib/images,log,cache/qemu/capabilities,run/sshd,pool,system-run,ssh,root}
chmod 700 "$H2/root"
mkdir -p "$H2/run/lock" # /var/lock: libvirt locks the pty of a serial console there
chmod 755 "$H2/run" "$H2/run/sshd"
chmod 1777 "$H2/run/lock"
chmod 700 "$H2/ssh"
if [[ ! -s $H2/host-uuid ]]; then
    system_uuid=$(timeout 20 virsh -q -c qemu:///system capabilities 2>/dev/null | sed -n 's:.*<uuid>\(.*\)</uuid>.*:\1:p' | head -n 1)
    uuid=$(cat /proc/sys/kernel/random/uuid)
    [[ $uuid != "$system_uuid" ]] || uuid=$(cat /proc/sys/kernel/random/uuid)
    echo "$uuid" >"$H2/host-uuid"
fi
{
    cat /etc/hosts
    echo "127.0.0.1 $NAME # the second host's own name (scripts/second_host/ns-init.sh)"
} >"$H2/hosts"
pki
cat >"$H2/etc/libvirtd.conf" <<CONF
# Written by scripts/second_host/up.sh (every start). Loopback only.
listen_tls = 1
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "$TCP_PORT"
auth_tcp = "none"
tls_port = "$TLS_PORT"
# The client's certificate is the authentication (checked against this CA; libvirt's default).
auth_tls = "none"
ca_file = "$PKI/cacert.pem"
cert_file = "$PKI/server-cert.pem"
key_file = "$PKI/server-key.pem"
auth_unix_rw = "none"
host_uuid = "$(cat "$H2/host-uuid")"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
CONF
cat >"$H2/etc/qemu.conf" <<CONF
# Written by scripts/second_host/up.sh (every start).
user = "root"
group = "root"
# No cgroups: both daemons would create /machine/qemu-<id>-<name> with the same numbering.
# (getCPUStats / schedulerParameters fail without them; getAllDomainStats, info, memoryStats work.)
cgroup_controllers = [ ]
# QEMU stays in this host's namespace (libvirt's default gives each QEMU a child mount namespace with a
# private /dev): then every process of the host is found by its namespace (down.sh, status.sh).
namespaces = [ ]
# Port ranges of its own (the system daemon: 49152-49215, VNC from 5900 up).
migration_port_min = ${MIGRATION_PORTS[0]}
migration_port_max = ${MIGRATION_PORTS[1]}
remote_display_port_min = ${VNC_PORTS[0]}
remote_display_port_max = ${VNC_PORTS[1]}
vnc_listen = "127.0.0.1"
spice_listen = "127.0.0.1"
CONF
cat >"$H2/etc/virtlogd.conf" <<CONF
# Written by scripts/second_host/up.sh (every start).
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
CONF
# libvirt's standard network filters (clean-traffic and what it references), as Debian's
# libvirt-daemon-config-nwfilter installs them for the system daemon: the portal's anti-spoofing
# filter builds on them (portal/backends/libvirt/nwfilter.py). Read at the daemon's start.
mkdir -p "$H2/etc/nwfilter"
if compgen -G '/usr/share/libvirt/nwfilter/*.xml' >/dev/null; then
    cp -u /usr/share/libvirt/nwfilter/*.xml "$H2/etc/nwfilter/"
fi
# QEMU's capabilities, probed by the system daemon already: start in a fraction of a second instead of
# ~8 s of probing (libvirtd checks them against the binaries and probes again if they are stale).
if compgen -G '/var/cache/libvirt/qemu/capabilities/*.xml' >/dev/null; then
    cp -u -p /var/cache/libvirt/qemu/capabilities/*.xml "$H2/cache/qemu/capabilities/"
fi

# SSH: a host key and a client key of its own; the client key may log in as root (no pty, no forwarding).
[[ -f $H2/ssh/ssh_host_ed25519_key ]] ||
    ssh-keygen -q -t ed25519 -N '' -C "$NAME host key" -f "$H2/ssh/ssh_host_ed25519_key"
[[ -f $H2/ssh/id_ed25519 ]] ||
    ssh-keygen -q -t ed25519 -N '' -C "labcloud tests -> $NAME" -f "$H2/ssh/id_ed25519"
echo "restrict $(cat "$H2/ssh/id_ed25519.pub")" >"$H2/ssh/authorized_keys"
echo "$NAME $(cut -d' ' -f1,2 "$H2/ssh/ssh_host_ed25519_key.pub")" >"$H2/ssh/known_hosts"
chmod 600 "$H2/ssh/authorized_keys"
cat >"$H2/ssh/sshd_config" <<CONF
# Written by scripts/second_host/up.sh (every start): runs inside the second host's namespace.
ListenAddress 127.0.0.1:$SSH_PORT
HostKey $H2/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
AuthorizedKeysFile $H2/ssh/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
UseDNS no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
PermitTunnel no
PrintMotd no
CONF
marker="# lctest second host of $H2"
if [[ -e $SSH_DROPIN ]] && ! grep -qxF "$marker" "$SSH_DROPIN"; then
    echo "!!  replacing $SSH_DROPIN (written for another checkout's second host, which is not running)" >&2
fi
[[ -d $(dirname "$SSH_DROPIN") ]] || die "$(dirname "$SSH_DROPIN") is missing (openssh-client)"
cat >"$SSH_DROPIN.tmp" <<CONF
$marker
# Written by $HERE/up.sh, removed by down.sh: how libvirt's qemu+ssh transport (the ssh binary)
# reaches the tests' second libvirt host, $SSH_URI.
Host $NAME
    HostName 127.0.0.1
    Port $SSH_PORT
    User root
    IdentityFile $H2/ssh/id_ed25519
    IdentitiesOnly yes
    HostKeyAlias $NAME
    UserKnownHostsFile $H2/ssh/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    CheckHostIP no
    BatchMode yes
    PreferredAuthentications publickey
    GSSAPIAuthentication no
    ForwardAgent no
    ForwardX11 no
    ConnectTimeout 10
CONF
mv "$SSH_DROPIN.tmp" "$SSH_DROPIN"
[[ $(ssh -G "$NAME" 2>/dev/null | awk '$1 == "port" { print $2 }') == "$SSH_PORT" ]] ||
    die "ssh does not read $SSH_DROPIN (does /etc/ssh/ssh_config include ssh_config.d/*.conf?)"

# ------------------------------------------------------------------ start
rm -f "$RUN"/*.pid "$RUN/mntns" "$RUN/info"
: >"$H2/log/libvirtd.log"
: >"$H2/log/sshd.log"
# A clean environment, as a service gets: nothing of the caller's (pytest's, a shell's) leaks into the daemons.
setsid env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
    LABCLOUD_SECOND_HOST_DIR="$H2" LABCLOUD_SECOND_HOST_POOL="$POOL" \
    unshare --mount --uts --propagation private "$HERE/ns-init.sh" </dev/null >"$H2/log/ns-init.out" 2>&1 &
LIBVIRTD=$!
fail() {
    echo "ERROR: the second host did not start: $*" >&2
    for f in ns-init.out libvirtd.log sshd.log; do
        [[ -s $H2/log/$f ]] || continue
        echo "--- $H2/log/$f (end)" >&2
        tail -n 25 "$H2/log/$f" >&2
    done
    bash "$HERE/down.sh" >&2 || true
    exit 1
}
deadline=$((SECONDS + 60))
until tcp_ok; do
    kill -0 "$LIBVIRTD" 2>/dev/null || fail "libvirtd (pid $LIBVIRTD) exited"
    ((SECONDS < deadline)) || fail "no answer on $TCP_URI within 60 s"
    sleep 0.05
done
T_TCP=$(took)
[[ $(recorded_pid libvirtd) == "$LIBVIRTD" ]] || fail "libvirtd's PID file does not name pid $LIBVIRTD"
for d in "${DAEMONS[@]}"; do daemon_alive "$d" || fail "$d is not running"; done
deadline=$((SECONDS + 30))
until ssh_ok; do
    daemon_alive sshd || fail "sshd exited"
    ((SECONDS < deadline)) || fail "no answer on $SSH_URI within 30 s ($(timeout 20 virsh -q -c "$SSH_URI" version 2>&1 | tail -n 2))"
    sleep 0.05
done
T_SSH=$(took)
tls_ok || fail "no answer on $TLS_URI ($(timeout 20 virsh -q -c "$TLS_URI" version 2>&1 | tail -n 2))"
pools
write_info
say "second host up in $(took) s (tcp answered at $T_TCP s, ssh at $T_SSH s): libvirtd $LIBVIRTD," \
    "virtlogd $(recorded_pid virtlogd), sshd $(recorded_pid sshd); $TCP_URI, $SSH_URI, $TLS_URI, pool $POOL"
