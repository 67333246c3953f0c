#!/usr/bin/env bash
# Benchmarks regionfs side by side with local disk, a raw parallel S3 client
# (boto3, 16 threads), rclone mount (--vfs-cache-mode writes) and s3fs, against
# two local SeaweedFS regions, in one run, interleaved per repetition.
#
#   scripts/bench.sh [--reps N] [--big-mib M] [--files N] [--rss-files N] [--out FILE]
#                    [--phases "peers apps lag rss scale cpu"]   (default: all but cpu)
#                    [--scale "1000 10000 100000"]   (tree sizes of the scale phase)
#                    [--tree-files N]                (files of the apps phase's tar, 10000)
#
# Workloads (each system, each repetition):
#   big    M MiB sequential write (dd bs=1M conv=fsync): time to close, time until
#          durable in the source bucket
#   small  N × 4 KiB files in 20 dirs: time to the last close, time until all
#          are in the bucket; local-fsync: the same on local disk with an fsync
#          before each close (the physical floor of a durable close)
#   repl   regionfs: time until region B holds every version written above
#          (measured from the end of the writes); peer: `rclone sync` A → B
#   read   cold sequential read of the big file after a fresh mount (raw: one GET;
#          raw-ranged: 16 ranged GETs of 8 MiB at a time; the target is the faster),
#          then warm: the same file again, 3 times, each right after a read of the
#          local disk's copy from its page cache (local-read: same moment, same load)
#   ls     `ls -l` of the small files on that fresh mount (cold), then again (warm)
#   rename `mv` of one directory of the small files (100 with the defaults)
#   cpu    CPU seconds of each daemon over both of its mounts
#   rss    peak RSS (VmHWM) of each daemon
#   lag    replication lag p50/p99 at a steady 200 files/s (4 writers) for 30 s (regionfs metrics)
#   rss-1x, rss-10x, rss-10x-ls
#          regionfs peak RSS on one mount after N small files (uploaded and replicated),
#          after 10 × N, and after `ls -l` of all of them (--rss-files N, default --files;
#          0 skips it)
#   idle-1x, idle-10x
#          regionfs RSS (VmRSS) 11 s after the 1 × and 10 × batches were replicated:
#          what stays resident between bursts
#   scale  `tar -xpf` of a generated source-like tree (10 files of 100 B–64 KiB per
#          directory) of each --scale size, on a fresh mount, local disk and rclone
#          mount side by side: µs per file to the end of tar (tar-N-per-file), time
#          until all are in the bucket and replicated (regionfs), cold `ls -lR` of
#          the tree on a fresh mount, `find -newer` of it on another fresh mount,
#          peak RSS, and the journal's bytes per replicated file once all is
#          replicated (journal-N-bytes-per-file); then the same tar with uploads
#          held (write_back_delay 1h), kill -9 of the daemon, and the time a
#          remount takes until `stat` of the root answers with all N pending
#          (tar-N-remount-pending)
#   apps   (phase apps) what users run, on local disk, regionfs, rclone mount and
#          s3fs, each on a fresh mount and its own bucket:
#          tar-exit, tar-durable, tar-versions: `tar -xf` of a generated source tree
#            (--tree-files files, log-normal sizes 100 B-1 MiB, 10 per directory,
#            modes and mtimes set by tar): time to tar's exit, until all objects
#            are in the bucket (raw: a 16-thread PUT of the same files), and
#            versions per object (tar's chmod/utime after close make none);
#            local-fsync extracts with an fsync before each close
#          git-clone, git-fsck: `git clone` of a local repository of 2,000 files
#            (two commits), then `git fsck --full` on the mount (a failure is noted)
#          randwrite-iops: 4 KiB writes at random offsets of a 256 MiB file, one at
#            a time, then fsync: writes per second
#          small-busy-close, small-busy-durable: N small files written right after
#            the big file's dd returns, while its upload and replication run
#          ls-foreign: cold `ls -l` of N small files a raw client PUT into the
#            bucket (no attribute index of this mount's making exists for them)
#   baseline
#          with REGIONFS_BENCH_BASELINE=PATH (a regionfs binary built from an
#          earlier commit), the peers phase runs that binary too, right after
#          this build, as system `baseline`, and prints its ratios and this
#          build's against it; REGIONFS_BENCH_BIN=PATH replaces this build
#   cpu-1g (phase cpu) daemon CPU seconds to take the big file from its write
#          (dd conv=fsync) to durable and replicated, on a fresh mount; with
#          REGIONFS_BENCH_BASELINE=PATH (a regionfs binary built from an earlier
#          commit) that binary runs the same, alternating, as `baseline`
# Prints a table of medians (min–max) and ratios; writes raw results to --out
# (default: bench-results.txt) and charts of them (scripts/bench_charts.py) to
# the directory named like --out without .txt, plus "-charts". Installs rclone and s3fs from Debian if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

reps=3 big_mib=1024 files=2000 out=bench-results.txt rss_files= phases="peers apps lag rss scale" scale="1000 10000 100000" tree_files=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps=$2; shift ;;
    --big-mib) big_mib=$2; shift ;;
    --files) files=$2; shift ;;
    --out) out=$2; shift ;;
    --rss-files) rss_files=$2; shift ;;
    --phases) phases=$2; shift ;;
    --scale) scale=$2; shift ;;
    --tree-files) tree_files=$2; shift ;;
    *) sed -n '2,70p' "$0"; exit 2 ;;
  esac
  shift
done

missing=()
command -v rclone >/dev/null || missing+=(rclone)
command -v s3fs >/dev/null || missing+=(s3fs)
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v git >/dev/null || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
bash scripts/test.sh --setup-only
[ -n "${REGIONFS_BENCH_BIN:-}" ] || cargo build --release --locked -q
bin=${REGIONFS_BENCH_BIN:-$repo/target/release/regionfs}
export REGIONFS_VENV=${REGIONFS_VENV:-$repo/.venv}
py="$REGIONFS_VENV/bin/python $repo/scripts/bench_helper.py"
# The charts of docs/BENCHMARKS.md are drawn from the raw results.
"$REGIONFS_VENV/bin/python" -c 'import matplotlib' 2>/dev/null || "$REGIONFS_VENV/bin/pip" install -q matplotlib

work=$(mktemp -d /tmp/regionfs-bench.XXXXXX)
export REGIONFS_REGIONS_DIR=$work/regions REGIONFS_PORT_A=${REGIONFS_PORT_A:-19330} REGIONFS_PORT_B=${REGIONFS_PORT_B:-19340}
A=http://127.0.0.1:$REGIONFS_PORT_A B=http://127.0.0.1:$REGIONFS_PORT_B
export AWS_ACCESS_KEY_ID=regionfs AWS_SECRET_ACCESS_KEY=regionfs-secret AWS_EC2_METADATA_DISABLED=true
unset AWS_CA_BUNDLE
mounts=() pids=()
cleanup() {
  # What was measured survives a failed run.
  [ -f "$work/results" ] && [ ! -f "$out.raw" ] && cp "$work/results" "$out.raw.partial"
  for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # A daemon still draining uploads to regions about to stop would wait
  # out its drain: what is left of the bench goes with it.
  sleep 2
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  bash scripts/regions.sh stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
bash scripts/regions.sh start >/dev/null

phase() { case " $phases " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.3f", a - b }'; }
add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }
record() { echo "$1 $2 $3" >> "$work/results"; }   # workload system seconds
status_mib() { awk -v f="$2:" '$1 == f {print $2/1024}' "/proc/$1/status" 2>/dev/null || echo 0; }   # pid field
peak_rss() { status_mib "$1" VmHWM; }
now_rss() { status_mib "$1" VmRSS; }
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }   # user+system

# On a fresh mount of what a system wrote: cold and warm reads of the big file,
# cold and warm `ls -l` of the small files, rename of one 100-file directory.
read_phase() { # system mountpoint
  local sys=$1 m=$2 t
  t=$(now); cat "$m/big" > /dev/null; record read-cold "$sys" "$(since $t)"
  for _ in 1 2 3; do
    t=$(now); cat "$work/local.big" > /dev/null; record read-warm local-read "$(since $t)"
    t=$(now); cat "$m/big" > /dev/null; record read-warm "$sys" "$(since $t)"
  done
  t=$(now); ls -l "$m"/small/d*/ > /dev/null; record ls-cold "$sys" "$(since $t)"
  t=$(now); ls -l "$m"/small/d*/ > /dev/null; record ls-warm "$sys" "$(since $t)"
  t=$(now); mv "$m/small/d0" "$m/small/moved"; ls -l "$m/small/moved" > /dev/null; record rename-dir "$sys" "$(since $t)"
}

{ phase peers || phase cpu || phase apps; } && head -c $((big_mib << 20)) /dev/urandom > "$work/big.src"
per_dir=$((files / 20))
total_small=$((per_dir * 20))
echo "rclone 1.60 / s3fs 1.90 / SeaweedFS $("$REGIONFS_VENV/bin/weed" version 2>/dev/null | awk '{print $3}')" > "$work/versions"
echo "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" > "$work/s3fs.passwd"
chmod 600 "$work/s3fs.passwd"

wait_mounted() { for _ in $(seq 1 600); do mountpoint -q "$1" && return 0; sleep 0.05; done; echo "not mounted: $1" >&2; return 1; }

mount_regionfs() { # bucket dest-bucket mountpoint cache [extra-config]
  cat > "$work/rfs.toml" <<EOF
[source]
name = "a"
region = "us-east-1"
bucket = "$1"
endpoint = "$A"
[[destination]]
name = "b"
region = "eu-west-1"
bucket = "$2"
endpoint = "$B"
[[rule]]
id = "all"
destination = "b"
[cache]
dir = "$4"
max_size = "8GiB"
${cache_extra:-}
[durability]
fsync = "local"
${5:-}
EOF
  mkdir -p "$3"
  "$bin" mount --config "$work/rfs.toml" "$3" > "$work/regionfs.log" 2>&1 &
  rfs_pid=$!; pids+=("$rfs_pid"); mounts+=("$3")
  wait_mounted "$3"
}

mount_rclone() { # bucket mountpoint
  mkdir -p "$2"
  RCLONE_CONFIG_A_TYPE=s3 RCLONE_CONFIG_A_PROVIDER=Other RCLONE_CONFIG_A_ENDPOINT=$A \
  RCLONE_CONFIG_A_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_A_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
    rclone mount "a:$1" "$2" --vfs-cache-mode writes --cache-dir "$work/rclone-cache" > "$work/rclone.log" 2>&1 &
  rc_pid=$!; pids+=("$rc_pid"); mounts+=("$2")
  wait_mounted "$2"
}

mount_s3fs() { # bucket mountpoint
  mkdir -p "$2"
  s3fs "$1" "$2" -f -o url=$A,use_path_request_style,passwd_file=$work/s3fs.passwd > "$work/s3fs.log" 2>&1 &
  s3_pid=$!; pids+=("$s3_pid"); mounts+=("$2")
  wait_mounted "$2"
}

unmount() { umount "$1" 2>/dev/null || umount -l "$1"; }
# A peer that never gets its objects into the bucket (rclone once stalled
# here) costs its row, not the run: 15 minutes, then a note in the output.
peer_wait() { # system bucket prefix files bytes
  local sys=$1; shift
  $py wait $A "$@" 900 && return 0
  echo "# $sys: $1/$2 not all in the bucket after 15 min; row left out" >> "$work/versions"
  return 1
}
# Until the current regionfs mount has nothing left to upload or replicate.
settled() {
  until { "$bin" status --config "$work/rfs.toml" --json || true; } | grep -q '"uploads":{"pending":0,.*"b":{[^}]*"pending":0,'; do sleep 0.1; done
}

# CPU ticks the two SeaweedFS servers used in 0.5 s.
weed_ticks() {
  local t=0 p
  for p in $(cat "$REGIONFS_REGIONS_DIR"/*/pid 2>/dev/null); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
# Before every timed 1 GiB write: the SeaweedFS servers idle (under 5 % of a
# CPU for half a second; at most 60 s), then `sync` (an fsync otherwise waits
# behind the writeback of what the previous phase left dirty) and, as root,
# the page cache emptied and the two files the phases read from memory read
# back in. Without the wait, whichever system wrote while SeaweedFS was still
# busy with an earlier phase's objects (its CPU and the disk's journal) paid
# for it: a regionfs `dd` took 1.2-5.8 s in some rounds, while the same `dd`
# took 0.6-0.8 s in others on the same mount, and the servers used up to
# 1.4 s of CPU during the slow ones (2026-12-06).
settle() {
  local i a b
  for i in $(seq 1 120); do
    a=$(weed_ticks); sleep 0.5; b=$(weed_ticks)
    [ $((b - a)) -le 2 ] && break
  done
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then
    echo 1 > /proc/sys/vm/drop_caches
    cat "$work/big.src" "$work/local.big" > /dev/null 2>&1 || true
  fi
}

# One regionfs build through the peers workloads: system name, bucket (in
# both regions); $bin is the binary.
peers_regionfs() { # system bucket
  local sys=$1 bkt=$2
  mnt=$work/mnt-rfs; cache=$work/cache-$bkt
  mount_regionfs "$bkt" "$bkt" "$mnt" "$cache"
  t0=$(now)
  settle; t=$(now); dd if="$work/big.src" of="$mnt/big" bs=1M conv=fsync status=none; record big-close "$sys" "$(since $t)"
  $py wait $A "$bkt" big 1 $((big_mib << 20)); record big-durable "$sys" "$(since $t)"
  mkdir -p "$mnt/small"; s=$($py write-small "$mnt/small" 20 $per_dir 4096); record small-close "$sys" "$s"
  t=$(now); $py wait $A "$bkt" small/ $total_small $((total_small * 4096)); record small-durable "$sys" "$(add "$(since $t)" "$s")"
  writes_done=$(now)
  settled
  record repl "$sys" "$(since $writes_done)"
  record repl-total "$sys" "$(since $t0)"
  record rss "$sys" "$(peak_rss $rfs_pid)"
  cpu=$(cpu_s $rfs_pid)
  unmount "$mnt"; wait "$rfs_pid" || true
  # reads through a fresh mount (its clean cache is emptied at start)
  mount_regionfs "$bkt" "$bkt" "$mnt" "$cache"
  read_phase "$sys" "$mnt"
  record cpu "$sys" "$(add "$cpu" "$(cpu_s $rfs_pid)")"
  unmount "$mnt"; wait "$rfs_pid" || true
  rm -rf "$cache"
}

asked_reps=$reps reps_apps=$reps; phase peers || reps=0
for rep in $(seq 1 "$reps"); do
  echo "== repetition $rep of $reps"
  $py mkbuckets $A "rfs$rep" "rc$rep" "s3$rep" "raw$rep" ${REGIONFS_BENCH_BASELINE:+"base$rep"}
  $py mkbuckets $B "rfs$rep" "sync$rep" ${REGIONFS_BENCH_BASELINE:+"base$rep"}

  # local disk
  settle; t=$(now); dd if="$work/big.src" of="$work/local.big" bs=1M conv=fsync status=none; s=$(since $t)
  record big-close local "$s"; record big-durable local "$s"
  mkdir -p "$work/local.small"; s=$($py write-small "$work/local.small" 20 $per_dir 4096); sync
  record small-close local "$s"; record small-durable local "$s"
  rm -rf "$work/local.small"; mkdir -p "$work/local.small"
  s=$($py write-small "$work/local.small" 20 $per_dir 4096 fsync); record small-close local-fsync "$s"
  # local.big stays (in the page cache) as the warm-read baseline of each read phase
  cat "$work/local.big" > /dev/null
  rm -rf "$work/local.small"

  # raw parallel S3 client
  t=$(now); $py put-big $A "raw$rep" big "$work/big.src"; s=$(since $t); record big-durable raw "$s"
  mkdir -p "$work/small.src"; $py write-small "$work/small.src" 20 $per_dir 4096 >/dev/null
  t=$(now); $py put-small $A "raw$rep" small/ "$work/small.src"; s=$(since $t); record small-durable raw "$s"
  t=$(now); $py get $A "raw$rep" big "$work/raw.get"; s=$(since $t); record read-cold raw "$s"; rm -f "$work/raw.get"
  t=$(now); $py get-ranged $A "raw$rep" big "$work/raw.get"; s=$(since $t); record read-cold raw-ranged "$s"; rm -f "$work/raw.get"
  t=$(now)
  RCLONE_CONFIG_A_TYPE=s3 RCLONE_CONFIG_A_PROVIDER=Other RCLONE_CONFIG_A_ENDPOINT=$A \
  RCLONE_CONFIG_A_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_A_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
  RCLONE_CONFIG_B_TYPE=s3 RCLONE_CONFIG_B_PROVIDER=Other RCLONE_CONFIG_B_ENDPOINT=$B \
  RCLONE_CONFIG_B_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_B_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
    rclone sync "a:raw$rep" "b:sync$rep" --transfers 16 > "$work/rclone-sync.log" 2>&1
  record repl rclone-sync "$(since $t)"

  peers_regionfs regionfs "rfs$rep"
  if [ -n "${REGIONFS_BENCH_BASELINE:-}" ]; then
    own_bin=$bin bin=$REGIONFS_BENCH_BASELINE
    peers_regionfs baseline "base$rep"
    bin=$own_bin
  fi

  # rclone mount
  mnt=$work/mnt-rc
  mount_rclone "rc$rep" "$mnt"
  settle; t=$(now); dd if="$work/big.src" of="$mnt/big" bs=1M conv=fsync status=none; record big-close rclone "$(since $t)"
  peer_wait rclone "rc$rep" big 1 $((big_mib << 20)) && record big-durable rclone "$(since $t)"
  mkdir -p "$mnt/small"; s=$($py write-small "$mnt/small" 20 $per_dir 4096); record small-close rclone "$s"
  t=$(now); peer_wait rclone "rc$rep" small/ $total_small $((total_small * 4096)) && record small-durable rclone "$(add "$(since $t)" "$s")"
  record rss rclone "$(peak_rss $rc_pid)"
  cpu=$(cpu_s $rc_pid)
  unmount "$mnt"; wait "$rc_pid" 2>/dev/null || true
  mount_rclone "rc$rep" "$mnt"
  read_phase rclone "$mnt"
  record cpu rclone "$(add "$cpu" "$(cpu_s $rc_pid)")"
  unmount "$mnt"; wait "$rc_pid" 2>/dev/null || true

  # s3fs
  mnt=$work/mnt-s3
  mount_s3fs "s3$rep" "$mnt"
  settle; t=$(now); dd if="$work/big.src" of="$mnt/big" bs=1M conv=fsync status=none; record big-close s3fs "$(since $t)"
  peer_wait s3fs "s3$rep" big 1 $((big_mib << 20)) && record big-durable s3fs "$(since $t)"
  mkdir -p "$mnt/small"; s=$($py write-small "$mnt/small" 20 $per_dir 4096); record small-close s3fs "$s"
  t=$(now); peer_wait s3fs "s3$rep" small/ $total_small $((total_small * 4096)) && record small-durable s3fs "$(add "$(since $t)" "$s")"
  record rss s3fs "$(peak_rss $s3_pid)"
  cpu=$(cpu_s $s3_pid)
  unmount "$mnt"; wait "$s3_pid" 2>/dev/null || true
  mount_s3fs "s3$rep" "$mnt"
  read_phase s3fs "$mnt"
  record cpu s3fs "$(add "$cpu" "$(cpu_s $s3_pid)")"
  unmount "$mnt"; wait "$s3_pid" 2>/dev/null || true
  rm -rf "$work/small.src" "$work/rclone-cache" "$work/local.big"
  # Each bucket is a SeaweedFS collection with volumes of its own: freed with it.
  $py rmbuckets $A "rfs$rep" "rc$rep" "s3$rep" "raw$rep" ${REGIONFS_BENCH_BASELINE:+"base$rep"}
  $py rmbuckets $B "rfs$rep" "sync$rep" ${REGIONFS_BENCH_BASELINE:+"base$rep"}
done


# What users run (phase apps): tar, git, random writes, small files while a
# large one is still uploading and replicating, and `ls` of a directory
# another client wrote. Each system on a fresh mount of its own bucket.
if phase apps; then
  rm -rf "$work/src"; mkdir -p "$work/src"
  tree_bytes=$($py mksrc "$work/src" "$tree_files")
  tar -C "$work/src" -cf "$work/src.tar" .
  # The git source: the first 2,000 files of the tree, in two commits.
  git init -q "$work/gitsrc"
  for d in p00 p01; do [ -d "$work/src/$d" ] && cp -r "$work/src/$d" "$work/gitsrc/"; done
  git -C "$work/gitsrc" add -A
  git -C "$work/gitsrc" -c user.name=bench -c user.email=bench@localhost commit -qm one
  find "$work/gitsrc/p01" -name '*.md' -exec sh -c 'echo changed >> "$1"' _ {} \;
  git -C "$work/gitsrc" -c user.name=bench -c user.email=bench@localhost commit -qam two
  rm -rf "$work/src"
  mkdir -p "$work/foreign.src"; $py write-small "$work/foreign.src" 20 $per_dir 4096 > /dev/null

  # system mountpoint bucket (none for local disk)
  apps_on() {
    local sys=$1 m=$2 bkt=$3 t s
    mkdir -p "$m/tar"
    settle; t=$(now)
    # A peer that cannot set some attributes (s3fs on directories) keeps its row, with a note.
    tar -xf "$work/src.tar" -C "$m/tar" 2> "$work/tar.err" || echo "# $sys: tar: $(sort -u "$work/tar.err" | wc -l) errors, e.g. $(head -1 "$work/tar.err")" >> "$work/versions"
    s=$(since $t); record tar-exit "$sys" "$s"
    if [ -n "$bkt" ]; then
      peer_wait "$sys" "$bkt" tar/ "$tree_files" "$tree_bytes" && record tar-durable "$sys" "$(since $t)"
      record tar-versions "$sys" "$($py versions $A "$bkt" tar/)"
    else
      t=$(now); sync; record tar-durable "$sys" "$(add "$s" "$(since $t)")"
    fi
    settle; t=$(now); git clone -q --no-hardlinks "$work/gitsrc" "$m/repo"; record git-clone "$sys" "$(since $t)"
    t=$(now)
    if git -C "$m/repo" fsck --full > "$work/fsck.log" 2>&1; then
      record git-fsck "$sys" "$(since $t)"
    else
      echo "# $sys: git fsck failed: $(head -c 300 "$work/fsck.log" | tr '\n' ' ')" >> "$work/versions"
    fi
    dd if="$work/big.src" of="$m/rand" bs=1M count=256 conv=fsync status=none
    settle; record randwrite-iops "$sys" "$($py randwrite "$m/rand" 256 20000)"
    # No settle: the small files follow the big file's dd at once.
    dd if="$work/big.src" of="$m/busy-big" bs=1M conv=fsync status=none
    mkdir -p "$m/busy"; s=$($py write-small "$m/busy" 20 $per_dir 4096); record small-busy-close "$sys" "$s"
    if [ -n "$bkt" ]; then
      t=$(now); peer_wait "$sys" "$bkt" busy/ $total_small $((total_small * 4096)) && record small-busy-durable "$sys" "$(add "$(since $t)" "$s")"
    fi
  }

  for rep in $(seq 1 "$reps_apps"); do
    echo "== apps, repetition $rep of $reps_apps"
    $py mkbuckets $A "apprfs$rep" "apprc$rep" "apps3$rep" "appraw$rep" "foreign$rep"
    $py mkbuckets $B "apprfs$rep" "foreign$rep"
    rm -rf "$work/local.apps"; mkdir -p "$work/local.apps"
    apps_on local "$work/local.apps" ""
    rm -rf "$work/local.fsync"; mkdir -p "$work/local.fsync"
    settle; record tar-exit local-fsync "$($py untar-fsync "$work/src.tar" "$work/local.fsync")"
    rm -rf "$work/local.fsync"
    settle; t=$(now); $py put-tree $A "appraw$rep" tar/ "$work/local.apps/tar"; record tar-durable raw "$(since $t)"
    rm -rf "$work/local.apps"

    mnt=$work/mnt-apps-rfs; cache=$work/cache-apps$rep
    mount_regionfs "apprfs$rep" "apprfs$rep" "$mnt" "$cache"
    apps_on regionfs "$mnt" "apprfs$rep"
    unmount "$mnt"; wait "$rfs_pid" || true; rm -rf "$cache"
    mnt=$work/mnt-apps-rc
    mount_rclone "apprc$rep" "$mnt"
    apps_on rclone "$mnt" "apprc$rep"
    unmount "$mnt"; wait "$rc_pid" 2>/dev/null || true; rm -rf "$work/rclone-cache"
    mnt=$work/mnt-apps-s3
    mount_s3fs "apps3$rep" "$mnt"
    apps_on s3fs "$mnt" "apps3$rep"
    unmount "$mnt"; wait "$s3_pid" 2>/dev/null || true

    # A directory another client wrote: cold `ls -l` through a fresh mount.
    $py put-small $A "foreign$rep" small/ "$work/foreign.src"
    mnt=$work/mnt-foreign; cache=$work/cache-foreign$rep
    mount_regionfs "foreign$rep" "foreign$rep" "$mnt" "$cache"
    settle; t=$(now); ls -l "$mnt"/small/d*/ > /dev/null; record ls-foreign regionfs "$(since $t)"
    unmount "$mnt"; wait "$rfs_pid" || true; rm -rf "$cache"
    mount_s3fs "foreign$rep" "$mnt"
    settle; t=$(now); ls -l "$mnt"/small/d*/ > /dev/null; record ls-foreign s3fs "$(since $t)"
    unmount "$mnt"; wait "$s3_pid" 2>/dev/null || true
    mount_rclone "foreign$rep" "$mnt"
    settle; t=$(now); ls -l "$mnt"/small/d*/ > /dev/null; record ls-foreign rclone "$(since $t)"
    unmount "$mnt"; wait "$rc_pid" 2>/dev/null || true
    $py rmbuckets $A "apprfs$rep" "apprc$rep" "apps3$rep" "appraw$rep" "foreign$rep"
    $py rmbuckets $B "apprfs$rep" "foreign$rep"
  done
  rm -rf "$work/src.tar" "$work/gitsrc" "$work/foreign.src"
fi

# Replication lag at a steady load: 200 files/s of 4 KiB for 30 s (4 writer threads
# at 50 files/s each: one writer alone cannot close 200 durable files/s), from close to
# replica present (the regionfs_replication_lag_seconds histogram).
if phase lag; then
$py mkbuckets $A lag; $py mkbuckets $B lag
port=$((REGIONFS_PORT_A + 50))
mnt=$work/mnt-lag
mount_regionfs lag lag "$mnt" "$work/cache-lag" "$(printf '[metrics]\nlisten = "127.0.0.1:%s"' "$port")"
n=$($py steady "$mnt/steady" 200 30 4096)
settled
read -r count p50 p99 <<< "$($py lag "http://127.0.0.1:$port/metrics" b)"
# The whole histogram, for the chart of its distribution.
"$REGIONFS_VENV/bin/python" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' \
  "http://127.0.0.1:$port/metrics" | grep '^regionfs_replication_lag_seconds_bucket' > "$out.lag-histogram" || true
echo "lag-p50 regionfs $p50" >> "$work/results"; echo "lag-p99 regionfs $p99" >> "$work/results"
echo "# steady load: $n files written in 30 s; $count replicated; replication lag p50 ${p50}s p99 ${p99}s" >> "$work/versions"
unmount "$mnt"; wait "$rfs_pid" || true
$py rmbuckets $A lag; $py rmbuckets $B lag
fi

# Memory as the file count grows: N files, then 9 × N more (10 × in all), each
# batch uploaded and replicated, then `ls -l` of them all; peak RSS after each.
rss_files=${rss_files:-$files}
if phase rss && [ "$rss_files" -gt 0 ]; then
  $py mkbuckets $A mem; $py mkbuckets $B mem
  mnt=$work/mnt-mem
  mount_regionfs mem mem "$mnt" "$work/cache-mem"
  in_bucket() { $py wait $A mem "" "$1" "$2"; settled; } # files bytes
  per=$((rss_files / 20))
  mkdir -p "$mnt/one" "$mnt/nine"
  $py write-small "$mnt/one" 20 $per 4096 > /dev/null
  in_bucket $((per * 20)) $((per * 20 * 4096))
  record rss-1x regionfs "$(peak_rss $rfs_pid)"
  # two of the daemon's heap trims (every 5 s) after the batch was replicated
  sleep 11; record idle-1x regionfs "$(now_rss $rfs_pid)"
  $py write-small "$mnt/nine" 20 $((per * 9)) 4096 > /dev/null
  in_bucket $((per * 200)) $((per * 200 * 4096))
  record rss-10x regionfs "$(peak_rss $rfs_pid)"
  sleep 11; record idle-10x regionfs "$(now_rss $rfs_pid)"
  ls -lR "$mnt" > /dev/null
  record rss-10x-ls regionfs "$(peak_rss $rfs_pid)"
  unmount "$mnt"; wait "$rfs_pid" || true
  $py rmbuckets $A mem; $py rmbuckets $B mem
fi

# Many files: tar -xpf of 1,000 … 100,000 files, the per-file cost at each size
# (flat is the target), then what the mount holds once all is replicated.
# Every file waiting for its upload holds a descriptor: the hard limit is
# raised (as `LimitNOFILE=` would) so 100,000 of them fit.
# Columns: seconds, RSS (KiB), uploads pending, replicas pending, anonymous
# RSS (KiB): the heap and stacks, without the program's own code pages, which
# count in VmRSS as they are first run (clean pages of the binary).
rss_trace() { # pid file: RSS (KiB) and backlogs every 5 s while the daemon runs
  local t0; t0=$(now)
  while kill -0 "$1" 2>/dev/null; do
    echo "$(since $t0) $(awk '/^VmRSS:/ {print $2}' /proc/$1/status 2>/dev/null) $("$bin" status --config "$work/rfs.toml" --json 2>/dev/null | sed -n 's/.*"uploads":{"pending":\([0-9]*\).*"b":{[^}]*"pending":\([0-9]*\).*/\1 \2/p') $(awk '/^RssAnon:/ {print $2}' /proc/$1/status 2>/dev/null)" >> "$2"
    sleep 5
  done
}
if phase scale; then
  ulimit -Hn 1048576 2>/dev/null && ulimit -n 1048576 2>/dev/null || true
  for n in $scale; do
    rm -rf "$work/tree"; mkdir -p "$work/tree"
    bytes=$($py mktree "$work/tree" "$n")
    tar -C "$work/tree" -cf "$work/tree.tar" .
    rm -rf "$work/tree"
    per_file() { awk -v s="$1" -v n="$n" 'BEGIN { printf "%.0f", s * 1e6 / n }'; }

    mkdir -p "$work/local.tree"
    settle; t=$(now); tar -xpf "$work/tree.tar" -C "$work/local.tree"; sync
    record "tar-$n-per-file" local "$(per_file "$(since $t)")"
    rm -rf "$work/local.tree"

    $py mkbuckets $A "scale$n" "scalerc$n"; $py mkbuckets $B "scale$n"
    mnt=$work/mnt-scale; cache=$work/cache-scale$n
    mount_regionfs "scale$n" "scale$n" "$mnt" "$cache"
    rss_trace "$rfs_pid" "$out.rss-$n" & trace_pid=$!; pids+=("$trace_pid")
    settle; t=$(now); tar -xpf "$work/tree.tar" -C "$mnt"
    s=$(since $t); record "tar-$n-per-file" regionfs "$(per_file "$s")"
    settled
    record "tar-$n-replicated" regionfs "$(since $t)"
    record "tar-$n-rss" regionfs "$(peak_rss $rfs_pid)"
    record "tar-$n-rss-anon" regionfs "$(awk 'NF >= 5 && $5 > m { m = $5 } END { printf "%.1f", m / 1024 }' "$out.rss-$n")"
    unmount "$mnt"; wait "$rfs_pid" || true
    journal=$(du -cb "$cache"/journal.db* | tail -1 | cut -f1)
    record "journal-$n-bytes-per-file" regionfs "$((journal / n))"
    mount_regionfs "scale$n" "scale$n" "$mnt" "$cache"
    settle; t=$(now); ls -lR "$mnt" > /dev/null; record "tar-$n-ls-lR" regionfs "$(since $t)"
    unmount "$mnt"; wait "$rfs_pid" || true
    touch -d '2000-01-01' "$work/newer-than"
    mount_regionfs "scale$n" "scale$n" "$mnt" "$cache"
    settle; t=$(now); found=$(find "$mnt" -newer "$work/newer-than" | wc -l)
    record "tar-$n-find-newer" regionfs "$(since $t)"
    [ "$found" -gt "$n" ] || echo "# find -newer found $found of $n files" >> "$work/versions"
    unmount "$mnt"; wait "$rfs_pid" || true
    rm -rf "$cache"

    # Recovery: the tar with uploads held, kill -9, remount.
    $py mkbuckets $A "scalep$n"
    cache=$work/cache-pend$n
    cache_extra='write_back_delay = "1h"' mount_regionfs "scalep$n" "scale$n" "$mnt" "$cache"
    tar -xpf "$work/tree.tar" -C "$mnt"
    kill -9 "$rfs_pid"; wait "$rfs_pid" 2>/dev/null || true
    fusermount3 -uz "$mnt"
    settle; t=$(now)
    cache_extra='write_back_delay = "1h"' mount_regionfs "scalep$n" "scale$n" "$mnt" "$cache"
    stat "$mnt" > /dev/null; record "tar-$n-remount-pending" regionfs "$(since $t)"
    # status exits 2 or 3 when something failed or is overdue: the count is what matters here.
    pending=$({ "$bin" status --config "$work/rfs.toml" --json || true; } | sed -n 's/.*"uploads":{"pending":\([0-9]*\).*/\1/p')
    echo "# remount after kill -9 with $pending uploads pending ($n files)" >> "$work/versions"
    kill -9 "$rfs_pid"; wait "$rfs_pid" 2>/dev/null || true
    fusermount3 -uz "$mnt"
    rm -rf "$cache"

    mnt=$work/mnt-scalerc
    mount_rclone "scalerc$n" "$mnt"
    settle; t=$(now); tar -xpf "$work/tree.tar" -C "$mnt"
    record "tar-$n-per-file" rclone "$(per_file "$(since $t)")"
    peer_wait rclone "scalerc$n" "" "$n" "$bytes" && record "tar-$n-durable" rclone "$(since $t)"
    unmount "$mnt"; wait "$rc_pid" 2>/dev/null || true
    rm -rf "$work/rclone-cache" "$work/tree.tar"
    $py rmbuckets $A "scale$n" "scalerc$n" "scalep$n"; $py rmbuckets $B "scale$n"
  done
fi

if phase cpu; then
  own_bin=$bin
  for rep in $(seq 1 "$asked_reps"); do
    for sys in regionfs ${REGIONFS_BENCH_BASELINE:+baseline}; do
      bin=$own_bin; [ "$sys" = baseline ] && bin=$REGIONFS_BENCH_BASELINE
      $py mkbuckets $A "cpu$sys$rep"; $py mkbuckets $B "cpu$sys$rep"
      mnt=$work/mnt-cpu
      mount_regionfs "cpu$sys$rep" "cpu$sys$rep" "$mnt" "$work/cache-cpu-$sys$rep"
      settle
      cpu=$(cpu_s $rfs_pid)
      dd if="$work/big.src" of="$mnt/big" bs=1M conv=fsync status=none
      $py wait $A "cpu$sys$rep" big 1 $((big_mib << 20))
      settled
      record cpu-1g "$sys" "$(awk -v a="$(cpu_s $rfs_pid)" -v b="$cpu" 'BEGIN { printf "%.2f", a - b }')"
      unmount "$mnt"; wait "$rfs_pid" || true
      rm -rf "$work/cache-cpu-$sys$rep"
      $py rmbuckets $A "cpu$sys$rep"; $py rmbuckets $B "cpu$sys$rep"
    done
  done
  bin=$own_bin
fi

cp "$work/results" "$out.raw"
{
  echo "# scripts/bench.sh --reps $asked_reps --big-mib $big_mib --files $files --phases \"$phases\" --scale \"$scale\"  ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(git rev-parse --short HEAD)${REGIONFS_BENCH_BIN:+; regionfs: $REGIONFS_BENCH_BIN}${REGIONFS_BENCH_BASELINE:+; baseline: $REGIONFS_BENCH_BASELINE})"
  cat "$work/versions"
} > "$out"
$REGIONFS_VENV/bin/python - "$work/results" >> "$out" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    w, s, v = line.split()
    rows.setdefault((w, s), []).append(float(v))
med = {k: statistics.median(v) for k, v in rows.items()}
print("# workload       system          median       min       max   (seconds; rss in MiB; cpu: daemon CPU seconds)")
for (w, s), v in sorted(rows.items()):
    print(f"{w:<16} {s:<13} {med[(w, s)]:9.3f} {min(v):9.3f} {max(v):9.3f}")
print("\n# ratios of medians [target]")
def ratio(label, num, den, target):  # num, den: (workload, system) rows
    if num in med and den in med and med[den] > 0:
        print(f"{label:<16} {num[1]}/{den[0] if num[1] == den[1] else den[1]:<12} {med[num] / med[den]:6.2f}   [{target}]")
def r(w, a, b, target):
    ratio(w, (w, a), (w, b), target)
def peers(sys):
    r("big-close", sys, "local", "<= 1.25")
    r("big-durable", sys, "raw", "<= 1.15")
    r("small-close", sys, "rclone", "<= 1.0")
    r("small-close", sys, "local-fsync", "<= 3.0")
    r("small-durable", sys, "raw", "<= 1.2")
    r("repl", sys, "rclone-sync", "<= 0.7")
    ratio("repl-total", ("repl-total", sys), ("repl", "rclone-sync"), "first write to last replica")
    r("ls-cold", sys, "s3fs", "<= 0.5")
    if ("read-cold", "raw") in med and ("read-cold", "raw-ranged") in med:
        best = min(("raw", "raw-ranged"), key=lambda s: med[("read-cold", s)])
        r("read-cold", sys, best, "<= 1.11 (throughput >= 0.9 x the raw client's best)")
    else:
        r("read-cold", sys, "raw", "<= 1.11 (throughput >= 0.9 x raw)")
    r("read-warm", sys, "local-read", "<= 1.25 (throughput >= 0.8 x local)")
    r("ls-warm", sys, "s3fs", "")
    r("rename-dir", sys, "s3fs", "")
    r("rss", sys, "rclone", "")
peers("regionfs")
def apps(sys):
    r("tar-exit", sys, "rclone", "<= 1.0")
    r("tar-exit", sys, "local-fsync", "")
    r("tar-exit", sys, "local", "")
    r("tar-durable", sys, "raw", "<= 1.3")
    if ("tar-versions", sys) in med:
        print(f"{'tar-versions':<16} {sys:<13} {med[('tar-versions', sys)]:6.2f}   [1.00 versions per object]")
    r("git-clone", sys, "rclone", "<= 1.0 (and fsck clean)")
    r("git-clone", sys, "local", "")
    ratio("randwrite-iops", ("randwrite-iops", sys), ("randwrite-iops", "local"), ">= 0.8 (IOPS)")
    ratio("randwrite-iops", ("randwrite-iops", sys), ("randwrite-iops", "rclone"), "(IOPS)")
    r("small-busy-close", sys, "rclone", "<= 1.0")
    r("small-busy-close", sys, "local", "")
    r("small-busy-durable", sys, "rclone", "")
    r("ls-foreign", sys, "s3fs", "<= 0.5")
    r("ls-foreign", sys, "rclone", "")
apps("regionfs")
if ("big-close", "baseline") in med:
    print("# the same for REGIONFS_BENCH_BASELINE, then this build against it")
    peers("baseline")
    for w in ("big-close", "big-durable", "small-close", "small-durable", "repl", "read-cold",
              "read-warm", "ls-cold", "ls-warm", "rename-dir", "rss", "cpu"):
        r(w, "regionfs", "baseline", "same within noise")
for w in ("rss-10x", "rss-10x-ls"):
    ratio(w, (w, "regionfs"), ("rss-1x", "regionfs"), "flat: ~1")
ratio("idle-10x", ("idle-10x", "regionfs"), ("idle-1x", "regionfs"), "")
r("cpu", "regionfs", "rclone", "regionfs also replicates")
r("cpu-1g", "regionfs", "baseline", "this build against REGIONFS_BENCH_BASELINE")
sizes = sorted({int(w.split("-")[1]) for (w, _) in rows if w.startswith("tar-") and w.endswith("-per-file")})
for n in sizes:
    r(f"tar-{n}-per-file", "regionfs", "rclone", "<= 1.0")
    r(f"tar-{n}-per-file", "regionfs", "local", "")
for n in sizes:
    for w in ("replicated", "ls-lR", "find-newer", "remount-pending"):
        if (f"tar-{n}-{w}", "regionfs") in med:
            print(f"tar-{n}-{w:<16} regionfs {med[(f'tar-{n}-{w}', 'regionfs')]:9.3f} s")
    if (f"tar-{n}-rss", "regionfs") in med:
        print(f"tar-{n}-rss              regionfs {med[(f'tar-{n}-rss', 'regionfs')]:9.1f} MiB   [<= 64]")
    if (f"tar-{n}-rss-anon", "regionfs") in med:
        print(f"tar-{n}-rss-anon         regionfs {med[(f'tar-{n}-rss-anon', 'regionfs')]:9.1f} MiB   [anonymous, 5 s samples]")
    if (f"journal-{n}-bytes-per-file", "regionfs") in med:
        print(f"journal-{n}-bytes-per-file regionfs {med[(f'journal-{n}-bytes-per-file', 'regionfs')]:7.0f}   [<= 300]")
if len(sizes) > 1:
    lo, hi = sizes[0], sizes[-1]
    ratio(f"tar-{hi}-rss/{sizes[-2]}", (f"tar-{hi}-rss", "regionfs"), (f"tar-{sizes[-2]}-rss", "regionfs"), "<= 1.1")
    if (f"tar-{hi}-rss-anon", "regionfs") in med:
        ratio(f"tar-{hi}-rss-anon/{sizes[-2]}", (f"tar-{hi}-rss-anon", "regionfs"), (f"tar-{sizes[-2]}-rss-anon", "regionfs"), "")
    ratio(f"tar-{hi}/{lo}", (f"tar-{hi}-per-file", "regionfs"), (f"tar-{lo}-per-file", "regionfs"), "flat: <= 1.3")
PY
"$REGIONFS_VENV/bin/python" scripts/bench_charts.py "$out.raw" \
  "$([ -f "$out.lag-histogram" ] && echo "$out.lag-histogram" || echo -)" "${out%.txt}-charts" >> "$out"
cat "$out"
