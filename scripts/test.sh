#!/usr/bin/env bash
# Run every check, in order, with the project venv:
#   ruff check, ruff format --check, makemigrations --check,
#   pytest on SQLite (DATABASE_URL unset), pytest on PostgreSQL.
# The devcloud (scripts/devcloud/, a real OpenStack control plane on 127.0.0.1) starts in the
# background while ruff and makemigrations run, if any selected test is marked `openstack`; the
# SQLite pass uses it, and it is stopped after that pass if this script started it. The
# PostgreSQL pass deselects the `openstack` tests (like the real-guest tests, they do not depend
# on database locking and already ran on SQLite).
# Every step runs even if an earlier one failed; the exit status is non-zero
# if any failed. Extra arguments go to both pytest runs:
#   scripts/test.sh -k vms -x
# Expects `scripts/bootstrap.sh --test` to have run (make test does that).
set -uo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT" || exit 1
load_env "$ROOT/.env"

PG_URL=postgres://labcloud:labcloud@127.0.0.1:5432/labcloud
PY=.venv/bin/python
[[ -x $PY ]] || die ".venv missing: run scripts/bootstrap.sh --test first"
LOG_DIR=${LABCLOUD_VAR_DIR:-$ROOT/var}/log
mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR"/pytest-{sqlite,postgresql}.log "$LOG_DIR"/devcloud-up.log

COLOR=()
[[ -t 1 ]] && COLOR=(--color=yes)

results=()
failed=0
T0=$SECONDS

# step NAME CMD...: run CMD, record "ok"/"FAILED" with its duration.
step() {
    local name=$1 t=$SECONDS rc=0
    shift
    say "$name"
    "$@" || rc=$?
    if ((rc == 0)); then
        results+=("ok      $name ($((SECONDS - t)) s)")
    else
        results+=("FAILED  $name (exit $rc, $((SECONDS - t)) s)")
        failed=$((failed + 1))
    fi
}

# pytest_on LABEL DATABASE_URL|"" ARGS...: pytest, keeping its closing line for the summary.
pytest_on() {
    local label=$1 url=$2 log=$LOG_DIR/pytest-$1.log rc
    shift 2
    if [[ -n $url ]]; then
        DATABASE_URL=$url "$PY" -m pytest "${COLOR[@]}" "$@" 2>&1 | tee "$log"
    else
        env -u DATABASE_URL "$PY" -m pytest "${COLOR[@]}" "$@" 2>&1 | tee "$log"
    fi
    rc=${PIPESTATUS[0]}
    printf -v "PYTEST_RC_$label" %s "$rc"
    # pytest exits 5 when it collected no test: that is a failure here too.
    ((rc == 5)) && echo "pytest collected no tests" >&2
    return "$rc"
}
PYTEST_RC_sqlite=
# pytest_postgresql ARGS...: the PostgreSQL pass. Nothing left to run there (rc 5) is fine when the
# SQLite pass did run tests: then this pass's own deselection (openstack, libvirt_guests) took them all.
pytest_postgresql() {
    local rc=0
    pytest_on postgresql "$PG_URL" "$@" || rc=$?
    if ((rc == 5)) && [[ $PYTEST_RC_sqlite == [01] ]]; then
        echo "(nothing of the selection is left for PostgreSQL: it all ran in the SQLite pass)"
        return 0
    fi
    return "$rc"
}

# with_marker EXPR ARGS...: MARKED=(ARGS with EXPR and-ed into their -m expression, or -m EXPR).
with_marker() {
    local expr=$1 user=""
    shift
    MARKED=()
    while (($#)); do
        case $1 in
        -m)
            user=${2-}
            shift 2 || shift
            ;;
        -m?*)
            user=${1#-m}
            shift
            ;;
        --)
            MARKED+=("$@")
            break
            ;;
        *)
            MARKED+=("$1")
            shift
            ;;
        esac
    done
    MARKED=(-m "${user:+($user) and }$expr" "${MARKED[@]}")
}

# ------------------------------------------------------------------ devcloud
# The tests marked `openstack` use the devcloud (scripts/devcloud/): started here once, in the
# background, under the same lock as the pytest fixture (which then finds it up and reuses it).
DEVCLOUD=$ROOT/scripts/devcloud
DEVCLOUD_RUN=${DEVCLOUD_DIR:-$ROOT/var/devcloud}/run
DEVCLOUD_LOG=$LOG_DIR/devcloud-up.log
DEVCLOUD_STARTED=0 # 1: this script started it, so it stops it
DEVCLOUD_JOB=
# devcloud_needed ARGS...: does the selection include a test marked openstack? (always without ARGS)
devcloud_needed() {
    (($# == 0)) && return 0
    with_marker openstack "$@"
    local rc=0
    env -u DATABASE_URL "$PY" -m pytest --collect-only -q "${MARKED[@]}" >/dev/null 2>&1 || rc=$?
    ((rc != 5)) # 5: nothing collected; a collection error counts as needed (pytest will report it)
}
devcloud_start() {
    devcloud_needed "$@" || {
        echo "no selected test is marked openstack"
        return 3
    }
    # -o: the daemons up.sh starts must not inherit the lock
    flock -o "$DEVCLOUD_RUN/fixture.lock" bash "$DEVCLOUD/up.sh"
}
# devcloud_stop: down.sh, if this script started the devcloud and no other test session holds a lease on it.
devcloud_stop() {
    [[ -z $DEVCLOUD_JOB ]] || devcloud_wait # interrupted early: let the start finish, then stop it
    ((DEVCLOUD_STARTED)) || return 0
    DEVCLOUD_STARTED=0
    local lease
    for lease in "$DEVCLOUD_RUN"/lease-*; do
        [[ -e $lease ]] && kill -0 "${lease##*-}" 2>/dev/null || continue
        echo "devcloud left running: test session ${lease##*-} uses it (stop it with scripts/devcloud/down.sh)"
        return 0
    done
    flock -o "$DEVCLOUD_RUN/fixture.lock" bash "$DEVCLOUD/down.sh" && echo "devcloud stopped (this run started it)"
}
DEVCLOUD_T0=$SECONDS
if [[ ${LABCLOUD_DEVCLOUD:-} == skip ]]; then
    results+=("SKIPPED devcloud (LABCLOUD_DEVCLOUD=skip: the tests marked openstack skip)")
else
    DEVCLOUD_WAS=$(bash "$DEVCLOUD/status.sh") # up | down | partial (up.sh restarts a partial one)
    [[ $DEVCLOUD_WAS == down ]] && DEVCLOUD_STARTED=1
    devcloud_start "$@" >"$DEVCLOUD_LOG" 2>&1 &
    DEVCLOUD_JOB=$!
fi
trap devcloud_stop EXIT
# devcloud_wait: the result of devcloud_start; on failure the openstack tests fail at once (fixture).
devcloud_wait() {
    local rc=0
    say "devcloud (scripts/devcloud/up.sh, started in the background $((SECONDS - DEVCLOUD_T0)) s ago)"
    wait "$DEVCLOUD_JOB" || rc=$?
    DEVCLOUD_JOB=
    sed 's/^/    /' "$DEVCLOUD_LOG"
    local took="$((SECONDS - DEVCLOUD_T0)) s, overlapping ruff and makemigrations"
    if ((rc == 3)); then
        DEVCLOUD_STARTED=0
        results+=("skipped devcloud (no selected test is marked openstack)")
    elif ((rc == 0)); then
        if ((DEVCLOUD_STARTED)); then
            results+=("ok      devcloud up (started: $took)")
        else
            results+=("ok      devcloud up (already running, reused and left running: $took)")
        fi
    else
        DEVCLOUD_STARTED=0 # up.sh stopped what it had started
        export LABCLOUD_DEVCLOUD_UP_FAILED=$DEVCLOUD_LOG
        results+=("FAILED  devcloud up (exit $rc, $took; the tests marked openstack fail; log: $DEVCLOUD_LOG)")
        failed=$((failed + 1))
    fi
}

pg_up() {
    pg_isready -q -h 127.0.0.1 -p 5432 ||
        {
            echo "PostgreSQL is not answering on 127.0.0.1:5432: run scripts/bootstrap.sh --test" >&2
            return 1
        }
}

step "ruff check" "$PY" -m ruff check .
step "ruff format --check" "$PY" -m ruff format --check .
step "makemigrations --check" env -u DATABASE_URL "$PY" manage.py makemigrations --check --dry-run
[[ -z $DEVCLOUD_JOB ]] || devcloud_wait
step "pytest (sqlite)" pytest_on sqlite "" "$@"
# the PostgreSQL pass does not use the devcloud: free its memory now
devcloud_stop
with_marker "not openstack" "$@"
if pg_up; then
    step "pytest (postgresql, tests marked openstack deselected)" pytest_postgresql "${MARKED[@]}"
else
    results+=("FAILED  pytest (postgresql) (database not reachable)")
    failed=$((failed + 1))
fi

echo
say "summary"
printf '    %s\n' "${results[@]}"
for label in sqlite postgresql; do
    log=$LOG_DIR/pytest-$label.log
    [[ -f $log ]] || continue
    line=$(sed -E 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '(passed|failed|errors?|no tests ran|skipped|deselected).* in [0-9.]+s( \([0-9:]+\))?( =+)?$' | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    printf '    pytest %s: %s\n' "$label" "${line:-no summary line}"
done
echo "    (pytest postgresql deselects the tests marked openstack: they ran in the SQLite pass)"
if ((failed)); then
    echo "test.sh: FAILED ($failed of ${#results[@]} steps failed, $((SECONDS - T0)) s)"
    exit 1
fi
echo "test.sh: OK (all ${#results[@]} steps passed, $((SECONDS - T0)) s)"
