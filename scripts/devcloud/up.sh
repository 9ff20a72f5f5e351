#!/bin/bash
# Start the devcloud: a minimal real OpenStack control plane on 127.0.0.1 for the test suite.
#   Keystone, Glance, Placement, Nova (fake compute driver) and a real neutron-server (ML2, no agents),
#   all from PyPI pinned by constraints/, on a private MariaDB + RabbitMQ (Debian packages).
# Usage: scripts/devcloud/up.sh                 install what is missing, start, wait until healthy
#        scripts/devcloud/up.sh --install-only  only install (Debian packages, uv, the five venvs); start
#                                               nothing (scripts/bootstrap.sh --test runs this)
#        DEVCLOUD_INSTALLER=pip ...             use pip instead of uv (uv itself comes from PyPI)
# Idempotent: when everything is already running it only checks health. Venvs are reused while their
# pins are unchanged (stamp file), databases and keys while var/devcloud/ is kept (reset.sh wipes them).
# Writes var/devcloud/clouds.yaml (cloud "devcloud-admin"). Stop with down.sh.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
INSTALL_ONLY=0
case ${1:-} in
--install-only) INSTALL_ONLY=1 ;;
"") ;;
*)
    sed -n '5,8p' "$0" >&2
    exit 2
    ;;
esac
T0=$(date +%s.%N)
el() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1f", b - a }'; } # awk: bc may not be there yet
TIMING=$LOGS/up.timing
((INSTALL_ONLY)) && TIMING=$LOGS/install.timing
log() { echo "[$(el)s] $*" | tee -a "$TIMING"; }
: >"$TIMING"
cd "$DC"
SUDO=()
[[ $(id -u) -eq 0 ]] || SUDO=(sudo)
# While apt-get installs MariaDB and RabbitMQ, /usr/sbin/policy-rc.d answers 101 ("do not start") to the
# packages' invoke-rc.d calls: their system services (MariaDB on 3306, RabbitMQ on 0.0.0.0:5672 with epmd
# on 0.0.0.0:4369) never start. A policy-rc.d that already denies is kept; any other is moved aside and
# put back afterwards (also on failure or interrupt, from on_exit).
POLICY=/usr/sbin/policy-rc.d
POLICY_MADE= POLICY_SAVED=
deny_service_starts() {
    if [[ -e $POLICY ]]; then
        local a=0 b=0
        "$POLICY" mariadb start >/dev/null 2>&1 || a=$?
        "$POLICY" rabbitmq-server start >/dev/null 2>&1 || b=$?
        [[ $a == 101 && $b == 101 ]] && return 0
        "${SUDO[@]}" mv "$POLICY" "$POLICY.devcloud-saved" && POLICY_SAVED=1
    fi
    printf '#!/bin/sh\n# scripts/devcloud/up.sh: no service starts during its apt-get install (removed afterwards)\nexit 101\n' |
        "${SUDO[@]}" tee "$POLICY" >/dev/null
    POLICY_MADE=1
    "${SUDO[@]}" chmod 755 "$POLICY"
}
restore_policy() {
    [[ -z $POLICY_MADE ]] || "${SUDO[@]}" rm -f "$POLICY"
    [[ -z $POLICY_SAVED ]] || "${SUDO[@]}" mv "$POLICY.devcloud-saved" "$POLICY"
    POLICY_MADE= POLICY_SAVED=
}
# on failure: stop the background installs and whatever this run started (keep state for a retry)
on_exit() {
    local rc=$?
    restore_policy
    [[ $rc -eq 0 ]] && return
    # shellcheck disable=SC2046
    kill $(jobs -p) 2>/dev/null
    if ((INSTALL_ONLY)); then
        echo "devcloud install FAILED (rc=$rc); logs in $LOGS" >&2
        return
    fi
    [[ -n ${DEVCLOUD_KEEP_ON_FAILURE:-} ]] || "$HERE/down.sh"
    echo "devcloud up FAILED (rc=$rc); logs in $LOGS" >&2
}
trap on_exit EXIT

if ((!INSTALL_ONLY)); then
    healthy() {
        local s
        for s in $ALL_SERVICES; do pid_alive "$s" || return 1; done
        for u in 5000/v3 9292/ 8778/ 8774/ 9696/; do curl -sf -o /dev/null -m 5 "http://127.0.0.1:$u" || return 1; done
    }
    if healthy && "$DC/venv-keystone/bin/python" "$HERE/wait_ready.py" "$DC/clouds.yaml" 60 >"$LOGS/up-ready.out" 2>&1; then
        log "devcloud already up"
        exit 0
    fi
    # partly running (crash, interrupted start): stop what is left, keep state, start again
    for s in $ALL_SERVICES; do
        if pid_alive "$s"; then
            log "stopping leftovers of an earlier start"
            "$HERE/down.sh"
            break
        fi
    done
    for p in 5000 9292 8778 8774 9696 16080 $VNCPORT $DBPORT $MQPORT $MQDISTPORT $EPMDPORT; do
        port_free "$p" || { echo "port 127.0.0.1:$p is taken by a process this harness did not start" >&2; exit 1; }
    done
    # this run starts the devcloud: a fixture's mark from an earlier session no longer applies
    rm -f "$RUN/started-by-fixture"
fi

# ---------- 1. packages: Debian (MariaDB, RabbitMQ, qemu-img) and one venv per service ----------
log "start"
need_apt=()
[[ -x /usr/sbin/mariadbd ]] || need_apt+=(mariadb-server)
[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || need_apt+=(rabbitmq-server)
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
command -v bc >/dev/null || need_apt+=(bc)
command -v curl >/dev/null || need_apt+=(curl)
command -v ss >/dev/null || need_apt+=(iproute2)
command -v pgrep >/dev/null || need_apt+=(procps)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
if [[ ${#need_apt[@]} -gt 0 ]]; then
    [[ $(id -u) -eq 0 ]] || command -v sudo >/dev/null ||
        { echo "missing Debian packages: ${need_apt[*]} (run as root or apt-get install them)" >&2; exit 1; }
    # the system services' default ports, to tell afterwards whether the install started anything
    sysports() {
        ! command -v ss >/dev/null ||
            ss -Hltn '( sport = :3306 or sport = :5672 or sport = :4369 or sport = :25672 )' | awk '{ print $4 }' | sort
    }
    before=$(sysports)
    deny_service_starts
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$LOGS/apt.log" 2>&1 &&
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confold "${need_apt[@]}" >>"$LOGS/apt.log" 2>&1 ||
        { tail -n 20 "$LOGS/apt.log" >&2; echo "apt-get install ${need_apt[*]} failed, see $LOGS/apt.log" >&2; exit 1; }
    restore_policy
    log "apt: ${need_apt[*]} installed (system services kept stopped)"
    after=$(sysports)
    [[ $after == "$before" ]] || echo "WARNING: something now listens on a system MariaDB/RabbitMQ/epmd port" \
        "(this harness does not stop processes it did not start):"$'\n'"$after" | tee -a "$TIMING" >&2
fi

INSTALLER=${DEVCLOUD_INSTALLER:-uv}
UV_VERSION=0.13.9 # the installer itself is pinned too
export UV_CACHE_DIR="$DC/cache/uv" PIP_CACHE_DIR="$DC/cache/pip"
if [[ $INSTALLER == uv && $("$DC/uvtool/bin/uv" --version 2>/dev/null) != "uv $UV_VERSION"* ]]; then
    rm -rf "$DC/uvtool"
    { /usr/bin/python3 -m venv "$DC/uvtool" && "$DC/uvtool/bin/pip" install -q "uv==$UV_VERSION"; } >"$LOGS/uv-install.log" 2>&1 ||
        { echo "installing uv failed, see $LOGS/uv-install.log" >&2; exit 1; }
    log "uv $UV_VERSION installed"
fi
# venv_want NAME REQUIREMENT...: the stamp venv-NAME must carry (constraints/NAME.txt + requirements + Python)
venv_want() {
    local n=$1
    shift
    local want r
    want="$(cat "$HERE/constraints/$n.txt") $* $(/usr/bin/python3 -V)"
    for r in "$@"; do [[ ! -d $r ]] || want+=$(find "$r" -maxdepth 1 -type f -exec cat {} +); done # local package
    echo "$want" | sha256sum | cut -d' ' -f1
}
venv_fresh() { [[ -f $DC/venv-$1/.devcloud-stamp && $(cat "$DC/venv-$1/.devcloud-stamp") == "$(venv_want "$@")" ]]; }
# mkvenv NAME REQUIREMENT...: (re)build venv-NAME unless its stamp is current
mkvenv() {
    local n=$1 v="$DC/venv-$1"
    if venv_fresh "$@"; then
        echo "venv $n: cached"
        return 0
    fi
    local want s
    want=$(venv_want "$@")
    shift
    s=$(date +%s.%N)
    rm -rf "$v"
    if [[ $INSTALLER == uv ]]; then
        "$DC/uvtool/bin/uv" venv -q -p /usr/bin/python3 "$v" &&
            VIRTUAL_ENV=$v "$DC/uvtool/bin/uv" pip install -q --refresh-package devcloud-ml2 -c "$HERE/constraints/$n.txt" "$@" >"$LOGS/pip-$n.log" 2>&1
    else
        /usr/bin/python3 -m venv "$v" && "$v/bin/pip" install -q -c "$HERE/constraints/$n.txt" "$@" >"$LOGS/pip-$n.log" 2>&1
    fi || { echo "venv $n: install failed, see $LOGS/pip-$n.log" >&2; return 1; }
    echo "$want" >"$v/.devcloud-stamp"
    echo "venv $n: installed in $(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
}
# each_venv CMD: CMD NAME REQUIREMENT... for each service's venv
COMMON=(gunicorn PyMySQL)
each_venv() {
    "$@" keystone keystone==30.0.0 openstacksdk==4.22.0 pyyaml "${COMMON[@]}"
    "$@" glance glance==33.0.0 "${COMMON[@]}"
    "$@" placement openstack-placement==16.0.0 "${COMMON[@]}"
    "$@" nova nova==34.0.0 "${COMMON[@]}"
    "$@" neutron neutron==29.0.0 "$DC/src/devcloud_ml2" "${COMMON[@]}"
}
# the local ML2 driver builds from a copy: setuptools writes build/ and *.egg-info next to the sources
rm -rf "$DC/src" && mkdir -p "$DC/src" && cp -r "$HERE/devcloud_ml2" "$DC/src/"
if ((INSTALL_ONLY)); then
    # a running devcloud keeps running unless one of its venvs is about to be replaced
    stale=()
    note_stale() { venv_fresh "$@" || stale+=("$1"); }
    each_venv note_stale
    if [[ ${#stale[@]} -gt 0 ]]; then
        for s in $ALL_SERVICES; do
            if pid_alive "$s"; then
                log "stopping the running devcloud: venv ${stale[*]} must be rebuilt"
                "$HERE/down.sh"
                break
            fi
        done
    fi
fi
# the venvs install in parallel (while MariaDB and RabbitMQ start, unless --install-only)
rm -f "$RUN"/venv-*.rc
venv() { # venv NAME REQ...: mkvenv in the background; its exit code lands in run/venv-NAME.rc
    (
        rc=0
        mkvenv "$@" >"$LOGS/venv-$1.out" 2>&1 || rc=$?
        echo $rc >"$RUN/venv-$1.rc"
    ) &
}
each_venv venv
if ((INSTALL_ONLY)); then
    wait
    fail=0
    for n in keystone glance placement nova neutron; do
        if [[ $(cat "$RUN/venv-$n.rc" 2>/dev/null) == 0 ]]; then
            log "$(cat "$LOGS/venv-$n.out")"
        else
            echo "venv $n failed: $(cat "$LOGS/venv-$n.out" 2>/dev/null)" >&2
            fail=1
        fi
    done
    rm -f "$RUN"/venv-*.rc
    [[ $fail -eq 0 ]] || exit 1
    log "devcloud installed (nothing started)"
    exit 0
fi

# ---------- 2. configs rendered into var/devcloud/etc ----------
mkdir -p etc keystone/fernet-keys keystone/credential-keys glance/images glance/staging glance/tasks \
    nova/state nova/instances nova/lock neutron/lock novnc mysql rabbitmq/mnesia state
for f in "$HERE"/etc/*; do
    sed -e "s#@DC@#$DC#g" -e "s#@DBPORT@#$DBPORT#g" -e "s#@MQPORT@#$MQPORT#g" "$f" >"etc/$(basename "$f")"
done
echo '# devcloud: all settings come from the environment (lib.sh rabbit_env)' >etc/rabbitmq-env.conf
echo '[].' >rabbitmq/enabled_plugins
echo '<html>noVNC placeholder</html>' >novnc/vnc_auto.html
cp etc/clouds.yaml clouds.yaml

# ---------- 3. MariaDB and RabbitMQ, private instances ----------
start_mariadb() {
    if [[ ! -d mysql/data/mysql ]]; then
        mariadb-install-db --defaults-file="$DC/etc/my.cnf" --auth-root-authentication-method=socket \
            --skip-test-db >"$LOGS/mariadb-install.log" 2>&1
    fi
    start_daemon mariadb /usr/sbin/mariadbd --defaults-file="$DC/etc/my.cnf"
    local i
    for i in $(seq 1 120); do
        mariadb --defaults-file="$DC/etc/my.cnf" -e 'select 1' >/dev/null 2>&1 && break
        sleep 0.5
    done
    for db in keystone glance placement neutron nova_api nova_cell0 nova_cell1; do
        mariadb --defaults-file="$DC/etc/my.cnf" -e \
            "CREATE DATABASE IF NOT EXISTS $db; GRANT ALL ON $db.* TO 'os'@'127.0.0.1' IDENTIFIED BY 'os';"
    done
}
start_rabbitmq() {
    start_daemon epmd /usr/bin/epmd -address 127.0.0.1 -port $EPMDPORT
    (rabbit_env && start_daemon rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server)
    local i
    for i in $(seq 1 120); do
        pid_alive rabbitmq || return 1
        rabbitmqctl_ -q await_startup --timeout 5 >/dev/null 2>&1 && break
        sleep 1
    done
    rabbitmqctl_ -q status >/dev/null
    rabbitmqctl_ -q list_users | grep -q '^devcloud' ||
        { rabbitmqctl_ -q add_user devcloud devcloud && rabbitmqctl_ -q set_permissions devcloud '.*' '.*' '.*'; }
}
start_mariadb >"$LOGS/start-mariadb.out" 2>&1 & M=$!
start_rabbitmq >"$LOGS/start-rabbitmq.out" 2>&1 & Q=$!
wait $M || { echo "mariadb failed: $LOGS/start-mariadb.out $LOGS/mariadb.err" >&2; exit 1; }
log "mariadb up"
wait $Q || { echo "rabbitmq failed: $LOGS/start-rabbitmq.out" >&2; exit 1; }
log "rabbitmq up"

# ---------- 4. each service as soon as its venv is ready ----------
# synced NAME: the schema was already migrated with the current pins (skip the slow db syncs on a warm start)
synced() { [[ -f state/$1.synced && $(cat "state/$1.synced") == $(cat "$DC/venv-$1/.devcloud-stamp") ]]; }
mark_synced() { cp "$DC/venv-$1/.devcloud-stamp" "state/$1.synced"; }
keystone_up() {
    local KM="$DC/venv-keystone/bin/keystone-manage --config-file $DC/etc/keystone.conf"
    if ! synced keystone; then
        $KM db_sync
        [[ -f keystone/fernet-keys/0 ]] || $KM fernet_setup --keystone-user root --keystone-group root
        [[ -f keystone/credential-keys/0 ]] || $KM credential_setup --keystone-user root --keystone-group root
        $KM bootstrap --bootstrap-password admin --bootstrap-region-id RegionOne \
            --bootstrap-admin-url http://127.0.0.1:5000/v3/ --bootstrap-internal-url http://127.0.0.1:5000/v3/ \
            --bootstrap-public-url http://127.0.0.1:5000/v3/
    fi
    OS_KEYSTONE_CONFIG_FILES="$DC/etc/keystone.conf" start_wsgi keystone venv-keystone 5000 keystone_app:application
    wait_http http://127.0.0.1:5000/v3 keystone
    if ! synced keystone; then
        "$DC/venv-keystone/bin/python" "$HERE/register.py" "$DC/clouds.yaml"
        mark_synced keystone
    fi
}
glance_up() {
    synced glance || { OS_GLANCE_CONFIG_DIR="$DC/etc" "$DC/venv-glance/bin/glance-manage" \
        --config-file "$DC/etc/glance-api.conf" db_sync && mark_synced glance; }
    OS_GLANCE_CONFIG_DIR="$DC/etc" start_wsgi glance venv-glance 9292 glance.wsgi.api:application
    wait_http http://127.0.0.1:9292/ glance
}
placement_up() {
    synced placement || { "$DC/venv-placement/bin/placement-manage" --config-file "$DC/etc/placement.conf" \
        db sync && mark_synced placement; }
    OS_PLACEMENT_CONFIG_DIR="$DC/etc" start_wsgi placement venv-placement 8778 placement.wsgi.api:application
    wait_http http://127.0.0.1:8778/ placement
}
neutron_up() {
    synced neutron || { "$DC/venv-neutron/bin/neutron-db-manage" --config-file "$DC/etc/neutron.conf" \
        upgrade heads && mark_synced neutron; }
    OS_NEUTRON_CONFIG_DIR="$DC/etc" OS_NEUTRON_CONFIG_FILES=neutron.conf \
        start_wsgi neutron venv-neutron 9696 neutron_app:application
    wait_http http://127.0.0.1:9696/ neutron
}
nova_db() {
    synced nova && return 0
    local NM="$DC/venv-nova/bin/nova-manage --config-file $DC/etc/nova.conf"
    $NM api_db sync
    $NM cell_v2 map_cell0 --database_connection "mysql+pymysql://os:os@127.0.0.1:$DBPORT/nova_cell0?charset=utf8"
    $NM cell_v2 create_cell --name cell1 --verbose || [[ $? -eq 2 ]] # 2: exists already
    $NM db sync
    mark_synced nova
}
step() { # step NAME FUNCTION: wait for venv-NAME, then run FUNCTION, logging to logs/up-NAME.out
    local name=$1 fn=$2
    until [[ -f $RUN/venv-$name.rc ]]; do sleep 0.5; done
    [[ $(cat "$RUN/venv-$name.rc") == 0 ]] || { echo "venv $name failed: $(cat "$LOGS/venv-$name.out")" >&2; return 1; }
    log "$(cat "$LOGS/venv-$name.out")"
    $fn >"$LOGS/up-$name.out" 2>&1 || { echo "$name failed, see $LOGS/up-$name.out" >&2; return 1; }
    log "$name up"
}
step keystone keystone_up & K=$!
step glance glance_up & G=$!
step placement placement_up & P=$!
step neutron neutron_up & N=$!
step nova nova_db || exit 1
fail=0
wait $K || fail=1
wait $P || fail=1
[[ $fail -eq 0 ]] || exit 1 # compute needs Keystone users and Placement before it starts
NC=(--config-file "$DC/etc/nova.conf")
for s in conductor scheduler; do
    start_daemon "nova-$s" "$DC/venv-nova/bin/nova-$s" "${NC[@]}" --log-file "$LOGS/nova-$s.log"
done
# the consoles of the fake compute point at this VNC server on 127.0.0.1 (compute/devcloud_compute.py)
start_daemon vnc qemu-system-x86_64 -machine none -nodefaults -display none -vnc "127.0.0.1:$((VNCPORT - 5900))"
# Nova loads compute drivers from its nova.virt package only: the module goes in there
virt_dir=$("$DC/venv-nova/bin/python" -c 'import nova.virt, os; print(os.path.dirname(nova.virt.__file__))') &&
    [[ -d $virt_dir ]] || { echo "nova.virt not found in venv-nova" >&2; exit 1; }
cp "$HERE/compute/devcloud_compute.py" "$virt_dir/"
for _ in $(seq 1 40); do
    port_free "$VNCPORT" || break
    pid_alive vnc || { echo "the VNC server died, see $LOGS/vnc.out" >&2; exit 1; }
    sleep 0.25
done
port_free "$VNCPORT" && { echo "the VNC server does not listen on 127.0.0.1:$VNCPORT" >&2; exit 1; }
start_daemon nova-compute env DEVCLOUD_VNC_PORT=$VNCPORT \
    "$DC/venv-nova/bin/nova-compute" "${NC[@]}" --log-file "$LOGS/nova-compute.log"
start_daemon nova-novncproxy "$DC/venv-nova/bin/nova-novncproxy" "${NC[@]}" \
    --log-file "$LOGS/nova-novncproxy.log" --web "$DC/novnc"
OS_NOVA_CONFIG_DIR="$DC/etc" start_wsgi nova-api venv-nova 8774 nova_api_app:application
wait_http http://127.0.0.1:8774/ nova-api
log "nova started"
wait $G || fail=1
wait $N || fail=1
[[ $fail -eq 0 ]] || exit 1

# ---------- 5. the compute host mapped into cell1 ----------
NM="$DC/venv-nova/bin/nova-manage --config-file $DC/etc/nova.conf"
mapped() { [[ $($NM cell_v2 list_hosts 2>/dev/null) == *devcloud-compute* ]]; } # no pipe: SIGPIPE + pipefail
for _ in $(seq 1 90); do
    mapped && break
    $NM cell_v2 discover_hosts >/dev/null 2>&1 || true
    sleep 2
done
mapped || { echo "compute host not discovered" >&2; exit 1; }
log "compute host mapped into cell1"
"$DC/venv-keystone/bin/python" "$HERE/wait_ready.py" "$DC/clouds.yaml" >"$LOGS/up-ready.out" 2>&1 ||
    { cat "$LOGS/up-ready.out" >&2; exit 1; }
log "devcloud UP: compute reports up, clouds.yaml in $DC/clouds.yaml (cloud devcloud-admin)"
