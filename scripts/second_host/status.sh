#!/bin/bash
# Is the tests' second libvirt host running? By its recorded PIDs (checked to run in its namespace), not by
# asking it: up.sh waits for it to answer.
# Usage: scripts/second_host/status.sh     prints "up", "down" or "partial" (some of it runs)
#        exit status 0 up, 1 down, 2 partial
# shellcheck source=scripts/second_host/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
alive=0
for d in "${DAEMONS[@]}"; do daemon_alive "$d" && alive=$((alive + 1)); done
if ((alive == ${#DAEMONS[@]})); then
    echo up
elif ((alive == 0)) && [[ -z $(ns_pids) ]]; then
    echo down
    exit 1
else
    echo partial
    exit 2
fi
