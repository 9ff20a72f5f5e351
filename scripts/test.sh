#!/usr/bin/env bash
# Run every check, in order, with the project venv:
#   ruff check, ruff format --check, makemigrations --check,
#   pytest on SQLite (DATABASE_URL unset), pytest on PostgreSQL.
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
rm -f "$LOG_DIR"/pytest-{sqlite,postgresql}.log

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
    # pytest exits 5 when it collected no test: that is a failure here too.
    ((rc == 5)) && echo "pytest collected no tests" >&2
    return "$rc"
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
step "pytest (sqlite)" pytest_on sqlite "" "$@"
if pg_up; then
    step "pytest (postgresql)" pytest_on postgresql "$PG_URL" "$@"
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
if ((failed)); then
    echo "test.sh: FAILED ($failed of 5 steps failed, $((SECONDS - T0)) s)"
    exit 1
fi
echo "test.sh: OK (all 5 steps passed, $((SECONDS - T0)) s)"
