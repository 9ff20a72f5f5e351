#!/usr/bin/env bash
# Build the offline test guests into ${LABCLOUD_TEST_MEDIA:-var/test-media}.
#
#   scripts/build_test_media.sh           # build, or skip when already up to date
#   scripts/build_test_media.sh --force   # rebuild even when up to date
#
# Artifacts (see tests_media/README.md): tiny.qcow2, installer.iso,
# grub-rescue-cdrom.iso, vmlinuz, initrd.gz. Made from the current bookworm kernel
# package and busybox-static (apt-get download, cached in <media>/cache/debs).
# Skipped when the outputs exist and the stamp (hash of the builder sources and
# package versions) matches. Needs no root (apt-get download works as any user).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

FORCE=0
for arg in "$@"; do
    case $arg in
    --force) FORCE=1 ;;
    -h | --help) usage 0 ;;
    *)
        echo "unknown argument: $arg" >&2
        usage 2
        ;;
    esac
done

load_env "$ROOT/.env"

T0=$EPOCHREALTIME
elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }

MEDIA=${LABCLOUD_TEST_MEDIA:-var/test-media}
[[ $MEDIA == /* ]] || MEDIA=$ROOT/$MEDIA
CACHE=$MEDIA/cache
STAMP=$MEDIA/.stamp
OUTPUTS=(tiny.qcow2 installer.iso grub-rescue-cdrom.iso vmlinuz initrd.gz modules.txt)
# Everything that changes the artifacts; README.md and bootcheck.py do not.
SOURCES=(scripts/build_test_media.sh tests_media/build_tiny.py tests_media/init
    tests_media/syslinux.cfg tests_media/isolinux.cfg)
# Host packages the build runs (bootstrap.sh --test installs them).
NEEDED=(busybox-static syslinux syslinux-common isolinux mtools xorriso grub-rescue-pc cpio qemu-utils)

pkg_version() { dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$1" 2>/dev/null | awk '$1 == "ii" { print $2 }'; }

missing=()
for p in "${NEEDED[@]}"; do
    [[ -n $(pkg_version "$p") ]] || missing+=("$p")
done
((${#missing[@]} == 0)) ||
    die "missing Debian packages: ${missing[*]} (install them with: scripts/bootstrap.sh --test, or apt-get install --no-install-recommends ${missing[*]})"

mkdir -p "$MEDIA" "$CACHE/debs"
exec 9>"$MEDIA/.lock"
flock -w 600 9 || die "another build holds $MEDIA/.lock"

# The kernel package linux-image-amd64 currently points at (e.g. linux-image-6.1.0-56-amd64,
# "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)") and the busybox-static version:
# one apt-cache call (it takes most of the time of an up-to-date check).
read -r KPKG KVER BBVER < <(apt-cache show --no-all-versions linux-image-amd64 busybox-static 2>/dev/null | awk '
    $1 == "Package:" { pkg = $2 }
    pkg == "linux-image-amd64" && $1 == "Depends:" && match($0, /linux-image-[0-9][^ ,]*-amd64 \(= [^)]*\)/) {
        split(substr($0, RSTART, RLENGTH), d, /[ ()=]+/); kpkg = d[1]; kver = d[2]
    }
    pkg == "busybox-static" && $1 == "Version:" { bbver = $2 }
    END { print kpkg, kver, bbver }') || true
[[ -n ${KPKG:-} && -n ${KVER:-} && -n ${BBVER:-} ]] ||
    die "cannot resolve linux-image-amd64 to a kernel package version, or busybox-static (apt-get update?)"

stamp_text() {
    printf 'kernel %s %s\n' "$KPKG" "$KVER"
    printf 'busybox-static %s\n' "$BBVER"
    for p in syslinux isolinux grub-rescue-pc; do printf '%s %s\n' "$p" "$(pkg_version "$p")"; done
    sha256sum "${SOURCES[@]}"
}
HASH=$(stamp_text | sha256sum | cut -d' ' -f1)

up_to_date() {
    [[ $(head -n 1 "$STAMP" 2>/dev/null) == "$HASH" ]] || return 1
    for f in "${OUTPUTS[@]}"; do [[ -s $MEDIA/$f ]] || return 1; done
}
if ((!FORCE)) && up_to_date; then
    say "test media up to date in $MEDIA ($KPKG $KVER), checked in $(elapsed)"
    exit 0
fi

say "building test media into $MEDIA ($KPKG $KVER)"
rm -f "$STAMP"
rm -rf "$CACHE"/build.* # left over by an interrupted run (we hold the lock)
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# fetch_deb PKG VERSION: print the path of PKG_VERSION.deb in the cache, downloading it if needed.
fetch_deb() {
    local pkg=$1 ver=$2 f
    for f in "$CACHE/debs/${pkg}"_*.deb; do
        if [[ -f $f && $(dpkg-deb -f "$f" Version 2>/dev/null) == "$ver" ]]; then
            echo "$f"
            return
        fi
    done
    printf '    downloading %s %s\n' "$pkg" "$ver" >&2
    if ! (cd "$WORK" && apt-get download "$pkg=$ver") >"$WORK/apt-download.log" 2>&1; then
        tail -n 20 "$WORK/apt-download.log" >&2
        die "apt-get download $pkg=$ver failed (Debian mirror reachable? apt-get update?)"
    fi
    rm -f "$CACHE/debs/${pkg}"_*.deb # an older version
    for f in "$WORK/${pkg}"_*.deb; do
        mv "$f" "$CACHE/debs/"
        echo "$CACHE/debs/${f##*/}"
    done
}
KDEB=$(fetch_deb "$KPKG" "$KVER")
BBDEB=$(fetch_deb busybox-static "$BBVER")
# Drop kernels that linux-image-amd64 no longer points at.
for f in "$CACHE"/debs/linux-image-*.deb; do
    if [[ $f != "$KDEB" ]]; then rm -f "$f"; fi
done

# Like dpkg-deb -x, but only the kernel and the modules, without the big driver
# trees a tiny guest never needs (halves the disk writes; a module the guest
# needs that was left out makes build_tiny.py fail with its name).
printf '    extracting %s\n' "${KDEB##*/}"
mkdir -p "$WORK/kernel"
dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$WORK/kernel" --wildcards './boot/vmlinuz-*' './lib/modules/*' \
    --exclude='*/kernel/sound' --exclude='*/kernel/drivers/'{gpu,media,staging,infiniband,usb,iio,bluetooth} \
    --exclude='*/kernel/drivers/net/'{wireless,ethernet} --exclude='*/kernel/net/'{wireless,mac80211,bluetooth}
dpkg-deb -x "$BBDEB" "$WORK/busybox"

PY=.venv/bin/python
[[ -x $PY ]] || PY=python3
OUT=$WORK/out
"$PY" tests_media/build_tiny.py --kernel-root "$WORK/kernel" --busybox "$WORK/busybox/bin/busybox" --out "$OUT" |
    sed 's/^/    /'

# installer.iso: isolinux; "install" (default) copies /labcloud/disk.img onto /dev/vda.
ISO=$WORK/iso
mkdir -p "$ISO/isolinux" "$ISO/labcloud"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$ISO/isolinux/"
cp tests_media/isolinux.cfg "$ISO/isolinux/isolinux.cfg"
cp "$OUT/vmlinuz" "$OUT/initrd.gz" "$ISO/labcloud/"
mv "$OUT/tiny.raw" "$ISO/labcloud/disk.img"
if ! xorriso -as mkisofs -quiet -o "$OUT/installer.iso" -V LABCLOUD_INSTALLER -J -R \
    -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \
    -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
    "$ISO" 2>"$WORK/xorriso.log"; then
    cat "$WORK/xorriso.log" >&2
    die "xorriso failed"
fi

GRUB_ISO=$(dpkg -L grub-rescue-pc | grep '/grub-rescue-cdrom\.iso$' | head -n 1)
[[ -f $GRUB_ISO ]] || die "grub-rescue-pc has no grub-rescue-cdrom.iso"
cp "$GRUB_ISO" "$OUT/grub-rescue-cdrom.iso"

for f in "${OUTPUTS[@]}"; do
    mv -f "$OUT/$f" "$MEDIA/$f"
done
{
    echo "$HASH"
    stamp_text
} >"$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"

rm -rf "$WORK"
for f in "${OUTPUTS[@]}"; do
    [[ $f == *.txt ]] && continue
    printf '    %-22s %5.1f MB\n' "$f" "$(awk -v s="$(stat -c %s "$MEDIA/$f")" 'BEGIN { print s / 1e6 }')"
done
say "test media built in $MEDIA in $(elapsed)"
