#!/usr/bin/env bash
# Copy the browser files labcloud uses from node_modules/ into static/vendor/
# (git-ignored; collectstatic picks it up through STATICFILES_DIRS).
#
#   static/vendor/novnc/core/rfb.js            noVNC, ES modules (+ vendor/pako)
#   static/vendor/xterm/xterm.{css,js,mjs}     xterm.js
#   static/vendor/xterm-addon-fit/addon-fit.{js,mjs}
#   static/vendor/bootstrap/css/bootstrap.min.css
#   static/vendor/bootstrap/js/bootstrap.bundle.min.js
#   static/vendor/bootstrap-icons/bootstrap-icons.min.css (+ fonts/)
#   static/vendor/htmx/htmx.min.js
#   static/vendor/chartjs/chart.umd.min.js
#
# Source maps are copied next to the files that name them, because
# ManifestStaticFilesStorage fails on a sourceMappingURL whose file is missing.
# Idempotent: skipped when package-lock.json and this script are unchanged.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

NM=node_modules
DEST=static/vendor
STAMP=$DEST/.stamp
[[ -d $NM ]] || die "$NM/ missing: run npm ci first"

want=$(cat package-lock.json "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
    printf '    static/vendor up to date\n'
    exit 0
fi

TMP=$(mktemp -d static/.vendor.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# put SRC... DESTDIR: copy files (with any .map beside them) into $TMP/DESTDIR.
put() {
    local dir=$TMP/${*: -1} f
    mkdir -p "$dir"
    for f in "${@:1:$#-1}"; do
        [[ -e $f ]] || die "expected file missing: $f"
        cp -R "$f" "$dir/"
        [[ -f $f.map ]] && cp "$f.map" "$dir/"
    done
    return 0
}

put $NM/@novnc/novnc/{core,vendor,LICENSE.txt} novnc
put $NM/@xterm/xterm/css/xterm.css $NM/@xterm/xterm/lib/xterm.{js,mjs} $NM/@xterm/xterm/LICENSE xterm
put $NM/@xterm/addon-fit/lib/addon-fit.{js,mjs} $NM/@xterm/addon-fit/LICENSE xterm-addon-fit
put $NM/bootstrap/dist/css/bootstrap.min.css bootstrap/css
put $NM/bootstrap/dist/js/bootstrap.bundle.min.js bootstrap/js
put $NM/bootstrap/LICENSE bootstrap
put $NM/bootstrap-icons/font/bootstrap-icons{,.min}.css $NM/bootstrap-icons/font/fonts $NM/bootstrap-icons/LICENSE bootstrap-icons
put $NM/htmx.org/dist/htmx.min.js $NM/htmx.org/LICENSE htmx
put $NM/chart.js/dist/chart.umd.min.js $NM/chart.js/LICENSE.md chartjs

# Record the versions that were copied.
for pkg in @novnc/novnc @xterm/xterm @xterm/addon-fit bootstrap bootstrap-icons htmx.org chart.js; do
    printf '%s %s\n' "$pkg" "$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$NM/$pkg/package.json" | head -n 1)"
done >"$TMP/VERSIONS.txt"
echo "$want" >"$TMP/.stamp"

rm -rf "$DEST"
mv "$TMP" "$DEST"
chmod 755 "$DEST"
trap - EXIT
printf '    static/vendor refreshed (%s)\n' "$(du -sh "$DEST" | cut -f1)"
