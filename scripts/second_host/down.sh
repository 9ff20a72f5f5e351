#!/bin/bash
# Stop the tests' second libvirt host and leave nothing of it behind but its keys, host UUID, QEMU
# capabilities cache and logs (var/second-host/{ssh,host-uuid,cache,log}):
#   1. its guests: first those named lctest-…, then any other (the whole daemon is ours): destroyed and
#      undefined; its pools: stopped and undefined;
#   2. sshd (with its sessions), libvirtd and virtlogd: SIGTERM by their recorded PIDs (checked to run
#      in its namespace), SIGKILL after 15 s; then any process still in its namespace (a QEMU whose
#      domain could not be destroyed, an SSH session) the same way. The namespace, and its bind mounts,
#      end with its last process: nothing of the system's is unmounted;
#   3. its run files, configuration, domain state and pool files, and the ssh_config Host block.
# Usage: scripts/second_host/down.sh   (a no-op when it is not running)
set -uo pipefail
# shellcheck source=scripts/second_host/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ------------------------------------------------------------------ guests and pools
if daemon_alive libvirtd && virsh2 version >/dev/null 2>&1; then
    mapfile -t domains < <(virsh2 list --all --name | sed '/^$/d')
    ordered=()
    for d in "${domains[@]}"; do [[ $d == lctest-* ]] && ordered+=("$d"); done
    for d in "${domains[@]}"; do [[ $d == lctest-* ]] || ordered+=("$d"); done
    for d in "${ordered[@]}"; do
        [[ $d == lctest-* ]] || echo "removing guest $d (not named lctest-…, but the whole daemon is ours)"
        virsh2 destroy "$d" >/dev/null 2>&1 || true
        virsh2 undefine "$d" --managed-save --snapshots-metadata --checkpoints-metadata --nvram >/dev/null 2>&1 ||
            virsh2 undefine "$d" >/dev/null 2>&1 || true
    done
    ((${#ordered[@]} == 0)) || say "removed ${#ordered[@]} guest(s): ${ordered[*]}"
    while read -r p; do
        [[ -n $p ]] || continue
        virsh2 pool-destroy "$p" >/dev/null 2>&1 || true
        virsh2 pool-undefine "$p" >/dev/null 2>&1 || true
    done < <(virsh2 pool-list --all --name)
fi

# ------------------------------------------------------------------ processes
descendants() {
    local c
    for c in $(pgrep -P "$1"); do
        echo "$c"
        descendants "$c"
    done
}
# stop PID...: SIGTERM, up to 15 s to exit, then SIGKILL.
stop() {
    (($#)) || return 0
    kill "$@" 2>/dev/null
    local deadline=$((SECONDS + 15)) alive p
    while :; do
        alive=()
        for p in "$@"; do [[ -d /proc/$p ]] && [[ $(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null) != Z ]] && alive+=("$p"); done
        ((${#alive[@]})) || return 0
        if ((SECONDS >= deadline)); then
            echo "!!  SIGKILL to ${alive[*]} (still running 15 s after SIGTERM)" >&2
            kill -9 "${alive[@]}" 2>/dev/null
            return 0
        fi
        sleep 0.05
    done
}
pids=()
sshd=$(recorded_pid sshd)
if ours "$sshd" sshd; then
    # shellcheck disable=SC2207
    pids+=("$sshd" $(descendants "$sshd"))
fi
for d in libvirtd virtlogd; do
    p=$(recorded_pid "$d")
    ! ours "$p" "$d" || pids+=("$p")
done
stop "${pids[@]}"
mapfile -t rest < <(ns_pids)
if ((${#rest[@]})); then
    for p in "${rest[@]}"; do echo "!!  still in its namespace: $p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" >&2; done
    stop "${rest[@]}"
fi
((${#pids[@]} + ${#rest[@]} == 0)) || say "stopped sshd, libvirtd, virtlogd (pids ${pids[*]} ${rest[*]})"

# ------------------------------------------------------------------ files
if [[ -f $SSH_DROPIN ]] && grep -qxF "# lctest second host of $H2" "$SSH_DROPIN"; then
    rm -f "$SSH_DROPIN"
fi
rm -rf "${RUN:?}" "${H2:?}/etc" "${H2:?}/lib" "${H2:?}/system-run"
if compgen -G "$H2/pool/*" >/dev/null; then
    say "removing leftover volumes of pool $POOL: $(cd "$H2/pool" && echo *)"
    rm -rf "${H2:?}/pool"
fi
exit 0
