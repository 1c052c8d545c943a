"""Which phantom seeds are for training and which are held out (demo, benchmarks, tests)."""
from __future__ import annotations

from medrecon.errors import InputError

TRAIN_SEEDS = range(0, 1000)
HELD_OUT_SEEDS = range(1000, 1100)


def split_seeds(purpose: str) -> range:
    """Seeds for `purpose`: "train" -> TRAIN_SEEDS; "test"/"held_out"/"demo"/"benchmark" -> HELD_OUT_SEEDS."""
    if purpose == "train":
        return TRAIN_SEEDS
    if purpose in ("test", "held_out", "heldout", "demo", "benchmark", "val"):
        return HELD_OUT_SEEDS
    raise InputError(f"unknown seed purpose {purpose!r}: use 'train' or 'held_out'")
