#!/usr/bin/env bash
# Build the fide image for real and run it as the organisers do, without a Docker engine or a registry:
#
#   1. a local Debian bookworm base (make-base.sh; cached between runs),
#   2. `buildah bud` of the repository's Dockerfile on that base, with this machine's pip settings (CA bundle,
#      find-links folder) bind-mounted for the pip step only,
#   3. a small synthetic task (`fide synth`) mounted read-only at /input, an empty /output, no network, the
#      image's own ENTRYPOINT and CMD run as the image's non-root user (`buildah run`; `podman run` needs cgroups),
#   4. checks: /input is read-only inside, /output holds exactly one valid field per pair, and the bundled
#      evaluator scores them (`fide evaluate`).
#
#   bash test/container/run.sh [--no-build] [--keep] [--pairs N] [--size S]
#
# Environment: FIDE_IMAGE (default localhost/fide:ci), FIDE_BASE_IMAGE (localhost/fide-base:bookworm),
# FIDE_CONTAINER_PAIRS and FIDE_CONTAINER_SIZE (defaults of --pairs 2 and --size 256),
# FIDE_PYTHON (host Python with fide installed; default .venv/bin/python, else python3), FIDE_CONTAINER_CACHE
# (base tarball folder, see make-base.sh). Needs root, buildah, podman and debootstrap (ci-snippet.sh installs them).
# Timings and the image size go to stdout and to $FIDE_CONTAINER_CACHE/last-run.txt.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGE=${FIDE_IMAGE:-localhost/fide:ci}
BASE=${FIDE_BASE_IMAGE:-localhost/fide-base:bookworm}
build=1 keep=0 pairs=${FIDE_CONTAINER_PAIRS:-2} size=${FIDE_CONTAINER_SIZE:-256}
while (($#)); do
    case $1 in
        --no-build) build=0 ;;
        --keep) keep=1 ;;
        --pairs) pairs=$2; shift ;;
        --size) size=$2; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ $(id -u) == 0 ]]; then default_cache=/var/cache/fide-ci; else default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/fide-ci; fi
export FIDE_CONTAINER_CACHE=${FIDE_CONTAINER_CACHE:-$default_cache}
mkdir -p "$FIDE_CONTAINER_CACHE"
PY=${FIDE_PYTHON:-}
[[ -n $PY ]] || { [[ -x $repo/.venv/bin/python ]] && PY=$repo/.venv/bin/python; } || PY=python3

log() { printf '[container] %s\n' "$*"; }
die() { printf '[container] FAIL: %s\n' "$*" >&2; exit 1; }
summary=()
note() { summary+=("$*"); log "$*"; }

for tool in buildah podman; do command -v "$tool" >/dev/null || die "$tool is not installed (see ci-snippet.sh)"; done
"$PY" -c 'import fide.io' 2>/dev/null || die "$PY cannot import fide (set FIDE_PYTHON or make .venv)"

# --- 1. base -------------------------------------------------------------------------------------------------
t0=$SECONDS
"$here/make-base.sh" "$BASE"
note "base image $BASE ready in $((SECONDS - t0)) s"

# --- 2. build ------------------------------------------------------------------------------------------------
# This machine's pip settings: environment first, then pip's configuration files.
pip_setting() {  # pip_setting KEY ENVVAR
    local value=${!2:-}
    if [[ -z $value ]]; then
        value=$("$PY" -m pip config list 2>/dev/null | sed -n "s/^\(global\|:env:\|install\)\.$1='\(.*\)'$/\2/p" | head -n1)
    fi
    printf '%s' "$value"
}
if ((build)); then
    build_args=(--build-arg "BASE_IMAGE=$BASE")
    cert=$(pip_setting cert PIP_CERT)
    if [[ -n $cert && -f $cert ]]; then
        # over the image's own bundle for the pip step only: no mount point is left behind in the image
        build_args+=(-v "$cert:/etc/ssl/certs/ca-certificates.crt:ro"
                     --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
    fi
    links=() k=0
    for dir in $(pip_setting find-links PIP_FIND_LINKS); do
        [[ -d $dir ]] || continue
        # the first folder on /mnt (empty in the base, so nothing is left behind), further ones below it
        if ((k == 0)); then target=/mnt; else target=/mnt/find-links-$k; fi
        build_args+=(-v "$dir:$target:ro"); links+=("$target"); k=$((k + 1))
    done
    ((${#links[@]})) && build_args+=(--build-arg "PIP_FIND_LINKS=${links[*]}")
    log "buildah bud ${build_args[*]} -t $IMAGE $repo"
    previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    t0=$SECONDS
    buildah bud --layers --isolation chroot "${build_args[@]}" -t "$IMAGE" "$repo" \
        >"$FIDE_CONTAINER_CACHE/build.log" 2>&1 || { tail -n 40 "$FIDE_CONTAINER_CACHE/build.log" >&2; die "build failed"; }
    grep -E '^(STEP|Successfully installed|Processing .*torch)' "$FIDE_CONTAINER_CACHE/build.log" | cut -c1-160 || true
    note "build took $((SECONDS - t0)) s (log: $FIDE_CONTAINER_CACHE/build.log)"
    # the image this build replaced, now untagged, would only fill the disk (its layers stay while still used)
    if [[ -n $previous && $previous != $(podman image inspect --format '{{.Id}}' "$IMAGE") ]]; then
        buildah rmi "$previous" >/dev/null 2>&1 || true
    fi
fi
podman image exists "$IMAGE" || die "$IMAGE is not in the local store (build it first)"
note "image $IMAGE: $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB (%d bytes)", $1/1e9, $1}')"

# --- 3. run --------------------------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/fide-container.XXXXXX")
ctr=
cleanup() {
    if [[ -n $ctr ]]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
    if ((keep)); then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
chmod 755 "$work"
mkdir -p "$work/output" "$work/eval"
chmod 777 "$work/output"  # the image's user (uid 10001) must be able to write there, as with `docker run -v OUT:/output`
"$PY" -m fide.cli.main synth "$work/input" --pairs "$pairs" --size "$size" --seed 0 >"$work/synth.log" 2>&1 \
    || { cat "$work/synth.log" >&2; die "fide synth failed"; }
chmod -R a+rX "$work/input"
shopt -s nullglob
descriptors=("$work"/input/*_dataset.json)
((${#descriptors[@]} == 1)) || die "expected one *_dataset.json in $work/input, found ${#descriptors[@]}"
dataset=${descriptors[0]}
log "task: $dataset"

ctr=$(buildah from "$IMAGE")
mounts=(-v "$work/input:/input:ro" -v "$work/output:/output")
# no network for the container, like a sealed evaluation machine (chroot isolation cannot make its own)
offline=()
if unshare --net true 2>/dev/null; then offline=(unshare --net --); else log "unshare --net unavailable: running with the host network"; fi

# /input must be read-only inside
if ro_msg=$(buildah run --isolation chroot "${mounts[@]}" "$ctr" -- sh -c 'touch /input/.probe' 2>&1); then
    die "/input is writable inside the container"
fi
grep -q 'Read-only file system' <<<"$ro_msg" || die "unexpected error writing /input: $ro_msg"
log "/input is read-only inside the container"

# the image's own ENTRYPOINT + CMD, as `docker run IMAGE` would run them
config=$(buildah inspect --type image "$IMAGE")
mapfile -t cmd < <("$PY" -c 'import json, sys; c = json.load(sys.stdin)["OCIv1"]["config"]
for a in (c.get("Entrypoint") or []) + (c.get("Cmd") or []): print(a)' <<<"$config")
((${#cmd[@]})) || die "$IMAGE has no ENTRYPOINT"
user=$("$PY" -c 'import json, sys; print(json.load(sys.stdin)["OCIv1"]["config"].get("User", ""))' <<<"$config")
[[ -n $user && ${user%%:*} != 0 && ${user%%:*} != root ]] || die "$IMAGE runs as root (User='$user')"
log "running as $user: ${cmd[*]}"
t0=$SECONDS
rc=0
"${offline[@]}" buildah run --isolation chroot "${mounts[@]}" "$ctr" -- "${cmd[@]}" 2>&1 | tee "$work/run.log" \
    || rc=${PIPESTATUS[0]}
((rc == 0)) || die "the container exited with $rc"
note "container run on $pairs pair(s) of ${size}px took $((SECONDS - t0)) s"

# --- 4. checks -----------------------------------------------------------------------------------------------
"$PY" "$here/check_output.py" "$dataset" "$work/output" || die "the container's output is not one valid field per pair"
"$PY" -m fide.cli.main evaluate "$dataset" --disp "$work/output" --json "$work/eval/scores.json" \
    >"$work/eval.log" 2>&1 || { cat "$work/eval.log" >&2; die "the evaluator failed on the container's fields"; }
cat "$work/eval.log"
"$PY" - "$work/eval/scores.json" <<'EOF' || die "the evaluator's scores are unusable"
import json, math, sys

scores = json.load(open(sys.argv[1]))
numbers = []
def walk(x):
    if isinstance(x, dict):
        for v in x.values():
            walk(v)
    elif isinstance(x, list):
        for v in x:
            walk(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        numbers.append(float(x))
walk(scores)
assert numbers, "no scores in the evaluator's JSON"
assert all(math.isfinite(v) for v in numbers), "non-finite score in the evaluator's JSON"
print(json.dumps(scores.get("aggregates", scores), indent=1)[:2000])
EOF
note "the evaluator scored the container's fields"

printf '%s\n' "${summary[@]}" >"$FIDE_CONTAINER_CACHE/last-run.txt"
log "container check OK"
