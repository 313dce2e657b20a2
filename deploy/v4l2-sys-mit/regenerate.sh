#!/usr/bin/env bash
# Regenerates bindings/<target>.rs by running the upstream v4l2-sys-mit 0.3.0 build script
# (bindgen 0.65.1 over <linux/videodev2.h>) for each target, so the files are exactly what the
# registry crate would generate on a box with libclang.
#   bash deploy/v4l2-sys-mit/regenerate.sh [--check] [TARGET...]
# Default targets: x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu. --check compares instead
# of writing and exits 1 when a file differs. Needs: libclang-dev, linux-libc-dev, and for
# aarch64 libc6-dev-arm64-cross plus `rustup target add aarch64-unknown-linux-gnu`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
: >"$work/src/lib.rs"
cat >"$work/Cargo.toml" <<'TOML'
[package]
name = "v4l2-bindings-gen"
version = "0.0.0"
edition = "2021"
[dependencies]
v4l2-sys-mit = "=0.3.0"
[workspace]
TOML

status=0
for target in "${targets[@]}"; do
  # bindgen passes --target from TARGET; clang also needs that target's headers.
  case "$target" in
    aarch64-unknown-linux-gnu) export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu" ;;
  esac
  cargo build --quiet --manifest-path "$work/Cargo.toml" --target "$target" --target-dir "$work/target"
  generated=$(find "$work/target/$target/debug/build" -path '*v4l2-sys-mit-*/out/v4l2_bindings.rs' | head -n 1)
  [ -n "$generated" ] || { echo "regenerate: no bindings were generated for $target" >&2; exit 1; }
  dest="$here/bindings/$target.rs"
  if [ $check -eq 1 ]; then
    if cmp -s "$generated" "$dest"; then
      echo "$target: up to date"
    else
      echo "$target: differs from what bindgen generates now (run without --check to update)"
      status=1
    fi
  else
    cp "$generated" "$dest"
    echo "$target: wrote $dest"
  fi
done
exit $status
