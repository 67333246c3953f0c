#!/usr/bin/env bash
# What the upload window costs a writer: `tar -xpf` of a generated tree onto
# a fresh mount with `upload.held_in_memory = HELD`, timed per file overall and
# per STEP entries as tar lists them (does the cost grow with what the mount
# has seen?).
#
#   scripts/bench_window.sh HELD [FILES]     e.g. 64 20000, then 100000 20000
#
#   HOLD=1   uploads held (`write_back_delay = "1h"`): only the mount's own work
#   PERF=1   the daemon under `perf record` (its profile is left in $work/perf.data)
#   STEP=N   entries per progress line (default 2000)
#
# Uses its own regions on 127.0.0.1:19530/19540 (override with
# REGIONFS_PORT_A/B) and a temp dir it prints; stops what it started.
set -euo pipefail
held=${1:?usage: scripts/bench_window.sh HELD [FILES]}; n=${2:-20000}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/regionfs-window.XXXXXX)
export REGIONFS_REGIONS_DIR=$work/regions REGIONFS_PORT_A=${REGIONFS_PORT_A:-19530} REGIONFS_PORT_B=${REGIONFS_PORT_B:-19540}
export AWS_ACCESS_KEY_ID=regionfs AWS_SECRET_ACCESS_KEY=regionfs-secret AWS_EC2_METADATA_DISABLED=true
A=http://127.0.0.1:$REGIONFS_PORT_A B=http://127.0.0.1:$REGIONFS_PORT_B
export REGIONFS_VENV=${REGIONFS_VENV:-$repo/.venv}
py="$REGIONFS_VENV/bin/python $repo/scripts/bench_helper.py"
[ -z "${PERF:-}" ] || command -v perf >/dev/null || { echo "bench_window.sh: needs perf (Debian linux-perf)" >&2; exit 1; }
step=${STEP:-2000}
(cd "$repo" && cargo build --release --locked -q)
rfs=
cleanup() {
  umount -l "$work/mnt" 2>/dev/null || true
  [ -n "$rfs" ] && { kill "$rfs" 2>/dev/null || true; sleep 1; kill -9 "$rfs" 2>/dev/null || true; }
  bash "$repo/scripts/regions.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
bash "$repo/scripts/regions.sh" start >/dev/null
$py mkbuckets $A "win$held"; $py mkbuckets $B "win$held"
mkdir -p "$work/tree" "$work/mnt"
$py mktree "$work/tree" "$n" > /dev/null
tar -C "$work/tree" -cf "$work/tree.tar" . && rm -rf "$work/tree"
cat > "$work/rfs.toml" <<T
[source]
name = "a"
region = "us-east-1"
bucket = "win$held"
endpoint = "$A"
[[destination]]
name = "b"
region = "eu-west-1"
bucket = "win$held"
endpoint = "$B"
[[rule]]
id = "all"
destination = "b"
[cache]
dir = "$work/cache"
max_size = "8GiB"
${HOLD:+write_back_delay = \"1h\"}
[upload]
held_in_memory = $held
[durability]
fsync = "local"
T
"$repo/target/release/regionfs" mount --config "$work/rfs.toml" "$work/mnt" > "$work/log" 2>&1 & rfs=$!
for _ in $(seq 1 200); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
perf=
[ -z "${PERF:-}" ] || { perf record -F 999 -g -p "$rfs" -o "$work/perf.data" > /dev/null 2>&1 & perf=$!; }
t=$(date +%s.%N)
# One line per STEP entries: entries so far, seconds so far, µs per entry since the last line.
tar -xvpf "$work/tree.tar" -C "$work/mnt" | awk -v t0="$t" -v step="$step" '
  NR % step == 0 { "date +%s.%N" | getline now; close("date +%s.%N")
                   printf "%7d entries %8.2f s %6.0f us/entry\n", NR, now - t0, (now - last) * 1e6 / step
                   last = now }
  NR == 1 { last = t0 }'
e=$(date +%s.%N)
[ -z "$perf" ] || { kill -INT $perf; wait $perf 2>/dev/null || true; echo "profile: perf report -i $work/perf.data"; }
awk -v a="$t" -v b="$e" -v n="$n" -v h="$held" 'BEGIN { printf "held_in_memory %s%s: %.0f us a file (%d files)\n", h, ENVIRON["HOLD"] ? ", uploads held" : "", (b - a) * 1e6 / n, n }'
