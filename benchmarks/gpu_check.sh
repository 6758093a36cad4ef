#!/usr/bin/env bash
# The GPU check (issue 25), on a GPU machine from the checkout's root: the gpu-marked tests and
# the three GPU benchmarks (Querent's attention against FlashAttention, extraction against
# TRIDENT, training I/O), then one table. Results go to benchmarks/results/gpu_*.json (commit
# them) and, where the device tool's $OUT is set, to $OUT as well. About 8 minutes on an H100.
# Never part of CI.
#
# First, on a machine with internet: bash benchmarks/gpu_prepare.sh (the missing wheels in
# .whl/, TRIDENT's source in .trident/, two real slides in shared/slides/). Then on the GPU
# machine, carrying .whl and .trident:
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
results=benchmarks/results
logs=$(mktemp -d)
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
# every module the steps import, so a missing wheel shows at once (then: gpu_prepare.sh)
python3 -c "import querent.engine.train, querent.engine.evaluate, querent.layers.flex, \
extractors.extract, openslide, lifelines, tests.helpers" || echo "a module is missing" >&2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

step() { # name, time limit (s), command...
    local name=$1 limit=$2
    shift 2
    echo "== $name (at $((SECONDS - started)) s, limit ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$logs/$name.log" | grep -v -e "^W[0-9]" -e Warning
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

mapfile -t gpu_tests < <(find tests -name "*_gpu.py" | sort)
step tests 150 python3 -m pytest -p no:cacheprovider -q --timeout 100 "${gpu_tests[@]}" \
    --junitxml="$logs/gpu_tests.xml"
step attention 150 python3 benchmarks/bench_gpu_attention.py --out "$results/gpu_attention.json"
step extract 140 python3 benchmarks/bench_gpu_extract.py --max-patches 16384 --repeats 2 \
    --out "$results/gpu_extract.json"
step train 100 python3 benchmarks/bench_train.py --device cuda --slides 100 --repeats 1 \
    --epochs 3 --workers 2 --out "$results/gpu_train_io.json"

python3 benchmarks/gpu_table.py --tests "$logs/gpu_tests.xml" --out "$results/gpu_check.json" \
    "$results/gpu_attention.json" "$results/gpu_extract.json" "$results/gpu_train_io.json"
echo "== done after $((SECONDS - started)) s"
if [ -n "${OUT:-}" ]; then
    cp "$results"/gpu_*.json "$OUT"/ 2>/dev/null
    tar -czf "$OUT/gpu_logs.tar.gz" -C "$logs" .
fi
