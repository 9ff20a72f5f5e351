#!/usr/bin/env bash
# Set up everything labcloud needs on this machine, short of serving it.
#
#   scripts/bootstrap.sh          # what `make run` needs
#   scripts/bootstrap.sh --test   # plus PostgreSQL, Chromium, test-media tools,
#                                 # requirements-dev.txt and the devcloud's packages
#                                 # and venvs (`make test`)
#
# Target: Debian 12 (bookworm) as root (or a user with sudo), with or without
# systemd. Idempotent: a re-run only checks and skips what is already done.
# Long outputs (apt, pip, npm) go to var/log/*.log; their tail is shown on error.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

TEST=0
[[ ${LABCLOUD_TEST:-0} =~ ^(1|true|yes)$ ]] && TEST=1
for arg in "$@"; do
    case $arg in
    --test) TEST=1 ;;
    -h | --help) usage 0 ;;
    *)
        echo "unknown argument: $arg" >&2
        usage 2
        ;;
    esac
done

load_env "$ROOT/.env"

VAR_DIR=${LABCLOUD_VAR_DIR:-$ROOT/var}
LOG_DIR=$VAR_DIR/log
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
# Test database; scripts/test.sh uses the same URL.
PG_ROLE=labcloud PG_PASSWORD=labcloud PG_DB=labcloud PG_PORT=5432
mkdir -p "$VAR_DIR" "$LOG_DIR" "$VAR_DIR/redis"
# var/ holds the database (sessions), the secret key, the images and the logs: the portal's user's alone.
# (portal/settings.py keeps it so for what the portal creates later.)
chmod 700 "$VAR_DIR" "$LOG_DIR" "$VAR_DIR/redis"
for f in "$VAR_DIR"/secret_key "$VAR_DIR"/labcloud.sqlite3 "$VAR_DIR"/labcloud.sqlite3-wal "$VAR_DIR"/labcloud.sqlite3-shm; do
    if [[ -e $f ]]; then chmod 600 "$f"; fi
done
if [[ -d $VAR_DIR/images ]]; then chmod -R go-rwx "$VAR_DIR/images"; fi

T0=$SECONDS
step() { say "$*"; }
done_() { printf '    %s\n' "$*"; }

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root for: $*"
    fi
}

# run_logged LOGFILE CMD...: run quietly into LOGFILE, show its tail if it fails.
run_logged() {
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "failed: $* (full log: $log)"
    fi
}

# wait_for SECONDS CMD...: retry CMD every 0.25 s until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.25
    done
}

has_systemd() { [[ -d /run/systemd/system ]]; }
has_unit() { has_systemd && systemctl cat "$1" >/dev/null 2>&1; }
# proc_running NAME: is a process with this exact command name alive? (no procps needed)
proc_running() { grep -qx -- "$1" /proc/[0-9]*/comm 2>/dev/null; }

# ---------------------------------------------------------------- python choice
PY_VERSION=3.11
venv_ok() {
    [[ -x .venv/bin/python ]] &&
        .venv/bin/python -c "import sys; sys.exit(sys.version_info[:2] != (${PY_VERSION/./, }))" 2>/dev/null
}
DEBIAN_PY=0
if venv_ok; then
    PYTHON=
    grep -Eq '^home *= */usr/bin/?$' .venv/pyvenv.cfg && DEBIAN_PY=1
elif [[ -n ${LABCLOUD_PYTHON:-} ]]; then
    PYTHON=$LABCLOUD_PYTHON
elif command -v "python$PY_VERSION" >/dev/null && "python$PY_VERSION" -c 'import venv, ensurepip' 2>/dev/null; then
    PYTHON=$(command -v "python$PY_VERSION") # e.g. a pyenv build
else
    PYTHON=/usr/bin/python$PY_VERSION # Debian's, installed below
fi
[[ $PYTHON == /usr/bin/* ]] && DEBIAN_PY=1

# -------------------------------------------------------------- system packages
step "system packages"
PKGS=(
    ca-certificates gcc gettext pkg-config
    qemu-system-x86 qemu-utils
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev dnsmasq-base
    libvirt-daemon-config-nwfilter
    iptables
    redis-server
)
# With systemd, Debian's libvirt-daemon-system brings the libvirtd unit, users and qemu.conf.
has_systemd && PKGS+=(libvirt-daemon-system)
# Node: keep whatever node/npm is already there (e.g. NodeSource's nodejs, which
# bundles npm and conflicts with Debian's npm package).
command -v node >/dev/null || PKGS+=(nodejs)
command -v npm >/dev/null || PKGS+=(npm)
((DEBIAN_PY)) && PKGS+=(python3 python3-venv python3-dev)
if ((TEST)); then
    # fonts-wqy-microhei: CJK glyphs, so browser screenshots of the Chinese UI are readable.
    PKGS+=(postgresql chromium fonts-wqy-microhei)
    # Tools to build the offline test guests (ISOs, tiny disks).
    PKGS+=(xorriso isolinux syslinux syslinux-common mtools busybox-static grub-rescue-pc cpio)
    # systemd-analyze checks the units of deploy/systemd/ (installing the package starts nothing without systemd).
    PKGS+=(systemd)
    # openssl: the second test host's TLS certificates (qemu+tls, scripts/second_host/up.sh).
    PKGS+=(openssl)
fi
missing=()
for p in "${PKGS[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    done_ "installing: ${missing[*]} (log: $LOG_DIR/apt.log)"
    export DEBIAN_FRONTEND=noninteractive
    run_logged "$LOG_DIR/apt-update.log" as_root apt-get update
    run_logged "$LOG_DIR/apt.log" as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    done_ "all ${#PKGS[@]} present"
fi
# The sshd of the tests' second libvirt host (scripts/second_host/, run inside its own namespace on
# 127.0.0.1:10022). The package's own service must not start: while apt-get installs it,
# /usr/sbin/policy-rc.d answers 101 ("do not start") to its invoke-rc.d calls, as the devcloud does for
# MariaDB and RabbitMQ (an existing policy-rc.d is moved aside and put back, also on failure). The boot
# links it made are disabled too, so no system sshd on 0.0.0.0:22 appears at the next boot either.
if ((TEST)) && [[ $(dpkg-query -W -f='${db:Status-Abbrev}' openssh-server 2>/dev/null) != ii* ]]; then
    done_ "installing openssh-server, its system service kept stopped (log: $LOG_DIR/apt-sshd.log)"
    POLICY=/usr/sbin/policy-rc.d
    restore_policy() {
        as_root rm -f "$POLICY"
        if [[ -e $POLICY.labcloud-saved ]]; then as_root mv "$POLICY.labcloud-saved" "$POLICY"; fi
    }
    [[ ! -e $POLICY ]] || as_root mv "$POLICY" "$POLICY.labcloud-saved"
    trap restore_policy EXIT
    printf '#!/bin/sh\n# scripts/bootstrap.sh: no service starts during its apt-get install (removed afterwards)\nexit 101\n' |
        as_root tee "$POLICY" >/dev/null
    as_root chmod 755 "$POLICY"
    ((${#missing[@]})) || run_logged "$LOG_DIR/apt-update.log" as_root apt-get update
    run_logged "$LOG_DIR/apt-sshd.log" as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends openssh-server
    restore_policy
    trap - EXIT
    if has_systemd; then
        as_root systemctl disable ssh.service >>"$LOG_DIR/apt-sshd.log" 2>&1 || true
    else
        as_root update-rc.d ssh disable >>"$LOG_DIR/apt-sshd.log" 2>&1 || true
    fi
fi

# ---------------------------------------------------------------------- libvirt
step "libvirtd"
virsh_ok() { timeout 10 virsh -c qemu:///system version >/dev/null 2>&1; }
# (single quotes: expanded by the inner shell)
# shellcheck disable=SC2016
as_root bash -c '
    getent group kvm >/dev/null || groupadd --system kvm
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    id -u libvirt-qemu >/dev/null 2>&1 ||
        useradd --system --gid kvm --home-dir /var/lib/libvirt --no-create-home \
            --shell /usr/sbin/nologin libvirt-qemu
    mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/images
'
# Lab/CI machines of this kind have /dev/kvm mode 0600 root and no systemd:
# QEMU run as libvirt-qemu cannot open it, so libvirt runs QEMU as root there.
# Real deployments (systemd, libvirt-daemon-system) keep Debian's defaults.
QEMU_CONF=/etc/libvirt/qemu.conf
if ! has_systemd && [[ $(stat -c '%a:%U' /dev/kvm 2>/dev/null) == 600:root ]] &&
    ! { grep -Eq '^\s*user\s*=\s*"root"' "$QEMU_CONF" && grep -Eq '^\s*group\s*=\s*"root"' "$QEMU_CONF"; } 2>/dev/null; then
    # shellcheck disable=SC2016
    as_root bash -c '
        conf=$1
        touch "$conf"
        sed -i -E "/^\s*(user|group)\s*=/d" "$conf"
        printf "%s\n" "" \
            "# Added by labcloud scripts/bootstrap.sh: /dev/kvm is 0600 root and there is" \
            "# no systemd on this machine, so QEMU runs as root." \
            "user = \"root\"" "group = \"root\"" >>"$conf"
    ' _ "$QEMU_CONF"
    done_ "set user/group = \"root\" in $QEMU_CONF"
    proc_running libvirtd && warn "libvirtd was already running: restart it to apply $QEMU_CONF"
fi
if virsh_ok; then
    done_ "already answering"
else
    if has_unit libvirtd.service; then
        as_root systemctl start libvirtd.service
    else
        proc_running virtlogd || as_root virtlogd -d
        proc_running libvirtd || as_root libvirtd -d
    fi
    wait_for 20 virsh_ok || die "libvirtd did not answer on qemu:///system within 20 s (see /var/log/libvirt/)"
    done_ "started"
fi
# libvirt's standard network filters (clean-traffic…; the portal's anti-spoofing builds on them):
# the package puts them in /etc/libvirt/nwfilter, which libvirtd reads at its start; a daemon that
# was already running when the package arrived gets them defined now (no restart of running guests).
missing_filters=0
for xml in /usr/share/libvirt/nwfilter/*.xml; do
    [[ -e $xml ]] || continue
    name=$(basename "$xml" .xml)
    timeout 10 virsh -c qemu:///system nwfilter-dumpxml "$name" >/dev/null 2>&1 && continue
    as_root virsh -c qemu:///system nwfilter-define "$xml" >/dev/null || die "cannot define network filter $name ($xml)"
    missing_filters=$((missing_filters + 1))
done
timeout 10 virsh -c qemu:///system nwfilter-dumpxml clean-traffic >/dev/null 2>&1 ||
    die "libvirt has no clean-traffic network filter (package libvirt-daemon-config-nwfilter?)"
if ((missing_filters)); then done_ "defined $missing_filters standard network filters"; else done_ "network filters present"; fi
# Security groups are iptables rules on the guests' bridge ports (docs/networking.md): bridged frames
# must pass through iptables (br_netfilter). The test machines have it on; a host without it gets it
# switched on, or a warning when the kernel has no br_netfilter.
bridge_nf=/proc/sys/net/bridge/bridge-nf-call-iptables
if [[ ! -e $bridge_nf ]] && command -v modprobe >/dev/null; then as_root modprobe br_netfilter 2>/dev/null || true; fi
if [[ -e $bridge_nf ]]; then
    [[ $(cat "$bridge_nf") == 1 ]] || echo 1 | as_root tee "$bridge_nf" >/dev/null || warn "cannot set $bridge_nf to 1"
    done_ "bridged traffic passes iptables (security groups)"
else
    warn "no $bridge_nf (kernel module br_netfilter): security group rules will not apply on this host"
fi
# The local host's storage pool ("default", a folder): libvirt-daemon-system would define it; without
# systemd nobody does, and the portal keeps images and instance disks there.
if timeout 10 virsh -c qemu:///system pool-info default >/dev/null 2>&1; then
    timeout 10 virsh -c qemu:///system pool-start default >/dev/null 2>&1 || true
    done_ "storage pool default present"
else
    as_root mkdir -p /var/lib/libvirt/images
    as_root virsh -c qemu:///system pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
    as_root virsh -c qemu:///system pool-autostart default >/dev/null
    as_root virsh -c qemu:///system pool-start default >/dev/null
    done_ "defined storage pool default (/var/lib/libvirt/images)"
fi

# ------------------------------------------------------------------------ redis
step "redis ($REDIS_URL)"
redis_ok() { [[ $(timeout 5 redis-cli -u "$REDIS_URL" ping 2>/dev/null) == PONG ]]; }
if redis_ok; then
    done_ "already answering"
else
    hostport=${REDIS_URL#*://}
    hostport=${hostport##*@}
    hostport=${hostport%%/*}
    rhost=${hostport%:*} rport=6379
    [[ $hostport == *:* ]] && rport=${hostport##*:}
    [[ $REDIS_URL == redis://* && $rhost =~ ^(127\.0\.0\.1|localhost)$ ]] ||
        die "Redis at $REDIS_URL does not answer, and it is not a local redis:// URL to start"
    if has_unit redis-server.service && [[ $rport == 6379 ]]; then
        as_root systemctl start redis-server.service
    else
        redis-server --daemonize yes --bind 127.0.0.1 --port "$rport" --save '' --appendonly no \
            --dir "$VAR_DIR/redis" --pidfile "$VAR_DIR/redis/redis.pid" --logfile "$LOG_DIR/redis.log"
    fi
    wait_for 20 redis_ok || die "redis did not answer within 20 s (see $LOG_DIR/redis.log)"
    done_ "started"
fi

# ------------------------------------------------------------------- postgresql
if ((TEST)); then
    step "postgresql (127.0.0.1:$PG_PORT, role/db $PG_ROLE)"
    pg_ok() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }
    if pg_ok; then
        done_ "already answering"
    else
        PG_VER=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
        [[ -n $PG_VER ]] || die "no PostgreSQL server installed"
        if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$PG_VER main"; then
            run_logged "$LOG_DIR/pg_createcluster.log" as_root pg_createcluster --port "$PG_PORT" "$PG_VER" main
            done_ "created cluster $PG_VER/main"
        fi
        # Listen on loopback only (Debian's default; made explicit).
        if [[ $(pg_conftool -s "$PG_VER" main show listen_addresses 2>/dev/null || true) != localhost ]]; then
            as_root pg_conftool "$PG_VER" main set listen_addresses localhost
        fi
        as_root pg_ctlcluster "$PG_VER" main start
        wait_for 20 pg_ok || die "PostgreSQL $PG_VER/main did not answer on 127.0.0.1:$PG_PORT within 20 s"
        done_ "started cluster $PG_VER/main"
    fi
    pg_psql() { (cd / && as_root runuser -u postgres -- psql -X -q -At -p "$PG_PORT" -v ON_ERROR_STOP=1 "$@"); }
    pg_psql -c "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
            CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
        ELSE
            ALTER ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
        END IF;
    END \$\$;"
    if [[ $(pg_psql -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") != 1 ]]; then
        pg_psql -c "CREATE DATABASE $PG_DB OWNER $PG_ROLE"
        done_ "created database $PG_DB"
    fi
fi

# The devcloud (scripts/devcloud/, a real OpenStack control plane for the tests marked openstack):
# MariaDB, RabbitMQ (their system services kept stopped) and one venv per OpenStack service, so
# that the test run downloads nothing; it starts nothing. Installs in the background while the
# python, npm and django steps run (which use neither apt nor the user database; the packages
# and users of the steps above are in place by now), and is waited for before the test media
# (which use apt-get download). A re-run only checks the venvs' stamps (well under a second).
DEVCLOUD_JOB=
if ((TEST)); then
    bash scripts/devcloud/up.sh --install-only >"$LOG_DIR/devcloud-install.log" 2>&1 &
    DEVCLOUD_JOB=$!
fi

# ----------------------------------------------------------------------- python
step "python venv (.venv)"
if ! venv_ok; then
    [[ -x $PYTHON ]] || PYTHON=$(command -v "$PYTHON" || true)
    [[ -n $PYTHON ]] || die "python$PY_VERSION not found"
    rm -rf .venv
    "$PYTHON" -m venv .venv
    done_ "created with $PYTHON ($(.venv/bin/python -V))"
fi
REQ=requirements.txt
((TEST)) && REQ=requirements-dev.txt
H_RUN=$(sha256sum <requirements.txt | cut -d' ' -f1)
H_DEV=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
STAMP=.venv/.labcloud-requirements.sha256
# The stamp holds "run <hash>" and, after a --test install, "dev <hash>";
# a dev install satisfies a plain run too.
if grep -qx "dev $H_DEV" "$STAMP" 2>/dev/null || { ((!TEST)) && grep -qx "run $H_RUN" "$STAMP" 2>/dev/null; }; then
    done_ "$REQ up to date"
else
    done_ "pip install -r $REQ (log: $LOG_DIR/pip.log)"
    rm -f "$STAMP"
    run_logged "$LOG_DIR/pip.log" .venv/bin/python -m pip install --disable-pip-version-check -r "$REQ"
    if ((TEST)); then
        printf 'run %s\ndev %s\n' "$H_RUN" "$H_DEV" >"$STAMP"
    else
        printf 'run %s\n' "$H_RUN" >"$STAMP"
    fi
fi

# -------------------------------------------------------------------- front-end
step "front-end assets (npm)"
[[ -f package-lock.json ]] || die "package-lock.json missing (create it with: npm install --package-lock-only)"
H_LOCK=$(sha256sum package-lock.json | cut -d' ' -f1)
NPM_STAMP=node_modules/.labcloud-lock.sha256
if [[ $(cat "$NPM_STAMP" 2>/dev/null) == "$H_LOCK" ]]; then
    done_ "node_modules up to date"
else
    done_ "npm ci (log: $LOG_DIR/npm.log)"
    run_logged "$LOG_DIR/npm.log" npm ci --no-audit --no-fund
    echo "$H_LOCK" >"$NPM_STAMP"
fi
bash scripts/vendor_assets.sh

# ----------------------------------------------------------------------- django
step "django"
DJ=(.venv/bin/python manage.py)
# Compile translations when a .po has no .mo or is newer than it.
stale_po=0
while IFS= read -r po; do
    [[ ${po%.po}.mo -nt $po ]] || stale_po=1
done < <(find . \( -path ./.venv -o -path ./node_modules -o -path ./var -o -path ./static/vendor -o -path ./.git \) -prune -o -path '*/locale/*.po' -print)
if ((stale_po)); then
    "${DJ[@]}" compilemessages --ignore=.venv --ignore=node_modules --ignore=var -v 0
    done_ "compiled translations"
fi
"${DJ[@]}" migrate --noinput -v 0
done_ "migrated"
"${DJ[@]}" collectstatic --noinput -v 0
done_ "collected static files"
if ((!TEST)); then
    "${DJ[@]}" seed_portal
fi

if [[ -n $DEVCLOUD_JOB ]]; then
    step "devcloud: Debian packages and venvs (scripts/devcloud/up.sh --install-only)"
    if ! wait "$DEVCLOUD_JOB"; then
        tail -n 30 "$LOG_DIR/devcloud-install.log" >&2
        die "devcloud install failed (full log: $LOG_DIR/devcloud-install.log)"
    fi
    grep -E '^\[' "$LOG_DIR/devcloud-install.log" | grep -v '] start$' | sed -E 's/^\[ *([0-9.]+)s\] (.*)/\2 (at \1 s)/' | while IFS= read -r l; do done_ "$l"; done
fi

# Tiny test guests (kernel + busybox disk, installer ISO, GRUB rescue ISO), built offline and cached.
if ((TEST)); then
    bash scripts/build_test_media.sh
fi

say "bootstrap$( ((TEST)) && echo ' --test') done in $((SECONDS - T0)) s"
