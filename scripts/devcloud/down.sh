#!/bin/bash
# Stop the devcloud processes by their recorded PIDs only (and those PIDs' own descendants):
# SIGTERM to all at once, up to 15 s to exit, then SIGKILL for what is left.
# Usage: scripts/devcloud/down.sh [NAME ...]   (default: all)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
descendants() {
    local c
    for c in $(pgrep -P "$1"); do
        echo "$c"
        descendants "$c"
    done
}
# everything stops: a test session's "I started it" mark no longer applies
[[ $# -gt 0 ]] || rm -f "$RUN/started-by-fixture"
pids=()
for n in ${*:-$ALL_SERVICES}; do
    f=$RUN/$n.pid
    [[ -f $f ]] || continue
    p=$(cat "$f")
    if ours "$p"; then
        # shellcheck disable=SC2207
        pids+=("$p" $(descendants "$p"))
    fi
    rm -f "$f"
done
[[ ${#pids[@]} -gt 0 ]] || exit 0
kill "${pids[@]}" 2>/dev/null
for _ in $(seq 1 60); do
    alive=()
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
    [[ ${#alive[@]} -gt 0 ]] || exit 0
    sleep 0.25
done
kill -9 "${alive[@]}" 2>/dev/null
exit 0
