# Shared helpers for scripts/*.sh (sourced, not executed).
# shellcheck shell=bash

# Used by the scripts that source this file.
# shellcheck disable=SC2034
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf '==> %s\n' "$*"; }
warn() { printf '!!  %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# load_env FILE: export the KEY=VALUE lines of a dotenv file.
# Blank lines and '#' comments are skipped, a leading 'export ' is allowed and
# one level of surrounding single or double quotes is stripped. Nothing is
# evaluated (no $VAR or $(...) expansion). Variables already set in the
# environment win, so `REDIS_URL=... make run` overrides .env.
load_env() {
    local file=$1 line key value
    [[ -f $file ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        line=${line#"${line%%[![:space:]]*}"}
        line=${line#export }
        [[ $line == *=* ]] || continue
        key=${line%%=*}
        key=${key%"${key##*[![:space:]]}"}
        value=${line#*=}
        value=${value#"${value%%[![:space:]]*}"}
        value=${value%"${value##*[![:space:]]}"}
        [[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || {
            warn "$file: ignoring malformed line: $line"
            continue
        }
        if [[ ${#value} -ge 2 && ((${value:0:1} == '"' && ${value: -1} == '"') || (${value:0:1} == "'" && ${value: -1} == "'")) ]]; then
            value=${value:1:${#value}-2}
        fi
        [[ -n ${!key+x} ]] && continue
        export "$key=$value"
    done <"$file"
}
