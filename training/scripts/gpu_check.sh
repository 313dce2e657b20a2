#!/usr/bin/env bash
# The GPU measurements issues 3 and 4 owe, as one command that fits a short GPU lease.
#
#   bash training/scripts/gpu_check.sh prepare          # here, where pip and cargo work
#   bash training/scripts/gpu_check.sh run OUT [SECONDS] # on the GPU box (default 480 s)
#
# `prepare` fills the git-ignored folder .gpu-check/ with what a bare PyTorch image lacks: the
# release binary (gzipped: the tree sent to a GPU box is limited to 64 MiB), Fashion-MNIST, and
# the wheels of jsonschema and its needs. Send it along (device tool: carry [".gpu-check"]).
#
# `run` finishes inside SECONDS whatever happens: studies get a deadline (runs still going are
# checkpointed, and the same command later continues them), and the results are packed into
# OUT (five files: env.txt, log.txt, table.md, runs.tgz, teacher.pt) for a lease that returns only
# a few files. In priority order, all at the 20 epochs of the configs, on the fast path
# (batch 1024, sqrt-scaled lr, bf16, channels-last, torch.compile + CUDA graphs):
#   1. alone: the wrn16-4 teacher and the cnn-70k KD student (issue 3's throughput target);
#   2. alone: the plain loop on the same card (fashion-kd.toml: batch 256, eager), the reference
#      for both speed and whether the larger batch cost accuracy;
#   3. alone: cnn-70k with scratch, crld, dtokd, dtokd+crld (images/s per method, issue 4);
#   4. four at a time: both students x scratch/kd x seeds 0 1 (issue 3's table), then every
#      method x both students x seeds 0 1 2 (issue 4's 20-epoch table).
# Runs 1-3 run alone because images/s is only comparable without neighbours on the GPU.
#
# Back here: `tar xzf OUT/runs.tgz`, read OUT/table.md into docs/RESULTS.md, and ship the best
# cnn-70k method's seed-0 student (best = highest mean test accuracy over seeds in the table):
#   .venv/bin/python training/scripts/install_default.py runs/gpu-check/study/cnn-70k-METHOD-e20-s0
#
# For a smoke test of the script itself (CPU, minutes), every default can be changed:
# GPU_CHECK_DEVICE (cuda), GPU_CHECK_EPOCHS (20), GPU_CHECK_TEACHER (wrn16-4),
# GPU_CHECK_TEACHER_EPOCHS (20), GPU_CHECK_SETS (extra overrides for every run, space-separated),
# EDGE_KD_BIN (the binary), EDGE_KD_DATA (Fashion-MNIST); see docs/RESULTS.md for the command.
set -uo pipefail
cd "$(dirname "$0")/../.."

say() { printf '%s gpu_check: %s\n' "$(date -u +%H:%M:%S)" "$*"; }

prepare() {
  set -e
  local dir=.gpu-check py=python3
  [ -x .venv/bin/python ] && py=.venv/bin/python
  cargo build --release --locked
  rm -rf "$dir" && mkdir -p "$dir/whl"
  gzip -9 -c target/release/edge-kd >"$dir/edge-kd.gz"
  cp -r /usr/share/datasets/fashion-mnist "$dir/"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir/whl" jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  grep -qxF "/$dir/" .git/info/exclude || echo "/$dir/" >>.git/info/exclude
  du -sh "$dir"
}

run() {
  local out=${1:?usage: gpu_check.sh run OUT [SECONDS]} budget=${2:-480}
  local t0=$SECONDS device=${GPU_CHECK_DEVICE:-cuda} runs=runs/gpu-check epochs=${GPU_CHECK_EPOCHS:-20}
  local teacher_model=${GPU_CHECK_TEACHER:-wrn16-4} teacher_epochs=${GPU_CHECK_TEACHER_EPOCHS:-20}
  mkdir -p "$out" "$runs"
  exec > >(tee -a "$out/log.txt") 2>&1
  if compgen -G ".gpu-check/whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .gpu-check/whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$PWD/training${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  export EDGE_KD_PYTHON=${EDGE_KD_PYTHON:-$(command -v python3)}
  # One compile cache for every run: the first run of a student compiles, the others reuse it.
  export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/edge-kd-inductor}
  local edge_kd=${EDGE_KD_BIN:-target/release/edge-kd} data=${EDGE_KD_DATA:-.gpu-check/fashion-mnist}
  if [ -z "${EDGE_KD_BIN:-}" ] && [ -f .gpu-check/edge-kd.gz ]; then
    edge_kd=/tmp/edge-kd && gunzip -c .gpu-check/edge-kd.gz >"$edge_kd" && chmod +x "$edge_kd"
  fi
  [ -x "$edge_kd" ] || { say "$edge_kd missing: run 'gpu_check.sh prepare' here and carry it"; exit 2; }
  [ -d "$data" ] || { say "$data missing: run 'gpu_check.sh prepare' here and carry it"; exit 2; }
  {
    date -u +%FT%TZ; uname -m; nvidia-smi -L 2>&1 || true
    "$EDGE_KD_PYTHON" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
      "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
    git rev-parse HEAD 2>/dev/null || true
  } >"$out/env.txt" 2>&1
  cat "$out/env.txt"

  local fast=(--set "data.path=\"$data\"" --set teacher.batch_size=1024 --set student.batch_size=1024
              --set 'teacher.lr_scaling="sqrt"' --set 'student.lr_scaling="sqrt"' --set 'run.compile="reduce-overhead"'
              --set run.checkpoint_every=5 --set run.timing_warmup_steps=10)
  local extra=()
  for s in ${GPU_CHECK_SETS:-}; do extra+=(--set "$s"); done
  left() { echo $(( budget - (SECONDS - t0) - 30 )); }  # 30 s kept for packing the results
  study() {
    local d; d=$(left)
    if [ "$d" -le 0 ]; then say "no time left for: study $*"; return 0; fi
    python3 training/scripts/study.py run --out "$runs/study" --device "$device" --edge-kd "$edge_kd" \
      --epochs "$epochs" --teacher "$teacher_model" --teacher-epochs "$teacher_epochs" \
      --deadline "$d" "${fast[@]}" "${extra[@]}" "$@"
  }

  say "1/4 teacher and the cnn-70k KD student, alone"
  study --students cnn-70k --methods kd --seeds 0 --jobs 1
  local teacher=$runs/study/cnn-70k-kd-e$epochs-s0/teacher.pt plain=$runs/plain/cnn-70k-kd-e$epochs-s0
  if [ -f "$teacher" ]; then
    say "2/4 the plain loop on this card (batch 256, eager), alone"
    local d; d=$(left)
    if [ "$d" -gt 0 ] && [ ! -f "$plain/summary.json" ]; then
      rm -rf "$plain"
      timeout -s INT "$d" "$edge_kd" distill --config training/configs/fashion-kd.toml --out "$plain" \
        --device "$device" --set "data.path=\"$data\"" --set "teacher.model=\"$teacher_model\"" \
        --set "teacher.weights=\"$teacher\"" --set "student.epochs=$epochs" "${extra[@]}" || say "plain loop run did not finish (exit $?)"
    fi
    say "3/4 cnn-70k with every other method, alone"
    study --students cnn-70k --methods scratch crld dtokd dtokd+crld --seeds 0 --jobs 1 --teacher-weights "$teacher"
    say "4/4 the tables, four runs at a time"
    study --students cnn-70k cnn-18k --methods scratch kd --seeds 0 1 --jobs 4 --teacher-weights "$teacher"
    study --students cnn-70k cnn-18k --seeds 0 1 2 --jobs 4 --teacher-weights "$teacher"
  else
    say "no teacher: $teacher missing (see $runs/study/cnn-70k-kd-e$epochs-s0/study.log)"
  fi

  python3 training/scripts/study.py report "$runs/study" >"$out/table.md" 2>&1
  if [ -f "$plain/summary.json" ]; then
    printf '\nThe same card without the fast path (fashion-kd.toml: batch 256, eager):\n\n' >>"$out/table.md"
    python3 training/scripts/study.py report "$runs/plain" | grep '^|' >>"$out/table.md"
  fi
  cat "$out/table.md"
  # Checkpoints stay behind (a later `run` resumes from them); the teacher travels once, beside.
  tar czf "$out/runs.tgz" --exclude=checkpoints --exclude=teacher.pt "$runs"
  [ -f "$teacher" ] && cp "$teacher" "$out/teacher.pt"
  say "done in $(( SECONDS - t0 )) s; $(du -h "$out/runs.tgz" | cut -f1) of runs in $out/runs.tgz"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: gpu_check.sh prepare | gpu_check.sh run OUT [SECONDS]" >&2; exit 2 ;;
esac
