#!/usr/bin/env bash
# Proves the README's first command works on a fresh box: a minimal Debian 12 root made by
# debootstrap, with a C compiler, no libclang, and this machine's Rust toolchain bind-mounted
# read-only (the README's prerequisites, nothing more). Crates are fetched from crates.io into
# an empty CARGO_HOME inside the root, as on a new machine. Run as root:
#   bash deploy/test-fresh-box.sh [ROOT_DIR]      (default: a new temporary folder; removed after;
#                                                 a ROOT_DIR given is kept, and reused by a rerun)
# Prints the command's output and exits with its status. Takes a clean release build's time.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ "$(id -u)" -eq 0 ] || { echo "test-fresh-box: must run as root (debootstrap, chroot, mount)" >&2; exit 2; }
command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

root="${1:-}"
keep=1
if [ -z "$root" ]; then root="$(mktemp -d /var/tmp/edge-kd-fresh-box.XXXXXX)"; keep=0; fi
sysroot="$(rustc --print sysroot)"
mounts=()
cleanup() {
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  [ $keep -eq 1 ] || rm -rf --one-file-system "$root"
}
trap cleanup EXIT
bind() { mkdir -p "$2"; mount --bind "$1" "$2"; mounts+=("$2"); [ "${3:-}" != ro ] || mount -o remount,bind,ro "$2"; }

if [ ! -x "$root/usr/bin/gcc" ]; then
  # The mirror this machine's apt uses (none is named here: whatever the box is set up with).
  mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
             | grep -oE '^(URIs:|deb) *[^ ]+' | awk '{print $2}' | grep -v security | head -n 1 || true)
  echo "test-fresh-box: debootstrap bookworm (minbase + gcc, libc6-dev, ca-certificates) into $root"
  debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates bookworm "$root" ${mirror:+"$mirror"} >"$root.debootstrap.log" 2>&1 \
    || { tail -n 20 "$root.debootstrap.log" >&2; exit 1; }
  rm -f "$root.debootstrap.log"
fi

# What a fresh box lacks is the point: say so if this root has libclang anyway.
if ls "$root"/usr/lib/llvm-* "$root"/usr/lib/*/libclang* >/dev/null 2>&1; then
  echo "test-fresh-box: $root has libclang installed; it is not a fresh box" >&2
  exit 1
fi

# The project as a clone would have it: tracked and untracked-but-not-ignored files. A rerun
# on the same ROOT keeps the target/ of the run before (whose build started from nothing).
mkdir -p "$root/src/edge-kd"
find "$root/src/edge-kd" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -c --ignore-failed-read -f - 2>/dev/null) \
  | tar -x -C "$root/src/edge-kd"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# A network that inspects TLS has its own CA in the host's trust store; a box on it would too.
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
bind /proc "$root/proc"
bind /dev "$root/dev"
bind "$sysroot" "$root/opt/rust" ro

echo "test-fresh-box: in $root: cargo run --release -- run models/samples/"
set +e
chroot "$root" /usr/bin/env -i HOME=/root PATH=/opt/rust/bin:/usr/bin:/bin CARGO_HOME=/root/.cargo \
  TERM=dumb bash -c 'cd /src/edge-kd && rustc --version && cargo --version && cargo run --release -- run models/samples/'
status=$?
set -e
echo "test-fresh-box: exit status $status"
exit $status
