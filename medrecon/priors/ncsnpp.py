"""NCSN++ (score_sde, VE SDE, continuous Fourier noise embedding), written from fixtures/FORMATS.md §2.

The layers live in one flat ``all_modules`` list, so the state-dict keys are ``all_modules.<i>.<name>``
exactly as in score_sde checkpoints, and ``forward`` consumes the list strictly in order. Only the
configuration DiffusionMBIR uses is implemented (BigGAN residual blocks with FIR resampling, residual
progressive input, no output pyramid, Fourier embedding, skip_rescale, scale_by_sigma); other values of
those switches are refused with a clear error rather than silently computed differently.

Call: ``net(x, sigma)`` with x (B, C, S, S) in the data range [0, 1] (the network centres it itself) and
sigma (B,) the VE noise level; the output is the score estimate (already divided by sigma).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# DiffusionMBIR configs/ve/AAPM_256_ncsnpp_continuous.py, flattened (model + data fields the network reads).
AAPM256_CONFIG = {
    "image_size": 256, "num_channels": 1, "centered": False,
    "nf": 128, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 4, "attn_resolutions": [16], "dropout": 0.0,
    "resblock_type": "biggan", "fir": True, "fir_kernel": [1, 3, 3, 1], "progressive": "none",
    "progressive_input": "residual", "embedding_type": "fourier", "fourier_scale": 16.0, "conditional": True,
    "skip_rescale": True, "scale_by_sigma": True,
    "sigma_min": 0.01, "sigma_max": 378.0, "num_scales": 2000,
}
# The only values this implementation supports for the architecture switches.
_FIXED = {"resblock_type": "biggan", "fir": True, "progressive": "none", "progressive_input": "residual",
          "embedding_type": "fourier", "conditional": True, "skip_rescale": True, "scale_by_sigma": True}


def ncsnpp_config(config: dict | None = None, **overrides) -> dict:
    """AAPM-256 defaults updated by ``config`` (flat, or score_sde's nested model/data dict) and overrides."""
    cfg = dict(AAPM256_CONFIG)
    if config:
        if "model" in config and isinstance(config["model"], dict):  # nested score_sde config
            flat = dict(config["model"])
            flat.update({k: v for k, v in config.get("data", {}).items()
                         if k in ("image_size", "num_channels", "centered")})
        else:
            flat = dict(config)
        cfg.update({k: v for k, v in flat.items() if k in AAPM256_CONFIG})
    cfg.update(overrides)
    for k, v in _FIXED.items():
        if cfg[k] != v:
            raise ValueError(f"NCSN++ option {k}={cfg[k]!r} is not supported (only {v!r}, DiffusionMBIR's setting)")
    cfg["ch_mult"] = [int(m) for m in cfg["ch_mult"]]
    cfg["attn_resolutions"] = [int(r) for r in cfg["attn_resolutions"]]
    cfg["fir_kernel"] = [float(k) for k in cfg["fir_kernel"]]
    return cfg


# ---- building blocks ---------------------------------------------------------------------------------------

def _group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(ch // 4, 32), ch, eps=1e-6)


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


def _fir(x: torch.Tensor, kernel: list[float], gain: float = 1.0) -> torch.Tensor:
    """Depthwise 2D FIR kernel outer(k, k) / sum, times gain, shaped for conv2d with groups=C."""
    k = torch.tensor(kernel, dtype=x.dtype, device=x.device)
    k2 = torch.outer(k, k)
    k2 = k2 / k2.sum() * gain
    return k2.expand(x.shape[1], 1, *k2.shape)


def fir_down(x: torch.Tensor, kernel: list[float]) -> torch.Tensor:
    """FIR downsampling by 2: pad (n-2)/2 each side, blur, stride 2 (H -> H/2)."""
    p = len(kernel) - 2
    x = F.pad(x, ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
    return F.conv2d(x, _fir(x, kernel), stride=2, groups=x.shape[1])


def fir_up(x: torch.Tensor, kernel: list[float]) -> torch.Tensor:
    """FIR upsampling by 2: zero insertion, pad, blur with 4*K (H -> 2H)."""
    b, c, h, w = x.shape
    z = x.new_zeros(b, c, 2 * h, 2 * w)
    z[:, :, ::2, ::2] = x
    p = len(kernel) - 2
    z = F.pad(z, ((p + 1) // 2 + 1, p // 2, (p + 1) // 2 + 1, p // 2))
    return F.conv2d(z, _fir(z, kernel, gain=4.0), groups=c)


class FourierEmbedding(nn.Module):
    """Fixed random Fourier features of log(sigma): [sin, cos](2*pi*W*log sigma); W is not trained."""

    def __init__(self, nf: int, scale: float):
        super().__init__()
        self.W = nn.Parameter(torch.randn(nf) * scale, requires_grad=False)

    def forward(self, log_sigma: torch.Tensor) -> torch.Tensor:
        proj = log_sigma[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class ResBlock(nn.Module):
    """BigGAN-style residual block with FIR up/down, time conditioning and (x + h)/sqrt(2)."""

    def __init__(self, cin: int, cout: int, temb_dim: int, kernel: list[float], up=False, down=False):
        super().__init__()
        self.up, self.down, self.kernel = up, down, kernel
        self.GroupNorm_0 = _group_norm(cin)
        self.Conv_0 = _conv(cin, cout)
        self.Dense_0 = nn.Linear(temb_dim, cout)
        self.GroupNorm_1 = _group_norm(cout)
        self.Conv_1 = _conv(cout, cout)
        if cin != cout or up or down:
            self.Conv_2 = _conv(cin, cout, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.GroupNorm_0(x))
        if self.up:
            h, x = fir_up(h, self.kernel), fir_up(x, self.kernel)
        elif self.down:
            h, x = fir_down(h, self.kernel), fir_down(x, self.kernel)
        h = self.Conv_0(h)
        h = h + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(F.silu(self.GroupNorm_1(h)))
        if hasattr(self, "Conv_2"):
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0)


class NIN(nn.Module):
    """Per-pixel linear map stored as W (C_in, C_out), b (C_out)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(cin, cout))
        self.b = nn.Parameter(torch.zeros(cout))
        nn.init.xavier_uniform_(self.W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.W) + self.b[None, :, None, None]


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, (x + h)/sqrt(2)."""

    def __init__(self, ch: int):
        super().__init__()
        self.GroupNorm_0 = _group_norm(ch)
        self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3 = (NIN(ch, ch) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        n = self.GroupNorm_0(x)
        q, k, v = (m(n).reshape(b, c, hh * ww) for m in (self.NIN_0, self.NIN_1, self.NIN_2))
        w = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c ** -0.5, dim=-1)  # (b, i, j)
        h = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return (x + self.NIN_3(h)) / math.sqrt(2.0)


class PyramidDown(nn.Module):
    """Input-pyramid downsampling: FIR blur (pad 2), then a 3x3 convolution with stride 2."""

    def __init__(self, cin: int, cout: int, kernel: list[float]):
        super().__init__()
        self.kernel = kernel
        self.Conv2d_0 = nn.Conv2d(cin, cout, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (2, 2, 2, 2))
        return self.Conv2d_0(F.conv2d(x, _fir(x, self.kernel), groups=x.shape[1]))


# ---- the network ------------------------------------------------------------------------------------------

class NCSNpp(nn.Module):
    """NCSN++ continuous VE score network; ``config`` as returned by :func:`ncsnpp_config`."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        c = self.config = ncsnpp_config(config)
        nf, mult, nrb, k = c["nf"], c["ch_mult"], c["num_res_blocks"], c["fir_kernel"]
        size, nch, temb = c["image_size"], c["num_channels"], 4 * c["nf"]
        if size % 2 ** (len(mult) - 1):
            raise ValueError(f"NCSN++ image_size {size} must be divisible by 2^{len(mult) - 1}")
        self.resolutions = [size // 2 ** lvl for lvl in range(len(mult))]
        attn = set(c["attn_resolutions"])

        def res(cin, cout, **kw):
            return ResBlock(cin, cout, temb, k, **kw)

        mods: list[nn.Module] = [FourierEmbedding(nf, c["fourier_scale"]), nn.Linear(2 * nf, temb),
                                 nn.Linear(temb, temb), _conv(nch, nf)]
        skips, ch, pyr = [nf], nf, nch
        for lvl, m in enumerate(mult):
            for _ in range(nrb):
                mods.append(res(ch, nf * m))
                ch = nf * m
                if self.resolutions[lvl] in attn:
                    mods.append(AttnBlock(ch))
                skips.append(ch)
            if lvl < len(mult) - 1:
                mods += [res(ch, ch, down=True), PyramidDown(pyr, ch, k)]
                pyr = ch
                skips.append(ch)
        mods += [res(ch, ch), AttnBlock(ch), res(ch, ch)]
        for lvl in reversed(range(len(mult))):
            for _ in range(nrb + 1):
                mods.append(res(ch + skips.pop(), nf * mult[lvl]))
                ch = nf * mult[lvl]
            if self.resolutions[lvl] in attn:
                mods.append(AttnBlock(ch))
            if lvl > 0:
                mods.append(res(ch, ch, up=True))
        mods += [_group_norm(ch), _conv(ch, nch)]
        self.all_modules = nn.ModuleList(mods)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c = self.config
        if tuple(x.shape[-2:]) != (c["image_size"],) * 2:
            raise ValueError(f"NCSN++ runs only at its configured size {c['image_size']}x{c['image_size']}, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        mods = iter(self.all_modules)
        temb = next(mods)(torch.log(sigma))
        temb = next(mods)(temb)
        temb = next(mods)(F.silu(temb))
        if not c["centered"]:
            x = 2 * x - 1.0
        pyramid, hs = x, [next(mods)(x)]
        attn, nlev = set(c["attn_resolutions"]), len(c["ch_mult"])
        for lvl in range(nlev):
            for _ in range(c["num_res_blocks"]):
                h = next(mods)(hs[-1], temb)
                if self.resolutions[lvl] in attn:
                    h = next(mods)(h)
                hs.append(h)
            if lvl < nlev - 1:
                h = next(mods)(hs[-1], temb)
                pyramid = (next(mods)(pyramid) + h) / math.sqrt(2.0)
                hs.append(pyramid)
        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        for lvl in reversed(range(nlev)):
            for _ in range(c["num_res_blocks"] + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if self.resolutions[lvl] in attn:
                h = next(mods)(h)
            if lvl > 0:
                h = next(mods)(h, temb)
        h = F.silu(next(mods)(h))
        h = next(mods)(h)
        return h / sigma.reshape(-1, 1, 1, 1)


def ncsnpp_state_from_checkpoint(ckpt: dict, network: NCSNpp, use_ema: bool = True) -> dict:
    """The bare network's state dict from a score_sde checkpoint dict: strip ``module.``, drop the
    ``sigmas`` buffer and, with ``use_ema``, put the EMA shadow params over the trainable parameters in
    ``parameters()`` order (the fixed Fourier W is not in the shadow list and keeps the model value).
    Raises ValueError when the EMA list does not fit the network."""
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in ckpt["model"].items()}
    state.pop("sigmas", None)
    ema = ckpt.get("ema") if use_ema else None
    if ema:
        shadow = list(ema["shadow_params"])
        trainable = [n for n, p in network.named_parameters() if p.requires_grad]
        if len(shadow) != len(trainable):
            raise ValueError(f"EMA has {len(shadow)} shadow tensors but the network has {len(trainable)} "
                             "trainable parameters (wrong architecture config?)")
        for name, s in zip(trainable, shadow):
            if name in state and tuple(state[name].shape) != tuple(s.shape):
                raise ValueError(f"EMA tensor for {name} has shape {tuple(s.shape)}, "
                                 f"the checkpoint's model has {tuple(state[name].shape)}")
            state[name] = s
    return state
