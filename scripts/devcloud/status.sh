#!/bin/bash
# Is the devcloud running? By its recorded PIDs (and that they run in var/devcloud), not by health:
# up.sh checks health in depth.
# Usage: scripts/devcloud/status.sh     prints "up", "down" or "partial" (some of its processes run)
#        exit status 0 up, 1 down, 2 partial
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
alive=0 dead=0
for s in $ALL_SERVICES; do
    if pid_alive "$s"; then alive=$((alive + 1)); else dead=$((dead + 1)); fi
done
if ((dead == 0)); then
    echo up
elif ((alive == 0)); then
    echo down
    exit 1
else
    echo partial
    exit 2
fi
