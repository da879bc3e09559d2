#!/usr/bin/env bash
# Every GPU check the open work asks for, as one prepared run on a GPU machine (an estimated 5-8 minutes on one
# H100; it has not run on a GPU yet):
#   1. tests/test_cuda.py: Predictor on CUDA in bf16 against CPU fp32, flash attention, a bf16-mixed MAE step;
#   2. MAE pretraining throughput against MONAI's MaskedAutoEncoderViT: ViT-B/16 at 224 px (MFU), in bf16-mixed
#      (how dentalmim trains on a GPU), pure bf16 and fp32/TF32, plus ViT-Tiny at 224 and 448 px;
#   3. whole-radiograph prediction latency on CUDA (bitewing and panoramic, tile batches 1/8/32);
#   4. a one-GPU DDP pretraining run through the CLI (strategy ddp, bf16-mixed) on synthetic DICOMs, resumed once.
#
#   bash benchmarks/gpu_checks.sh --wheels   # here (with pip and an index): the packages the GPU image lacks -> .whl/
#   bash benchmarks/gpu_checks.sh OUT_DIR    # there: installs .whl/ (if present) into /tmp/site, runs every check
#
# Every check writes its log (and JSON) into OUT_DIR as it goes and its exit code into OUT_DIR/summary.txt; a failing
# check does not stop the next one, and a hung one is stopped at its own time limit (all limits together: 10 min).
# The GPU machine has PyTorch, Lightning, numpy, scipy, matplotlib, opencv, einops, tqdm, pyyaml and pytest; the
# wheels (cp312, 13 MB) add MONAI, pydicom, albumentations, jsonargparse and what those need beyond that.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(monai==1.6.1 pydicom==3.0.2 albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 stringzilla==5.3.2 simsimd==6.5.16 jsonargparse==4.53.0
        docstring-parser==0.18.0 typeshed-client==2.15.0)

if [ "${1:-}" = "--wheels" ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}" || exit
    du -sh .whl
    exit 0
fi

OUT=${1:?usage: gpu_checks.sh OUT_DIR | --wheels}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
PY=python3

check() {  # check NAME TIMEOUT_S COMMAND...: run one check, keep its log and exit code
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    printf '%-28s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - start))" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } >"$OUT/machine.txt" 2>&1

check cuda_tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs
for precision in bf16-mixed bf16 fp32; do
    check "pretrain_base_$precision" 70 $PY benchmarks/pretrain_throughput.py --device cuda --preset base \
        --img-size 224 --batch 128 --precision "$precision" --out "$OUT/pretrain_throughput_cuda_base_$precision.json"
done
check pretrain_tiny_bf16-mixed 50 $PY benchmarks/pretrain_throughput.py --device cuda --preset tiny \
    --img-size 224 448 --batch 64 --precision bf16-mixed --out "$OUT/pretrain_throughput_cuda_tiny_bf16-mixed.json"
check predict_latency 100 $PY benchmarks/predict_latency.py --device cuda --preset small --tile-batch 1,8,32 \
    --runs 5 --no-memory --out-dir "$OUT"

# One-GPU DDP through the CLI: the launcher, per-rank data caching and bf16-mixed in a real fit, then a resume.
DATA=/tmp/dentalmim_gpu_check
check synth 30 $PY -m dentalmim.cli synth "$DATA/corpus" --n 4 --unlabeled 24 --seed 0 --no-progress
RUN="$DATA/run"
FIT=($PY -m dentalmim.cli pretrain fit --config configs/pretrain/mae_vit_tiny.yaml
     --data.data_dir "$DATA/corpus/unlabeled" --data.cache_dir "$DATA/cache"
     --trainer.accelerator gpu --trainer.devices 1 --trainer.strategy ddp --trainer.precision bf16-mixed
     --trainer.default_root_dir "$RUN" --trainer.check_val_every_n_epoch 1)
check ddp_fit 60 "${FIT[@]}" --trainer.max_steps 40
check ddp_resume 60 "${FIT[@]}" --trainer.max_steps 60 --ckpt_path last
ls -R "$RUN" >"$OUT/ddp_run_files.txt" 2>&1
cp "$RUN"/logs/version_*/metrics.csv "$OUT/" 2>/dev/null
cat "$OUT/summary.txt"
