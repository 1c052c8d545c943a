#!/bin/bash
# The device call's working tree is capped at 64 MiB and the tracked weight files alone are about 93 MB: before a
# call, `bash benchmarks/gpu_lease/slim.sh ct_patch` empties every tracked safetensors file but the named priors'
# (kept aside in /tmp/gpu_lease_stash); `bash benchmarks/gpu_lease/slim.sh --restore` puts them back after it.
# run.sh wants `slim.sh mri_patch`: it trains ct_patch_wide on from the fp16 copy pack.sh puts in .gpu/ (restored
# into the emptied file there), and the GPU check's step 5 reads ct_patch_wide and mri_patch.
set -euo pipefail
STASH=/tmp/gpu_lease_stash
if [ "${1:-}" = --restore ]; then
  (cd $STASH && find . -name '*.safetensors' -type f) | while read -r f; do mv "$STASH/$f" "$f"; done
  git status --short -- '*.safetensors'; exit 0
fi
git ls-files '*.safetensors' | while read -r f; do
  keep=0; for k in "$@"; do [ "$f" = "medrecon/assets/priors/$k/diffusion_pytorch_model.safetensors" ] && keep=1; done
  if [ $keep = 0 ]; then mkdir -p "$STASH/$(dirname "$f")"; mv "$f" "$STASH/$f"; : > "$f"; fi
done
git ls-files -z | xargs -0 du -cb | tail -1
