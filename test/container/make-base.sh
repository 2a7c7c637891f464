#!/usr/bin/env bash
# Make the local Debian bookworm base image (Python 3.11, like python:3.11-slim-bookworm) without any container
# registry: debootstrap a minimal root from the Debian mirror apt already uses, trim it, and import it.
#
#   test/container/make-base.sh [IMAGE]        (default IMAGE: localhost/fide-base:bookworm)
#
# Cached twice: an image already in the local store is kept as is, and the trimmed root is kept as a tarball under
# $FIDE_CONTAINER_CACHE (default /var/cache/fide-ci as root, ~/.cache/fide-ci otherwise), so a lost image store
# costs an import (seconds) instead of a debootstrap (about a minute). FIDE_BASE_REBUILD=1 forces both.
# Needs root (debootstrap), debootstrap and podman.
set -euo pipefail

IMAGE=${1:-localhost/fide-base:bookworm}
SUITE=bookworm
INCLUDE=python3,python3-venv,ca-certificates
if [[ $(id -u) == 0 ]]; then default_cache=/var/cache/fide-ci; else default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/fide-ci; fi
CACHE=${FIDE_CONTAINER_CACHE:-$default_cache}
# the tarball's name carries what went into it, so a change of suite or packages makes a new one
TARBALL=$CACHE/base-$SUITE-$(printf '%s' "$SUITE $INCLUDE minbase v1" | sha256sum | cut -c1-12).tar

log() { printf '[make-base] %s\n' "$*" >&2; }

if [[ ${FIDE_BASE_REBUILD:-0} != 1 ]] && podman image exists "$IMAGE"; then
    log "$IMAGE is in the local store; kept"
    exit 0
fi

# The mirror apt uses here (deb822 or one-line sources), so debootstrap reaches the same one.
mirror() {
    local uri
    uri=$(grep -hs -E '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources | awk '{print $2; exit}' || true)
    [[ -n $uri ]] || uri=$(grep -hs -E '^deb [^ ]*/debian/? ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | awk '{print $2; exit}' || true)
    printf '%s' "${uri:-http://deb.debian.org/debian}"
}

if [[ ${FIDE_BASE_REBUILD:-0} == 1 || ! -s $TARBALL ]]; then
    [[ $(id -u) == 0 ]] || { log "debootstrap needs root"; exit 1; }
    mkdir -p "$CACHE"
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    MIRROR=$(mirror)
    log "debootstrap $SUITE from $MIRROR (about a minute)"
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1
    then
        tail -n 30 "$CACHE/debootstrap.log" >&2
        log "debootstrap failed (log: $CACHE/debootstrap.log)"
        exit 1
    fi
    # Trim what a slim image leaves out: apt's downloads and lists, manuals, translations, docs but copyrights.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
           "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/var/log/apt/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    find "$root/usr/share/doc" -mindepth 2 -type f ! -name copyright -delete
    tar --numeric-owner -C "$root" -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
    rm -rf "$root"
    trap - EXIT
    log "root cached in $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi

podman import \
    --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV=LANG=C.UTF-8' \
    --change 'CMD=["python3"]' \
    "$TARBALL" "$IMAGE" >/dev/null
log "imported $IMAGE ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
