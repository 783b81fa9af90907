#!/usr/bin/env bash
# The GPU measurements of issues 3–6 as one prepared script for a short device lease.
#
#     bash benchmarks/gpu_run.sh 1        # linear-algebra floor, scaling in n, gradients, deep
#     bash benchmarks/gpu_run.sh 2        # theory vs sampling
#     bash benchmarks/gpu_run.sh 3        # still owed after 2026-11-30: deep sweeps
#     bash benchmarks/gpu_run.sh 4        # still owed: the ReLU theory case
#     bash benchmarks/gpu_run.sh 5        # still owed: learning curves with m outputs at scale
#     SMALL=1 bash benchmarks/gpu_run.sh 1   # the same steps at toy sizes (a CPU dry run)
#
# Every step has its own time limit and appends its output to $OUT/partN.log (default OUT
# /tmp/gpu_out; plots go there too), so a step that runs long costs only its own slot. Wheels in .whl/ (blackjax; equinox, optimistix and
# lineax as a fallback if the machine's own versions fail the smoke test) are installed first.
set -u
PART=${1:-1}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
T_START=$(date +%s)

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local t0
    t0=$(date +%s)
    echo "=== $name (limit ${limit}s, at +$((t0 - T_START))s)"
    timeout "$limit" "$@" >"/tmp/$name.log" 2>&1
    local rc=$?
    grep -v -i "warning" "/tmp/$name.log" | tail -n 40
    { echo "=== $name"; cat "/tmp/$name.log"; } >>"$OUT/part$PART.log"
    echo "=== $name: rc $rc, $(($(date +%s) - t0)) s"
}

if [ -d .whl ] && [ -z "${SMALL:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/blackjax-*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
SMOKE='import jax, equinox, optimistix, lineax
jax.config.update("jax_enable_x64", True)
import fls_jax as fj
t = fj.datasets.single_index_teacher(32, 8, 4, seed=0)
s = fj.solve(fj.FCN(4.0, 1.0, 1.0, 0.01, fj.Erf()), t.X, t.Y)
print("smoke:", jax.__version__, equinox.__version__, optimistix.__version__, lineax.__version__,
      jax.default_backend(), jax.devices()[0].device_kind, bool(s.converged), float(s.residual))'
if ! $PY -c "$SMOKE" 2>/tmp/smoke.err; then
    echo "smoke test failed with the machine's packages; using the carried wheels"
    tail -n 5 /tmp/smoke.err
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 \
        .whl/equinox-*.whl .whl/optimistix-*.whl .whl/lineax-*.whl
    export PYTHONPATH=/tmp/site2:$PYTHONPATH
    $PY -c "$SMOKE" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv 2>/dev/null

if [ -n "${SMALL:-}" ]; then
    NS_FCN="128 256"; NS_CNN="128 256"; MEM_NS="512"; LIM_NS="256 512"; N_GRAD=256; N_DEEP=64
    W_DEEP=3; TVS="--n 16 --n-test 16 --widths 16 --chains 2 --samples 10 --burn-in 10"
    TVS_RELU="$TVS --cases ReLU"
    LC_POOL=200; LC_MS="2"; LC_NS="--ns 16"; LC_PATCH_NS="--ns 16"
else
    NS_FCN="1024 4096 8192 16384"; NS_CNN="1024 4096 8192 16384"; MEM_NS="24576 32768"
    LIM_NS="4096 8192 16384"; N_GRAD=4096; N_DEEP=512; W_DEEP=13
    TVS="--n 128 --widths 4 16 64 256 1024 --chains 32 --samples 200 --burn-in 300"
    TVS_RELU="$TVS --cases ReLU"
    TVS="$TVS --cases linear-PatchCNN erf"  # name prefixes: part 2's three one-layer cases
    LC_POOL=1000; LC_MS="2 3"; LC_NS=""; LC_PATCH_NS="--ns 64"
fi

if [ "$PART" = 1 ]; then
    step linalg_limit 60 $PY benchmarks/linalg_limit.py --ns $LIM_NS
    step scaling_fcn 140 $PY benchmarks/scaling_n.py --arch fcn --ns $NS_FCN --repeat 1 \
        --memory-ns $MEM_NS --plot "$OUT/scaling_n_fcn_gpu.png"
    step scaling_cnn 120 $PY benchmarks/scaling_n.py --arch cnn --solver anderson --ns $NS_CNN \
        --repeat 1 --memory-ns $MEM_NS --plot "$OUT/scaling_n_cnn_gpu.png"
    step gradient_big 60 $PY benchmarks/gradient_cost.py --arch cnn --n $N_GRAD --no-vmap \
        --widths 4 --repeat 1
    step deep_sweep 120 $PY benchmarks/deep_sweep.py --n $N_DEEP --widths $W_DEEP --baseline 0 \
        --plot "$OUT/deep_sweep_gpu.png"
    step gradient_vmap 50 $PY benchmarks/gradient_cost.py --arch cnn --n 512 --widths 32 --repeat 1
fi
if [ "$PART" = 2 ]; then
    step theory_vs_sampling 150 $PY benchmarks/theory_vs_sampling.py $TVS \
        --out "$OUT/theory_vs_sampling_gpu"
fi
if [ "$PART" = 3 ]; then  # deep networks with Anderson's β = 0.1 (the default since)
    step deep_sweep_mixing 90 $PY benchmarks/deep_sweep.py --n $N_DEEP --widths $W_DEEP \
        --baseline 0 --plot "$OUT/deep_sweep_gpu.png"
    step deep_parallel 180 $PY benchmarks/deep_sweep.py --n $N_DEEP --widths 49 --baseline 0 \
        --schedule parallel --plot "$OUT/deep_sweep_parallel_gpu.png"
    step deep_4096 180 $PY benchmarks/deep_sweep.py --n $((N_DEEP * 8)) --widths 1 --baseline 0 \
        --plot "$OUT/deep_sweep_4096_gpu.png"
fi
if [ "$PART" = 4 ]; then
    step theory_relu 150 $PY benchmarks/theory_vs_sampling.py $TVS_RELU \
        --out "$OUT/theory_vs_sampling_relu_gpu"
fi
if [ "$PART" = 5 ]; then  # the m-output curves: FCN (m ≤ 10), PatchCNN ((mM)² matrices)
    step lc_outputs_cost 240 $PY benchmarks/learning_curve_outputs_cost.py --pool $LC_POOL $LC_NS
    step lc_patch_outputs_cost 300 $PY benchmarks/learning_curve_outputs_cost.py \
        --network patch --pool $LC_POOL --ms $LC_MS $LC_PATCH_NS
fi
echo "=== part $PART done in $(($(date +%s) - T_START)) s"
