"""Synthetic 3D phantoms: a CT torso in HU and an MR brain in normalised magnitude.

They are the training data of the bundled priors and the ground truth of the demo, the benchmark and the
tests. Every structure is defined in 3D patient coordinates (mm; x to the patient's left, y posterior,
s superior: the LPS axes of the Volume) as ellipsoids, elliptic cylinders whose parameters vary smoothly
with s, and tubes along polylines or branching trees. A smooth random displacement field bends all of them,
and tissues carry 3D-correlated Gaussian random textures, so adjacent slices are continuous the way a real
scan's are. The anatomy (sizes, positions, rotations, contrast phase, the s-range imaged) is drawn from
`seed`, so a seed reproduces a volume exactly and different seeds differ visibly.

Seeds: train on `TRAIN_SEEDS`; the demo, benchmarks and tests use `HELD_OUT_SEEDS`, never used in training.

Modules: ``fields`` (sampling grid, random fields, canvas -> Volume), ``shapes`` (geometric primitives),
``ct_anatomy`` / ``ct_torso`` (CT torso), ``mr_head`` (MR head), ``seeds`` (train / held-out split).
"""
from __future__ import annotations

from .ct_anatomy import CT_LABELS
from .ct_torso import ct_phantom
from .mr_head import MR_LABELS, mr_phantom
from .seeds import HELD_OUT_SEEDS, TRAIN_SEEDS, split_seeds

__all__ = ["CT_LABELS", "HELD_OUT_SEEDS", "MR_LABELS", "TRAIN_SEEDS", "ct_phantom", "mr_phantom", "split_seeds"]
