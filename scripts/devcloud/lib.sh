# Shared helpers of the devcloud harness (sourced by up.sh, down.sh, reset.sh, rss.sh).
# shellcheck shell=bash
# Everything lives under var/devcloud (git-ignored): venvs, rendered configs, state, logs, PID files.

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DC="${DEVCLOUD_DIR:-$ROOT/var/devcloud}"
RUN="$DC/run"     # one NAME.pid per process the harness started
LOGS="$DC/logs"
# Private MariaDB / RabbitMQ / epmd ports (not the system defaults, so a system instance is never touched).
DBPORT=33306
MQPORT=45672
MQDISTPORT=45673 # rabbitmqctl uses 45680-45690 (set in rabbit_env)
EPMDPORT=34369
# The VNC server the fake compute's consoles point at (a QEMU without a machine: it speaks RFB).
VNCPORT=16081
# Stop order (reverse of start); down.sh stops each by its recorded PID and that PID's descendants.
ALL_SERVICES="vnc nova-novncproxy nova-api nova-compute nova-scheduler nova-conductor neutron placement glance
keystone rabbitmq epmd mariadb"
mkdir -p "$RUN" "$LOGS"

export PYTHONWARNINGS=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# The private RabbitMQ node's environment (server and rabbitmqctl alike).
rabbit_env() {
    export HOME="$DC/rabbitmq" RABBITMQ_CONF_ENV_FILE="$DC/etc/rabbitmq-env.conf" \
        RABBITMQ_CONFIG_FILE="$DC/etc/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$DC/etc/advanced.config" \
        RABBITMQ_MNESIA_BASE="$DC/rabbitmq/mnesia" RABBITMQ_LOG_BASE="$LOGS/rabbitmq" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$DC/rabbitmq/enabled_plugins" RABBITMQ_PID_FILE="$DC/rabbitmq/beam.pid" \
        RABBITMQ_NODENAME=devcloud@localhost \
        RABBITMQ_DIST_PORT=$MQDISTPORT RABBITMQ_CTL_DIST_PORT_MIN=45680 RABBITMQ_CTL_DIST_PORT_MAX=45690 ERL_EPMD_PORT=$EPMDPORT ERL_EPMD_ADDRESS=127.0.0.1
}
rabbitmqctl_() { (rabbit_env && /usr/lib/rabbitmq/bin/rabbitmqctl "$@"); }

# ours PID: PID runs in var/devcloud (up.sh starts everything from there; MariaDB moves into its datadir),
# so a stale PID file can never make down.sh signal an unrelated process that got the same PID.
ours() {
    local cwd
    cwd=$(readlink "/proc/$1/cwd" 2>/dev/null) || return 1
    [[ $cwd == "$DC" || $cwd == "$DC"/* ]]
}
# pid_alive NAME: the recorded process is running (and is ours).
pid_alive() { [[ -f $RUN/$1.pid ]] && ours "$(cat "$RUN/$1.pid")"; }

# start_daemon NAME CMD...: run CMD detached (own session), stdout+stderr to logs/NAME.out, record its PID.
start_daemon() {
    local name=$1
    shift
    (cd "$DC" && exec setsid "$@" </dev/null >"$LOGS/$name.out" 2>&1) &
    echo $! >"$RUN/$name.pid"
}

# start_wsgi NAME VENV PORT MODULE:APP: one gunicorn (1 worker, 4 threads) on 127.0.0.1:PORT.
start_wsgi() {
    local name=$1 venv=$2 port=$3 app=$4
    start_daemon "$name" "$DC/$venv/bin/gunicorn" --bind "127.0.0.1:$port" --workers 1 --threads 4 \
        --worker-class gthread --timeout 300 --no-control-socket --pythonpath "$HERE/wsgi" "$app"
}

# wait_http URL [NAME]: until URL answers at all (any HTTP status); fails early if process NAME died.
wait_http() {
    local t=180 i=0
    until curl -s -o /dev/null -m 5 "$1"; do
        [[ -z ${2:-} ]] || pid_alive "$2" || { echo "$2 died, see $LOGS/$2.out" >&2; return 1; }
        sleep 1
        i=$((i + 1))
        [[ $i -lt $t ]] || { echo "timeout waiting for $1" >&2; return 1; }
    done
}

# port_free PORT: nothing listens on 127.0.0.1:PORT (or on all addresses).
port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
