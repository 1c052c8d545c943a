#!/bin/bash
# Prepare, on this (CPU) machine, what a device-machine call carries into .gpu/ (ignored by .gitignore,
# so the call's carry names it). The GPU machine has torch 2.11+cu130 on Python 3.12 and no package index; ASTRA 2.5.0's
# wheel links CUDA 12's libcudart.so.12 and libcufft.so.11, which CUDA 13 lacks. Whole call: one tar.xz of the
# stripped site-packages (about 7 MB), libcudart.so.12, a stand-in libcufft.so.11 (cufft11.c) and a SimpleITK
# stand-in (its 50 MB wheel does not fit the 64 MiB transfer; no gpu test needs it); the training data and the
# held-out validation slab ct_head_val.nii as int16 copies (gpu_train_data.py, 18.1 MB: the slab adds 1 MB);
# ct_patch_wide's weights in fp16 (20 MB; run.sh restores them in fp32 and trains on from them). Usage:
# bash benchmarks/gpu_lease/pack.sh  (from the repository root); then `bash benchmarks/gpu_lease/slim.sh mri_patch`
# for the weight files. Budget: packages 8 + data 18 + fp16 weights 20 + tracked files without weights 3 + mri_patch
# 10 MB, under the 64 MiB a call carries. The training scans are fetched where not cached.
set -euo pipefail
PY=${PY:-.venv/bin/python}; W=$(mktemp -d); S=$(mktemp -d)
mkdir -p .gpu/lib .gpu/stub/SimpleITK
P="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64"
P="$P --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64"
pinned() { for n in "$@"; do echo "$n==$($PY -c "import importlib.metadata as m; print(m.version('$n'))")"; done; }
# the versions this checkout's environment runs (pydantic pins pydantic_core exactly)
$PY -m pip download -q --no-deps $P -d $W $(pinned astra-toolbox nibabel pydicom pydantic pydantic_core annotated_types \
    typing_inspection diffusers) nvidia-cuda-runtime-cu12
unzip -o -q -j $W/nvidia_cuda_runtime_cu12*.whl '*/libcudart.so.12' -d .gpu/lib && rm $W/nvidia_cuda_runtime_cu12*.whl
$PY -m pip install -q --no-deps --no-compile --target $S $P $W/*.whl
find $S -name '*.so*' -type f -exec strip --strip-unneeded {} +   # libastra 40 MB -> 14 MB
rm -rf $S/bin $S/nibabel/tests $S/nibabel/*/tests
tar cf - -C $S . | xz -T2 -6 > .gpu/site312.tar.xz
echo 'libcufft.so.11 { global: cufft*; local: *; };' > $W/cufft11.map
gcc -shared -fPIC -O2 -o .gpu/lib/libcufft.so.11 benchmarks/gpu_lease/cufft11.c -Wl,--version-script=$W/cufft11.map \
    -Wl,-soname,libcufft.so.11 -ldl
printf '"""SimpleITK stand-in on the GPU machine: importable, raises on use."""\ndef __getattr__(name):\n    raise ImportError(f"SimpleITK is not installed here (SimpleITK.{name})")\n' > .gpu/stub/SimpleITK/__init__.py
$PY benchmarks/gpu_lease/cast_weights.py float16 \
    medrecon/assets/priors/ct_patch_wide/diffusion_pytorch_model.safetensors .gpu/ct_patch_wide.fp16.safetensors
$PY benchmarks/gpu_lease/gpu_train_data.py && rm -rf $W $S && du -sh .gpu/*
