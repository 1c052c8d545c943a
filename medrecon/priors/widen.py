"""Start a wider UNet from a trained narrower one without losing what it learnt (Net2WiderNet; Chen, Goodfellow,
Shlens, ICLR 2016): every channel of the trained network is copied k times, the weights reading the copies are
divided by k, so the wide network computes the same function; a little noise breaks the copies' symmetry.

Copies are interleaved (new channel c is old channel c // k) so that every GroupNorm group, every attention
head and every skip concatenation of the wide network holds exactly the copies of one old group, head or part:
the statistics, attention weights and concatenations are unchanged. Three places are not plain channels: the
image and position inputs and the output (kept as they are), the sinusoidal time features (the wide network
has k times as many frequencies; the old ones are among them, the new ones start with zero weight), and the
attention logits (the head is k times as wide, so the query is scaled by 1 / sqrt(k)).
"""
from __future__ import annotations

import math

import torch

TIME_FEATURES = "time_embedding.linear_1.weight"


def widening_factor(narrow: dict, wide: dict) -> int | None:
    """k if ``wide`` is the UNet config ``narrow`` with every width times the integer k (1: the same widths),
    else None."""
    a, b = list(narrow["block_out_channels"]), list(wide["block_out_channels"])
    if len(a) != len(b) or b[0] % a[0] or narrow.get("freq_shift", 0):  # time features: see _time_feature_columns
        return None
    k = b[0] // a[0]
    shared = (set(narrow) & set(wide)) - {"block_out_channels", "attention_head_dim", "in_channels"}
    if b != [k * c for c in a] or any(narrow[key] != wide[key] for key in shared if not key.startswith("_")):
        return None
    return k


def wide_config(narrow: dict, wide: dict) -> dict:
    """``wide`` with the attention head width of ``narrow`` times k, so heads hold copies of old heads (k = 1:
    the same heads, e.g. fine-tuning a widened prior with its own channels)."""
    k = widening_factor(narrow, wide)
    if not k:
        return wide
    return {**wide, "attention_head_dim": int(narrow["attention_head_dim"]) * k}


def _time_feature_columns(n_old: int, k: int) -> torch.Tensor:
    """For each of the wide network's n_old * k sinusoidal time features, the old feature of the same
    frequency, or -1 (cos half then sin half; frequencies 10000^(-i / half), i.e. diffusers' freq_shift 0)."""
    half = n_old // 2
    j = torch.arange(half * k)
    old = torch.where(j % k == 0, j // k, torch.full_like(j, -1))
    return torch.cat([old, torch.where(old >= 0, old + half, old)])


def widen_state_dict(narrow: dict, wide_shapes: dict, k: int, noise: float = 0.01,
                     generator: torch.Generator | None = None) -> dict:
    """The narrow network's state dict widened k times to the shapes ``wide_shapes`` (name -> shape);
    ``noise``: relative std of the symmetry-breaking noise added to every widened tensor."""
    out = {}
    for name, w in narrow.items():
        shape = tuple(wide_shapes[name])
        w = w.detach().float()
        if name == TIME_FEATURES:
            cols = _time_feature_columns(w.shape[1], k)
            v = w[torch.arange(shape[0]) // k][:, cols.clamp(min=0)] * (cols >= 0).float()
        else:
            v = w
            if shape[0] != w.shape[0]:  # output channels: copies
                v = v[torch.arange(shape[0]) // (shape[0] // w.shape[0])]
            if w.dim() > 1 and shape[1] != w.shape[1]:  # input channels: copies share the old weight
                kin = shape[1] // w.shape[1]
                v = v[:, torch.arange(shape[1]) // kin] / kin
        if name.endswith("to_q.weight") or name.endswith("to_q.bias"):
            v = v / math.sqrt(k)
        if tuple(v.shape) != shape:
            raise ValueError(f"{name}: cannot widen {tuple(w.shape)} to {shape}")
        if noise and v.shape != w.shape and v.numel() > 1:
            v = v + noise * v.std() * torch.randn(v.shape, generator=generator)
        out[name] = v
    return out
