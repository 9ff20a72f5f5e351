#!/bin/bash
# Print the RSS of every devcloud process (recorded PID plus descendants) and the total.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
desc() {
    echo "$1"
    local c
    for c in $(pgrep -P "$1"); do desc "$c"; done
}
total=0
for n in $ALL_SERVICES; do
    pid_alive "$n" || continue
    pids=$(desc "$(cat "$RUN/$n.pid")" | sort -u | paste -sd,)
    kb=$(ps -o rss= -p "$pids" | awk '{s+=$1} END {print s}')
    printf '%-16s %7.1f MiB\n' "$n" "$(echo "$kb/1024" | bc -l)"
    total=$((total + kb))
done
printf '%-16s %7.1f MiB\n' TOTAL "$(echo "$total/1024" | bc -l)"
