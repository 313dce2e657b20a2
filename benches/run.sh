#!/usr/bin/env bash
# Run the edge-kd benchmark set and write benches/results/<date>-<host>/.
#
#   cargo build --release && bash benches/run.sh
#
# Builds nothing: it measures the binary in $EDGE_KD. For each model (the embedded default
# student, then the two random-init MobileNets from make_models.py) it runs
#   $EDGE_KD bench [--model M] --engine $ENGINES --threads $THREADS --iters N --warmup N --json
# and then benches/ort_reference.py (onnxruntime's own Python session, same model, threads and
# iteration counts), and finally benches/report.py, which renders summary.md.
#
# Environment (all optional):
#   EDGE_KD          binary to measure                         [target/release/edge-kd]
#   ORT_DYLIB_PATH   ONNX Runtime library for edge-kd's ort engine [the Python onnxruntime's own
#                    capi/libonnxruntime.so.*, so both sides run the same ORT build]
#   PYTHON           Python with onnxruntime, numpy (torch+torchvision only to make the models)
#                                                              [.venv/bin/python, else python3]
#   ENGINES          [tract,ort]        THREADS   [1,2]
#   ITERS, WARMUP    override both groups below
#   STUDENT_ITERS    [300]              STUDENT_WARMUP    [30]   (default student)
#   MOBILENET_ITERS  [100]              MOBILENET_WARMUP  [10]   (the two MobileNets)
#   FRAME            image passed as `bench --input` [none: edge-kd's synthetic frame at the
#                    model's input size, so preprocessing does no real downscaling]
#   DEFAULT_ONNX     the ONNX file the embedded student was built from, for the reference
#                                                              [models/default/student.onnx]
#   OUT_DIR          results folder [benches/results/<UTC date>-<short host>, "-2", "-3"... if taken]
#   MODELS           space-separated subset of: default mobilenet_v3_small-224 mobilenet_v2-224
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

die() { echo "run.sh: $*" >&2; exit 2; }
note() { echo "run.sh: $*" >&2; }

EDGE_KD=${EDGE_KD:-target/release/edge-kd}
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
ENGINES=${ENGINES:-tract,ort}
THREADS=${THREADS:-1,2}
STUDENT_ITERS=${STUDENT_ITERS:-${ITERS:-300}}
STUDENT_WARMUP=${STUDENT_WARMUP:-${WARMUP:-30}}
MOBILENET_ITERS=${MOBILENET_ITERS:-${ITERS:-100}}
MOBILENET_WARMUP=${MOBILENET_WARMUP:-${WARMUP:-10}}
FRAME=${FRAME:-}
DEFAULT_ONNX=${DEFAULT_ONNX:-models/default/student.onnx}
MODELS=${MODELS:-default mobilenet_v3_small-224 mobilenet_v2-224}

# --- preconditions --------------------------------------------------------------------------
[[ -x $EDGE_KD ]] || die "$EDGE_KD: not an executable; build it first (cargo build --release) or set EDGE_KD"
"$PYTHON" -c 'import onnxruntime, numpy' 2>/dev/null \
  || die "$PYTHON cannot import onnxruntime and numpy; set PYTHON to a Python that can"
[[ -z $FRAME || -f $FRAME ]] || die "FRAME=$FRAME: no such file"
[[ -f $DEFAULT_ONNX ]] || die "DEFAULT_ONNX=$DEFAULT_ONNX: no such file"

PY_ORT_VERSION=$("$PYTHON" -c 'import onnxruntime; print(onnxruntime.__version__)')
if [[ -z ${ORT_DYLIB_PATH:-} ]]; then
  ORT_DYLIB_PATH=$("$PYTHON" - <<'PY'
import pathlib, onnxruntime
libs = sorted(pathlib.Path(onnxruntime.__file__).parent.glob("capi/libonnxruntime.so*"))
print(libs[0] if libs else "")
PY
)
  [[ -n $ORT_DYLIB_PATH ]] || die "ORT_DYLIB_PATH is not set and $PYTHON's onnxruntime has no capi/libonnxruntime.so*"
  note "ORT_DYLIB_PATH=$ORT_DYLIB_PATH (the Python onnxruntime's library)"
fi
[[ -f $ORT_DYLIB_PATH ]] || die "ORT_DYLIB_PATH=$ORT_DYLIB_PATH: no such file"
export ORT_DYLIB_PATH
LIB_VERSION=$(basename "$ORT_DYLIB_PATH" | sed -n 's/^libonnxruntime\.so\.//p')
if [[ -n $LIB_VERSION && $LIB_VERSION != "$PY_ORT_VERSION" ]]; then
  note "warning: edge-kd's ORT library is $LIB_VERSION but the Python reference runs onnxruntime $PY_ORT_VERSION;"
  note "         the 'ort-python' ratio then compares two ORT versions, not just the bindings"
fi

# --- models -----------------------------------------------------------------------------------
need_models=0
for m in $MODELS; do
  [[ $m == default ]] && continue
  [[ -f benches/models/$m.onnx ]] || need_models=1
done
if (( need_models )); then
  note "making the MobileNet models (random-init weights, latency only)"
  "$PYTHON" -W ignore::DeprecationWarning benches/make_models.py
fi

# --- results folder -------------------------------------------------------------------------
if [[ -z ${OUT_DIR:-} ]]; then
  host=$(hostname -s 2>/dev/null || hostname)
  host=$(printf '%s' "$host" | tr -c 'A-Za-z0-9._-' '_')
  base="benches/results/$(date -u +%Y-%m-%d)-$host"
  OUT_DIR=$base
  n=2
  while [[ -e $OUT_DIR ]]; do OUT_DIR="$base-$n"; n=$((n + 1)); done
fi
mkdir -p "$OUT_DIR"
note "results in $OUT_DIR"

{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "edge_kd: $EDGE_KD ($("$EDGE_KD" --version 2>/dev/null || echo 'version unknown'))"
  if commit=$(git rev-parse --short HEAD 2>/dev/null); then
    git diff --quiet HEAD -- src Cargo.toml Cargo.lock models 2>/dev/null || commit="$commit (+ uncommitted changes in src/Cargo/models)"
  else
    commit="none (no commit yet)"
  fi
  echo "git_commit: $commit"
  echo "ort_dylib: ${ORT_DYLIB_PATH#"$ROOT"/}"
  echo "python_onnxruntime: $PY_ORT_VERSION ($("$PYTHON" -c 'import sys; print(sys.version.split()[0])'))"
  echo "uname: $(uname -srm)"
  echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n1)"
  echo "logical_cpus: $(nproc 2>/dev/null || echo '?')"
  echo "cpu_governor: $(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo n/a)"
  echo "loadavg_at_start: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"
  echo "engines: $ENGINES; threads: $THREADS"
  echo "student: iters $STUDENT_ITERS warmup $STUDENT_WARMUP; mobilenets: iters $MOBILENET_ITERS warmup $MOBILENET_WARMUP"
  echo "frame: ${FRAME:-synthetic (edge-kd default)}"
} > "$OUT_DIR/env.txt"
cat "$OUT_DIR/env.txt" >&2

load1=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
  note "warning: 1-minute load average is $load1; other work on this box will show in the numbers"
fi

# --- runs -------------------------------------------------------------------------------------
failed=()
for m in $MODELS; do
  if [[ $m == default ]]; then
    name="default-$(basename "$DEFAULT_ONNX" .onnx)"
    model_args=()
    ref_model=$DEFAULT_ONNX
    iters=$STUDENT_ITERS warmup=$STUDENT_WARMUP
  else
    name=$m
    ref_model=benches/models/$m.onnx
    [[ -f $ref_model ]] || die "$ref_model: missing (make_models.py did not write it?)"
    model_args=(--model "$ref_model")
    iters=$MOBILENET_ITERS warmup=$MOBILENET_WARMUP
  fi
  frame_args=()
  [[ -n $FRAME ]] && frame_args=(--input "$FRAME")

  note "[$name] edge-kd bench (engines $ENGINES, threads $THREADS, $iters iters, $warmup warm-up)"
  json=$OUT_DIR/$name.edge-kd.json
  log=$OUT_DIR/$name.edge-kd.log
  set +e
  "$EDGE_KD" bench "${model_args[@]}" --engine "$ENGINES" --threads "$THREADS" \
    --iters "$iters" --warmup "$warmup" "${frame_args[@]}" --json > "$json.tmp" 2> "$log"
  rc=$?
  set -e
  # 0: all rows measured; 4: some rows failed; 3: all rows failed (the JSON still says why).
  if [[ -s $json.tmp ]] && "$PYTHON" -c 'import json,sys; json.load(open(sys.argv[1]))' "$json.tmp" 2>/dev/null; then
    mv "$json.tmp" "$json"
  else
    rm -f "$json.tmp"
  fi
  if (( rc != 0 )); then
    failed+=("$name: edge-kd bench exit $rc (see $log)")
    note "[$name] edge-kd bench exited $rc; stderr:"
    sed 's/^/    /' "$log" >&2
  fi
  [[ -s $log ]] || rm -f "$log"

  note "[$name] onnxruntime-python reference"
  if ! "$PYTHON" benches/ort_reference.py --model "$ref_model" --threads "$THREADS" \
      --iters "$iters" --warmup "$warmup" --json "$OUT_DIR/$name.ort-python.json"; then
    failed+=("$name: ort_reference.py failed")
  fi
done

"$PYTHON" benches/report.py "$OUT_DIR" --out "$OUT_DIR/summary.md"
echo
cat "$OUT_DIR/summary.md"
echo
note "wrote $OUT_DIR/summary.md"
if (( ${#failed[@]} )); then
  note "some runs failed:"
  printf '    %s\n' "${failed[@]}" >&2
  exit 1
fi
