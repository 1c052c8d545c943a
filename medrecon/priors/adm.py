"""ADM, the guided-diffusion UNet used by DDS (VP, learned sigma), written from fixtures/FORMATS.md §3.

Module names follow the guided-diffusion state dict (``input_blocks.<i>.<j>...``, ``middle_block``,
``output_blocks``, ``out``), so its checkpoints load with strict key matching. Supported: residual-block
up/down sampling (``resblock_updown``), with or without scale-shift norm, legacy or new attention order,
no class conditioning.

Call: ``net(x_t, t)`` with x_t (B, C, H, W) on the VP scale and t (B,) integer timesteps (float or int);
output (B, out_channels, H, W), channels [:C] are eps, the rest the learned variance interpolation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# DDS configs/vp/AAPM256.yml after the model factory resolved it.
AAPM256_CONFIG = {
    "image_size": 256, "in_channels": 1, "model_channels": 256, "out_channels": 2, "num_res_blocks": 1,
    "attention_resolutions": [16], "channel_mult": [1, 1, 2, 2, 4, 4], "num_head_channels": 64,
    "num_heads": 4, "use_scale_shift_norm": True, "resblock_updown": True, "use_new_attention_order": False,
    "dropout": 0.0,
}
# guided-diffusion's default channel_mult per image size (used when a config does not give one).
DEFAULT_CHANNEL_MULT = {512: [0.5, 1, 1, 2, 2, 4, 4], 256: [1, 1, 2, 2, 4, 4], 320: [1, 1, 2, 2, 4, 4],
                        128: [1, 1, 2, 3, 4], 64: [1, 2, 3, 4]}


def _csv(v) -> list:
    if isinstance(v, str):
        return [float(s) if "." in s else int(s) for s in v.split(",") if s.strip()]
    return list(v)


def adm_config(config: dict | None = None, **overrides) -> dict:
    """A resolved ADM config from AAPM256 defaults, updated by ``config`` (resolved keys, or the DDS yml
    model dict: ``num_channels``, comma-string ``attention_resolutions``/``channel_mult``, ``learn_sigma``)."""
    given = dict(config or {})
    given.update(overrides)
    if given.get("class_cond"):
        raise ValueError("class-conditional ADM models are not supported")
    if given.get("resblock_updown") is False:
        raise ValueError("ADM with resblock_updown=False (convolutional resampling) is not supported")
    cfg = dict(AAPM256_CONFIG)
    if "num_channels" in given and "model_channels" not in given:
        given["model_channels"] = given["num_channels"]
    cfg.update({k: v for k, v in given.items() if k in AAPM256_CONFIG})
    size = cfg["image_size"]
    if given.get("channel_mult") in ("", None):
        if size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"ADM image_size {size} has no default channel_mult; give channel_mult explicitly")
        cfg["channel_mult"] = DEFAULT_CHANNEL_MULT[size]
    cfg["channel_mult"] = _csv(cfg["channel_mult"])
    if "learn_sigma" in given:  # DDS yml semantics: learn_sigma decides, the yml out_channels is ignored
        cfg["out_channels"] = cfg["in_channels"] * (2 if given["learn_sigma"] else 1)
    if given.get("attention_ds") is not None:
        cfg["attention_ds"] = [int(d) for d in given["attention_ds"]]
    elif size is None:
        raise ValueError("ADM attention_resolutions (spatial sizes) need image_size; or give attention_ds")
    else:  # attention_resolutions are spatial sizes; the network places attention by downsample factor
        cfg["attention_ds"] = [int(size) // int(r) for r in _csv(cfg["attention_resolutions"])]
    cfg["attention_resolutions"] = [int(size) // d for d in cfg["attention_ds"]] if size else None
    return cfg


class GroupNorm32(nn.GroupNorm):
    """32-group GroupNorm computed in float32."""

    def __init__(self, ch: int):
        super().__init__(32, ch, eps=1e-5)

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin](t * freq_i), freq_i = exp(-ln(max_period) * i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """ADM residual block: optional avg-pool down / nearest up, FiLM (scale-shift) time conditioning."""

    def __init__(self, cin: int, cout: int, emb_dim: int, scale_shift: bool, dropout: float = 0.0,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.up, self.down, self.scale_shift = up, down, scale_shift
        self.in_layers = nn.Sequential(GroupNorm32(cin), nn.SiLU(), _conv(cin, cout))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * cout if scale_shift else cout))
        self.out_layers = nn.Sequential(GroupNorm32(cout), nn.SiLU(), nn.Dropout(dropout), _conv(cout, cout))
        self.skip_connection = nn.Identity() if cin == cout else _conv(cin, cout, 1)

    def _resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[:-1](x)
        h, x = self._resample(h), self._resample(x)
        h = self.in_layers[-1](h)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels; ``legacy`` splits the qkv channels by head first."""

    def __init__(self, ch: int, heads: int, legacy: bool = True):
        super().__init__()
        self.heads, self.legacy = heads, legacy
        self.norm = GroupNorm32(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        xf = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(xf))
        d, n = c // self.heads, xf.shape[-1]
        if self.legacy:
            q, k, v = qkv.reshape(b * self.heads, 3 * d, n).split(d, dim=1)
        else:
            q, k, v = (t.reshape(b * self.heads, d, n) for t in qkv.chunk(3, dim=1))
        scale = 1 / math.sqrt(math.sqrt(d))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, n)
        return (xf + self.proj_out(a)).reshape(x.shape)


class EmbSequential(nn.Sequential):
    """A sequence of layers; residual blocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """guided-diffusion UNetModel (unconditional); ``config`` as returned by :func:`adm_config`."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        c = self.config = adm_config(config)
        mc, emb_dim, nrb = c["model_channels"], 4 * c["model_channels"], c["num_res_blocks"]
        mult, attn_ds = c["channel_mult"], set(c["attention_ds"])

        def heads(ch):
            return ch // c["num_head_channels"] if c["num_head_channels"] > 0 else c["num_heads"]

        def res(cin, cout, **kw):
            return ResBlock(cin, cout, emb_dim, c["use_scale_shift_norm"], c["dropout"], **kw)

        def attn(ch):
            return AttentionBlock(ch, heads(ch), legacy=not c["use_new_attention_order"])

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = int(mult[0] * mc)
        self.input_blocks = nn.ModuleList([EmbSequential(_conv(c["in_channels"], ch))])
        skips, ds = [ch], 1
        for lvl, m in enumerate(mult):
            for _ in range(nrb):
                layers = [res(ch, int(m * mc))]
                ch = int(m * mc)
                if ds in attn_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbSequential(*layers))
                skips.append(ch)
            if lvl < len(mult) - 1:
                self.input_blocks.append(EmbSequential(res(ch, ch, down=True)))
                skips.append(ch)
                ds *= 2
        self.middle_block = EmbSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for lvl in reversed(range(len(mult))):
            for i in range(nrb + 1):
                layers = [res(ch + skips.pop(), int(mc * mult[lvl]))]
                ch = int(mc * mult[lvl])
                if ds in attn_ds:
                    layers.append(attn(ch))
                if lvl and i == nrb:
                    layers.append(res(ch, ch, up=True))
                    ds //= 2
                self.output_blocks.append(EmbSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _conv(ch, c["out_channels"]))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        f = 2 ** (len(self.config["channel_mult"]) - 1)
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"ADM with {len(self.config['channel_mult'])} levels needs H and W divisible by {f}, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        emb = self.time_embed(timestep_embedding(t, self.config["model_channels"]))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def adm_config_from_state_dict(state: dict) -> dict:
    """Infer the size config of a guided-diffusion UNet from its state-dict keys and shapes.

    Recovers in/out channels, model_channels, num_res_blocks, channel_mult, attention downsample factors,
    scale-shift norm. Not recoverable: the image size it was trained at (guessed from guided-diffusion's
    default channel_mult table, else None) and the head count (num_head_channels 64 assumed, DDS's value).
    Raises KeyError/ValueError when the keys are not an ADM layout.
    """
    mc = state["time_embed.0.weight"].shape[1]
    in_ch = state["input_blocks.0.0.weight"].shape[1]
    out_ch = state["out.2.weight"].shape[0]
    n_out = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("output_blocks."))
    up = [i for i in range(n_out) if any(f"output_blocks.{i}.{j}.in_layers.0.weight" in state for j in (1, 2))]
    nrb = up[0] if up else n_out - 1
    levels = n_out // (nrb + 1)
    if levels * (nrb + 1) != n_out:
        raise ValueError("output_blocks do not form whole levels")
    mult, ds = [], []
    for lvl in range(levels):
        first = (levels - 1 - lvl) * (nrb + 1)
        w = state[f"output_blocks.{first}.0.out_layers.3.weight"].shape[0]
        mult.append(int(w // mc) if w % mc == 0 else w / mc)
        if f"output_blocks.{first}.1.qkv.weight" in state:
            ds.append(2 ** lvl)
    emb_out = state["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    first_width = state["input_blocks.1.0.out_layers.3.weight"].shape[0]
    size = next((s for s, m in DEFAULT_CHANNEL_MULT.items() if m == mult), None)
    cfg = {"in_channels": in_ch, "model_channels": mc, "out_channels": out_ch, "num_res_blocks": nrb,
           "channel_mult": mult, "attention_ds": ds, "use_scale_shift_norm": emb_out == 2 * first_width,
           "num_head_channels": 64, "image_size": size}
    return cfg
