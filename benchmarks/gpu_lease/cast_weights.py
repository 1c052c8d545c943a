"""Write a safetensors weight file with every tensor cast to another dtype: the GPU lease carries
ct_patch_wide's weights in fp16 (pack.sh) and restores them in fp32 on the device (run.sh).
Usage: python benchmarks/gpu_lease/cast_weights.py {float16|float32} SRC DST"""
import sys

import torch
from safetensors.torch import load_file, save_file


def main(argv=None) -> None:
    dtype, src, dst = argv or sys.argv[1:]
    save_file({k: v.to(getattr(torch, dtype)) for k, v in load_file(src).items()}, dst)


if __name__ == "__main__":
    main()
