#!/usr/bin/env bash
# Builds and runs edge-kd's fuzz targets, each for SECONDS on a scratch copy of its seed
# corpus (tests/fuzz/corpus/<target>/ is never written to), with its dictionary
# (tests/fuzz/dict/<target>.dict) when it has one.
#
#   bash tests/fuzz/run.sh SECONDS [TARGET...]      # all targets when none is named
#
# Prints, per target, the executions, exec/s and peak RSS. Exits non-zero when any target
# crashes, panics, goes past the memory ceiling or hangs, after printing the path of the
# input that did it (kept in the scratch dir; copy it to tests/fixtures/fuzz/<target>/ to
# make it a regression test). CI runs `bash tests/fuzz/run.sh 5`.
#
# Environment: FUZZ_RSS_LIMIT_MB (default 512), FUZZ_MALLOC_LIMIT_MB (256: any single
# allocation larger than this is a bug), FUZZ_TIMEOUT_S (10: one input running longer is a
# hang), FUZZ_SCRATCH (the scratch dir; a new one under $TMPDIR by default), FUZZ_TARGET_DIR
# (the build; default ~/.cache/edge-kd/fuzz-target). One libFuzzer
# process per target, one target at a time.
set -euo pipefail

usage() {
  echo "usage: $0 SECONDS [TARGET...]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
seconds=$1
shift
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

all=()
for f in "$here"/fuzz_targets/*.rs; do
  all+=("$(basename "$f" .rs)")
done
if [ $# -gt 0 ]; then
  targets=("$@")
  for t in "${targets[@]}"; do
    [ -f "$here/fuzz_targets/$t.rs" ] || { echo "run.sh: no target $t (targets: ${all[*]})" >&2; exit 2; }
  done
else
  targets=("${all[@]}")
fi

rss_mb=${FUZZ_RSS_LIMIT_MB:-512}
malloc_mb=${FUZZ_MALLOC_LIMIT_MB:-256}
timeout_s=${FUZZ_TIMEOUT_S:-10}

# cargo-fuzz needs nightly flags (-Z sanitizer, coverage passes); this is the stable 1.95
# toolchain, which allows them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "run.sh: needs cargo-fuzz: cargo install cargo-fuzz --locked" >&2; exit 2; }

# The fuzz crate's own Cargo.lock must be current (as `cargo build --locked` would insist).
if ! cargo metadata --locked --offline --format-version 1 --manifest-path tests/fuzz/Cargo.toml >/dev/null 2>&1 &&
  ! cargo metadata --locked --format-version 1 --manifest-path tests/fuzz/Cargo.toml >/dev/null; then
  echo "run.sh: tests/fuzz/Cargo.lock is out of date (did edge-kd's dependencies change?);" \
    "update it with: cargo update --manifest-path tests/fuzz/Cargo.toml --workspace" >&2
  exit 2
fi

# Outside the checkout, so every clone on this machine (CI's are fresh each run) reuses one
# build: the cold build of the eight targets takes most of CI's time budget on 2 cores.
target_dir=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-kd/fuzz-target}
build_start=$(date +%s)
if [ ${#targets[@]} -eq ${#all[@]} ]; then
  cargo fuzz build --fuzz-dir tests/fuzz --target-dir "$target_dir"
else
  for t in "${targets[@]}"; do
    cargo fuzz build --fuzz-dir tests/fuzz --target-dir "$target_dir" "$t"
  done
fi
echo "run.sh: built ${#targets[@]} target(s) in $(($(date +%s) - build_start)) s"
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"

scratch=${FUZZ_SCRATCH:-$(mktemp -d "${TMPDIR:-/tmp}/edge-kd-fuzz.XXXXXX")}
mkdir -p "$scratch"
# The files a target writes (spool_read's spool directory, rewritten for every input) go to
# memory when the machine has /dev/shm: a disk makes that target ~30x slower.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  work=$(mktemp -d /dev/shm/edge-kd-fuzz.XXXXXX)
else
  work="$scratch/tmp"
fi
trap 'rm -rf "$work"' EXIT
# A small quarantine keeps ASan's share of the RSS limit small; no allocation stack traces
# (malloc_context_size=0) makes the small targets ~1.5x faster. A crash report still has the
# crash's own stack; replay an input with ASAN_OPTIONS unset for the allocation stacks.
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=32:malloc_context_size=0:detect_odr_violation=0}

failed=()
printf '%-16s %12s %10s %9s %8s  %s\n' TARGET EXECS EXEC/S PEAK_MB CORPUS RESULT
for t in "${targets[@]}"; do
  corpus="$scratch/corpus/$t"
  artifacts="$scratch/artifacts/$t"
  log="$scratch/$t.log"
  rm -rf "$corpus" "$artifacts"
  mkdir -p "$corpus" "$artifacts" "$work/$t"
  cp "$here/corpus/$t"/* "$corpus"/
  dict=()
  [ -f "$here/dict/$t.dict" ] && dict=(-dict="$here/dict/$t.dict")
  set +e
  TMPDIR="$work/$t" "$bin_dir/$t" "$corpus" "${dict[@]}" \
    -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -malloc_limit_mb="$malloc_mb" \
    -timeout="$timeout_s" -artifact_prefix="$artifacts/" \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  stat() { awk -v k="stat::$1:" '$1 == k { v = $2 } END { print (v == "" ? "?" : v) }' "$log"; }
  execs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  peak=$(stat peak_rss_mb)
  size=$(find "$corpus" -type f | wc -l)
  found=$(find "$artifacts" -type f | sort)
  if [ "$rc" -eq 0 ] && [ -z "$found" ]; then
    result=ok
  else
    result="FAILED (exit $rc)"
    failed+=("$t")
  fi
  printf '%-16s %12s %10s %9s %8s  %s\n' "$t" "$execs" "$rate" "$peak" "$size" "$result"
  if [ "$result" != ok ]; then
    grep -E '^(==[0-9]+== ?ERROR|SUMMARY|thread .* panicked|.*panicked at)' "$log" | head -n 5 | sed 's/^/    /'
    for a in $found; do
      echo "    input: $a"
    done
    echo "    log: $log"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "run.sh: ${#failed[@]} target(s) failed: ${failed[*]} (inputs and logs in $scratch)" >&2
  echo "run.sh: replay one with: $bin_dir/<target> <input>" >&2
  exit 1
fi
rm -rf "$scratch"
