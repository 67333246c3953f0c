#!/usr/bin/env bash
# Installs regionfs where a system looks for it: the binary, the mount helper
# (`mount -t fuse.regionfs`, /etc/fstab), a systemd unit template, shell
# completions (bash, zsh, fish) and the man page.
#
#   scripts/install.sh [--prefix /usr/local] [--bin target/release/regionfs]
#
# Builds the release binary unless --bin names one. DESTDIR=DIR stages
# everything under DIR (packaging; nothing outside it is touched).
#
#   PREFIX/bin/regionfs
#   /sbin/mount.fuse.regionfs -> PREFIX/bin/regionfs
#   /etc/systemd/system/regionfs@.service
#   PREFIX/share/bash-completion/completions/regionfs
#   PREFIX/share/zsh/site-functions/_regionfs
#   PREFIX/share/fish/vendor_completions.d/regionfs.fish
#   PREFIX/share/man/man1/regionfs.1
set -euo pipefail

prefix=/usr/local bin=
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=$2; shift ;;
    --bin) bin=$2; shift ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$bin" ]; then
  (cd "$repo" && cargo build --release --locked -q)
  bin=$repo/target/release/regionfs
fi
d=${DESTDIR:-}
put() { install -D -m "$1" /dev/stdin "$d$2"; } # mode path, from stdin

install -D -m 755 "$bin" "$d$prefix/bin/regionfs"
install -d "$d/sbin" "$d/etc/regionfs"
ln -sfn "$prefix/bin/regionfs" "$d/sbin/mount.fuse.regionfs"
sed "s|@BINDIR@|$prefix/bin|" "$repo/contrib/systemd/regionfs@.service" | put 644 /etc/systemd/system/regionfs@.service
"$bin" completions bash | put 644 "$prefix/share/bash-completion/completions/regionfs"
"$bin" completions zsh | put 644 "$prefix/share/zsh/site-functions/_regionfs"
"$bin" completions fish | put 644 "$prefix/share/fish/vendor_completions.d/regionfs.fish"
"$bin" man | put 644 "$prefix/share/man/man1/regionfs.1"
if [ -z "$d" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "installed regionfs in ${d:-}$prefix/bin, its mount helper, unit, completions and man page"
