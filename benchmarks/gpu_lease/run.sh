#!/bin/bash
# One device call (benchmarks/gpu_lease/pack.sh first): unpack the carried packages and data, go on training the wide
# CT patch prior from its bundled weights (carried as fp16 in .gpu/, pack.sh; the forty-sixth session trained it
# 6182 steps in 5 min on an H100 from ct_patch, its loss still falling), now with a cosine decay of the learning rate
# over STEPS, return its weights split under $OUT/wide, then run the GPU check (148 s). The held-out loss is scored on
# ct_head_val.nii, ct_head slices 82-107 (the validation slab the wide prior was chosen on, never trained on; carried
# in .gpu/traindata.tar.xz, gpu_train_data.py), before, at every checkpoint (--heldout-every's default: every 500
# steps) and after, into the card's training.heldout and $OUT/train.log. Device tool: command
# "bash benchmarks/gpu_lease/run.sh", carry [".gpu"], timeout 590; then, on the CPU, whether its weights replace
# the bundled ones: bash benchmarks/gpu_lease/evaluate.sh FILES_AT (the folder the returned files lie in; its rule
# in its header).
# Dry run here: mkdir -p /tmp/dry && DEV=cpu TL=0.2 SMALL=--small LW=2 BS=8 OUT=/tmp/dry PY=.venv/bin/python bash benchmarks/gpu_lease/run.sh
set -u
DEV=${DEV:-cuda}; TL=${TL:-5}; SMALL=${SMALL:-}; PY=${PY:-python3}
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
if [ "$DEV" = cuda ]; then
  mkdir -p /tmp/site && tar xJf .gpu/site312.tar.xz -C /tmp/site || exit 1
  fft=$(dirname "$(find /opt /usr/local /usr/lib -name 'libcufft.so.12*' 2>/dev/null | head -1)")
  export PYTHONPATH=/tmp/site:$PWD/.gpu/stub:$PWD LD_LIBRARY_PATH=$PWD/.gpu/lib:$fft:${LD_LIBRARY_PATH:-}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/device.txt
  $PY -c "import torch, astra; print('torch', torch.__version__, 'astra', astra.__version__, 'astra cuda', astra.use_cuda())" 2>&1 | tee -a $OUT/device.txt
fi
mkdir -p /tmp/data && tar xJf .gpu/traindata.tar.xz -C /tmp/data || exit 1
WIDE=medrecon/assets/priors/ct_patch_wide/diffusion_pytorch_model.safetensors
if [ ! -s $WIDE ]; then   # emptied by slim.sh: the fp16 copy pack.sh wrote, back in fp32
  $PY benchmarks/gpu_lease/cast_weights.py float32 .gpu/ct_patch_wide.fp16.safetensors $WIDE || exit 1
fi
rm -rf /tmp/ct_patch_wide   # a fresh run: a dry run here may have left one
stamp "training (time limit $TL min)"
$PY -m pipelines.cli train --data /tmp/data/ct_head.nii --data /tmp/data/ct_chest_contrast.nii \
    --data /tmp/data/ct_lung1.nii --data /tmp/data/ct_abdomen.nii --heldout-data /tmp/data/ct_head_val.nii \
    --output /tmp/ct_patch_wide --arch patch \
    --modality ct --image-size 64 --patch-sizes 16,32,64 --pixel-range 0.5 4.0 --init-from bundled:ct_patch_wide \
    --channels 32,64,128,256 --layers-per-block 1 --steps ${STEPS:-6000} --time-limit $TL --batch-size ${BS:-128} \
    --lr 0.0002 --lr-final 0.00002 \
    --ema-decay 0.999 --loader-workers ${LW:-12} --checkpoint-every 500 --sample-every -1 --seed 6 --device $DEV \
    $( [ "$DEV" = cuda ] && echo --amp ) --no-progress > $OUT/train.log 2>&1
rc=$?; stamp "train exit $rc"; tail -5 $OUT/train.log
[ $rc = 0 ] && mkdir -p $OUT/wide && (cd /tmp/ct_patch_wide && tar cf - --exclude='*.pt' --exclude='checkpoint*' --exclude='state*' . ) \
    | gzip -1 | split -b 15m - $OUT/wide/part_ && ls -la $OUT/wide /tmp/ct_patch_wide
stamp "gpu check"
timeout ${GT:-200} $PY benchmarks/gpu_check.py --device $DEV $SMALL --out $OUT/gpu_check > $OUT/gpu_check.log 2>&1
stamp "gpu check exit $?"; tail -30 $OUT/gpu_check.log
