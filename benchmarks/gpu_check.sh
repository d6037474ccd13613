#!/usr/bin/env bash
# Every GPU check of the project in one script, for a lent GPU machine with PyTorch but
# no package index: the remaining dependencies come as wheels in .whl/ (see
# benchmarks/README.md, "GPU memory", for the pip download line). Writes its log to $OUT (or /tmp) as well.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
python3 -m pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH="/tmp/site:$PWD"
searchmerge() { python3 -c "import sys; from searchmerge.cli.commands import main; sys.exit(main())" "$@"; }
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "== tests that run on CUDA when present (merge, deployment, evaluator, drift)"
python3 -m pytest -q -p no:cacheprovider tests/test_merge.py tests/test_evaluate.py tests/test_drift.py 2>&1 | tail -5
echo "== device memory: paper-scale, share every group, batch 1 and 8"
python3 benchmarks/bench_gpu_memory.py --batch-size 1
python3 benchmarks/bench_gpu_memory.py --batch-size 8 | tail -6
echo "== runtime under a GPU budget: six VGG16s (Figure 1), the runtime against the simulator, switch bytes"
python3 benchmarks/bench_runtime.py --sections figure1,gpu,switch --seconds 10 --cache /tmp/bench-runtime
python3 -m pytest -q -p no:cacheprovider tests/test_runtime.py 2>&1 | tail -3
echo "== digits-edge on the GPU: prepare, then evaluate share-all and none"
db="/tmp/gpu-digits.db"; rm -rf "$db" "$db.checkpoints"
/usr/bin/time -f "prepare + evaluate share-all: %e s wall" \
    python3 -c "import sys; from searchmerge.cli.commands import main; sys.exit(main())" evaluate studies/digits-edge.yaml --share all --storage "sqlite:///$db" --json \
    | python3 -c "import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in ('feasible','stop_reason','unique_bytes','cost')})"
searchmerge evaluate studies/digits-edge.yaml --share none --storage "sqlite:///$db" --json \
    | python3 -c "import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in ('feasible','stop_reason','cost')})"
echo "== the README's main job on the GPU (greedy, 10 trials; originals already prepared)"
/usr/bin/time -f "search: %e s wall" python3 -c "import sys; from searchmerge.cli.commands import main; sys.exit(main())" search studies/digits-edge.yaml --strategy greedy --n-trials 10 \
    --storage "sqlite:///$db" 2>&1 | tail -4
} 2>&1 | tee "$out/gpu_check.log"
