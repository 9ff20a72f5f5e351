#!/bin/bash
# Start the devcloud: a minimal real OpenStack control plane on 127.0.0.1 for the test suite.
#   Keystone, Glance, Placement, Nova (fake compute driver) and a real neutron-server (ML2, no agents),
#   all from PyPI pinned by constraints/, on a private MariaDB + RabbitMQ (Debian packages).
# Usage: scripts/devcloud/up.sh          install what is missing, start, wait until healthy
#        DEVCLOUD_INSTALLER=pip ...      use pip instead of uv (uv itself comes from PyPI)
# Idempotent: when everything is already running it only checks health. Venvs are reused while their
# pins are unchanged (stamp file), databases and keys while var/devcloud/ is kept (reset.sh wipes them).
# Writes var/devcloud/clouds.yaml (cloud "devcloud-admin"). Stop with down.sh.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T0=$(date +%s.%N)
el() { printf '%6.1f' "$(echo "$(date +%s.%N) - $T0" | bc)"; }
log() { echo "[$(el)s] $*" | tee -a "$LOGS/up.timing"; }
: >"$LOGS/up.timing"
cd "$DC"
# on failure: stop the background installs and whatever this run started (keep state for a retry)
on_exit() {
    local rc=$?
    [[ $rc -eq 0 ]] && return
    # shellcheck disable=SC2046
    kill $(jobs -p) 2>/dev/null
    [[ -n ${DEVCLOUD_KEEP_ON_FAILURE:-} ]] || "$HERE/down.sh"
    echo "devcloud up FAILED (rc=$rc); logs in $LOGS" >&2
}
trap on_exit EXIT

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
for p in 5000 9292 8778 8774 9696 16080 $DBPORT $MQPORT $MQDISTPORT $EPMDPORT; do
    port_free "$p" || { echo "port 127.0.0.1:$p is taken by a process this harness did not start" >&2; exit 1; }
done

# ---------- 1. packages: Debian (MariaDB, RabbitMQ, qemu-img) and one venv per service ----------
log "start"
need_apt=()
[[ -x /usr/sbin/mariadbd ]] || need_apt+=(mariadb-server)
[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || need_apt+=(rabbitmq-server)
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
command -v bc >/dev/null || need_apt+=(bc)
command -v curl >/dev/null || need_apt+=(curl)
command -v ss >/dev/null || need_apt+=(iproute2)
command -v pgrep >/dev/null || need_apt+=(procps)
if [[ ${#need_apt[@]} -gt 0 ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "missing Debian packages: ${need_apt[*]} (run as root or apt-get install them)" >&2; exit 1; }
    # packages only: a policy-rc.d that refuses service starts keeps the system MariaDB/RabbitMQ stopped
    made_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confold "${need_apt[@]}") >"$LOGS/apt.log" 2>&1
    [[ -z $made_policy ]] || rm -f /usr/sbin/policy-rc.d
    log "apt: ${need_apt[*]} installed"
fi

INSTALLER=${DEVCLOUD_INSTALLER:-uv}
export UV_CACHE_DIR="$DC/cache/uv" PIP_CACHE_DIR="$DC/cache/pip"
if [[ $INSTALLER == uv && ! -x $DC/uvtool/bin/uv ]]; then
    rm -rf "$DC/uvtool"
    /usr/bin/python3 -m venv "$DC/uvtool" && "$DC/uvtool/bin/pip" install -q uv >"$LOGS/uv-install.log" 2>&1
fi
# mkvenv NAME REQUIREMENT...: (re)build venv-NAME unless its stamp matches constraints/NAME.txt + requirements
mkvenv() {
    local n=$1 v="$DC/venv-$1"
    shift
    local want
    want="$(cat "$HERE/constraints/$n.txt") $* $(/usr/bin/python3 -V)"
    local r
    for r in "$@"; do [[ ! -d $r ]] || want+=$(find "$r" -maxdepth 1 -type f -exec cat {} +); done # local package
    want=$(echo "$want" | sha256sum | cut -d' ' -f1)
    if [[ -f $v/.devcloud-stamp && $(cat "$v/.devcloud-stamp") == "$want" ]]; then
        echo "venv $n: cached"
        return 0
    fi
    local s
    s=$(date +%s.%N)
    rm -rf "$v"
    if [[ $INSTALLER == uv ]]; then
        "$DC/uvtool/bin/uv" venv -q -p /usr/bin/python3 "$v" &&
            VIRTUAL_ENV=$v "$DC/uvtool/bin/uv" pip install -q --refresh-package devcloud-ml2 -c "$HERE/constraints/$n.txt" "$@" >"$LOGS/pip-$n.log" 2>&1
    else
        /usr/bin/python3 -m venv "$v" && "$v/bin/pip" install -q -c "$HERE/constraints/$n.txt" "$@" >"$LOGS/pip-$n.log" 2>&1
    fi || { echo "venv $n: install failed, see $LOGS/pip-$n.log" >&2; return 1; }
    echo "$want" >"$v/.devcloud-stamp"
    echo "venv $n: installed in $(echo "$(date +%s.%N) - $s" | bc) s"
}
# the venvs install in parallel while MariaDB and RabbitMQ start
COMMON=(gunicorn PyMySQL)
rm -f "$RUN"/venv-*.rc
venv() { # venv NAME REQ...: mkvenv in the background; its exit code lands in run/venv-NAME.rc
    (
        rc=0
        mkvenv "$@" >"$LOGS/venv-$1.out" 2>&1 || rc=$?
        echo $rc >"$RUN/venv-$1.rc"
    ) &
}
venv keystone keystone==30.0.0 openstacksdk==4.22.0 pyyaml "${COMMON[@]}"
venv glance glance==33.0.0 "${COMMON[@]}"
venv placement openstack-placement==16.0.0 "${COMMON[@]}"
venv nova nova==34.0.0 "${COMMON[@]}"
# the local ML2 driver builds from a copy: setuptools writes build/ and *.egg-info next to the sources
rm -rf "$DC/src" && mkdir -p "$DC/src" && cp -r "$HERE/devcloud_ml2" "$DC/src/"
venv neutron neutron==29.0.0 "$DC/src/devcloud_ml2" "${COMMON[@]}"

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
for s in conductor scheduler compute; do
    start_daemon "nova-$s" "$DC/venv-nova/bin/nova-$s" "${NC[@]}" --log-file "$LOGS/nova-$s.log"
done
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
