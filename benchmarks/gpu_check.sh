#!/usr/bin/env bash
# One prepared H200 check: TRL SFT + DPO under DeepSpeed ZeRO-2/3 (bf16) on a local ~0.5B Qwen2-style
# model, and a 4-bit QLoRA run; tokens/s, peak GPU memory, MFU vs 790 TFLOP/s. See benchmarks/gpu_check.py.
#
# NOT YET RUN ON A GPU: written and smoke-tested on a CPU only (GPU_CHECK_SMOKE=1 below). The GPU path
# (NCCL, DeepSpeed's fused Adam built with nvcc there, bf16, bitsandbytes, the device's own
# torch/transformers/peft versions) has never executed.
#
# 1. HERE (x86-64, with pip access), once, from the repo root: fill the ignored folder .gpu_wheels/ (~50 MB)
#        bash benchmarks/gpu_check.sh --prepare-wheels
#    It downloads cp312 manylinux wheels of what the GPU image lacks (trl, datasets, deepspeed's and
#    datasets' missing needs, bitsandbytes), builds deepspeed's pure-Python wheel (it ships only as an sdist;
#    ops are compiled at run time, there), checks the 64 MiB carry limit, and checks here, in a scratch
#    venv with the device's torch/transformers/peft/accelerate, that
#    `pip install --no-index --find-links .gpu_wheels trl deepspeed datasets` resolves.
# 2. With a GPU lent to the task, from the session's checkout (the repo root; this file must be committed
#    or at least present there), ONE run-tool call, within the 15-minute lease:
#        run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_wheels"], timeout_s=540)
#    Results: the printed table, and $OUT/gpu_check.json, $OUT/gpu_check_parts.log, $OUT/gpu_check.log.
#    Then give_back (no second full run fits in the lease).
# 3. Smoke mode, on any CPU machine (the same code, a tiny model, 2 steps, fp32, DeepSpeed over gloo):
#        GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh
#
# Exit code: 0 when every part passed or was skipped (QLoRA without bitsandbytes), 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu_wheels

prepare_wheels() {
    set -e
    local py=${PYTHON:-.venv/bin/python}
    [ -x "$py" ] || py=python3
    local plat=(--python-version 3.12 --implementation cp --only-binary=:all:)
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
        manylinux2014_x86_64 manylinux1_x86_64 any; do
        plat+=(--platform "$p")
    done
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    # What the GPU image (device KINDS.md, 2026-11) lacks. It has torch, transformers, accelerate, peft,
    # pyarrow, pandas, xxhash, fsspec, huggingface-hub, pyyaml, einops, msgpack, ninja, psutil, py-cpuinfo,
    # tqdm, jinja2. typing-extensions: pydantic 2.14 wants >= 4.16 (the image's version is unknown).
    "$py" -m pip download -q --no-deps "${plat[@]}" -d "$WHEELS" \
        trl==1.12.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
        hjson==3.1.0 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
        typing-extensions==4.16.0 bitsandbytes==0.50.2
    # deepspeed is an sdist only: a pure-Python wheel with no ops pre-built (DS_BUILD_OPS=0), built against
    # the local CPU torch (no build isolation: that would download a torch here)
    DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" deepspeed==0.19.8
    grep -qxF "/$WHEELS/" .gitignore || echo "/$WHEELS/" >>.gitignore
    ls -l "$WHEELS"
    local wheels tree
    wheels=$(du -sb "$WHEELS" | cut -f1)
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    echo "wheels: $((wheels / 1048576)) MiB; tracked+untracked files: $((tree / 1048576)) MiB; together" \
        "$(((wheels + tree) / 1048576)) MiB of the 64 MiB the run tool carries"
    [ $((wheels + tree)) -lt $((64 * 1048576)) ] || { echo "over the carry limit" >&2; return 1; }
    check_resolves "$py"
}

check_resolves() {
    # A scratch venv standing in for the GPU image: this machine's Python (3.11, so the two
    # version-tagged wheels get 3.11 twins in a side folder) with torch 2.13.0 (CPU, from local disk) and
    # the image's transformers/accelerate/peft/huggingface-hub; then the real resolving install, offline.
    local py=$1 venv side
    venv=$(mktemp -d /tmp/gpu_check_venv.XXXX)
    side=$(mktemp -d /tmp/gpu_check_side.XXXX)
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.13.0 transformers==5.17.0 accelerate==1.15.0 peft \
        huggingface-hub==1.33.0 numpy pandas pyarrow pyyaml fsspec xxhash einops msgpack ninja psutil \
        py-cpuinfo tqdm jinja2
    "$py" -m pip download -q --no-deps --only-binary=:all: -d "$side" pydantic-core==2.50.4 multiprocess==0.70.19
    "$venv/bin/pip" install --no-index --find-links "$WHEELS" --find-links "$side" trl deepspeed datasets bitsandbytes
    "$venv/bin/python" -c "import trl, deepspeed, datasets, bitsandbytes; print('resolved and imported: trl',
trl.__version__, 'deepspeed', deepspeed.__version__, 'datasets', datasets.__version__)"
    rm -rf "$venv" "$side"
}

if [ "${1:-}" = "--prepare-wheels" ]; then
    prepare_wheels
    exit $?
fi

export PYTHONUNBUFFERED=1
if [ "${GPU_CHECK_SMOKE:-0}" = "1" ]; then
    PY=${PYTHON:-.venv/bin/python}
    [ -x "$PY" ] || PY=python3
    OUT=${OUT:-$(mktemp -d /tmp/gpu_check-out.XXXX)}
    exec "$PY" benchmarks/gpu_check.py --smoke --out "$OUT"
fi

PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d /tmp/gpu_check-out.XXXX)}
mkdir -p "$OUT"
{
    echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "gpu", torch.cuda.is_available())'
    # Carried wheels: a real resolving install into the image's Python first; if the image's versions
    # conflict (e.g. fsspec or pyarrow outside datasets' range), the README's way: no deps, into
    # /tmp/site, ahead on PYTHONPATH.
    if [ ! -d "$WHEELS" ]; then
        echo "no $WHEELS folder: run 'bash benchmarks/gpu_check.sh --prepare-wheels' here and carry it"
    elif timeout 120 "$PY" -m pip install -q --no-index --no-cache-dir --find-links "$WHEELS" \
        trl deepspeed datasets bitsandbytes; then
        echo "wheels: resolved install into the image's Python"
    else
        echo "wheels: resolving install failed (above); installing --no-deps into /tmp/site instead"
        timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PY" -c 'import importlib.metadata as m
for d in ("trl", "deepspeed", "datasets", "bitsandbytes", "transformers", "peft", "accelerate", "flash-attn"):
    try: print(d, m.version(d))
    except m.PackageNotFoundError: print(d, "MISSING")'
    "$PY" benchmarks/gpu_check.py --out "$OUT" --budget "${GPU_CHECK_BUDGET:-420}"
} 2>&1 | tee "$OUT/gpu_check.log"
