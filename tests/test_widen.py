"""Widening a trained UNet (Net2WiderNet): the wide network starts as the narrow one."""
import pytest
import torch

from medrecon.priors.unet import build_unet, unet_config
from medrecon.priors.widen import wide_config, widen_state_dict, widening_factor


@pytest.mark.parametrize("k", [2, 3])
def test_widened_unet_computes_the_narrow_function(k):
    torch.manual_seed(0)
    narrow_cfg = unet_config(16, (8, 16, 16), 1, in_channels=3, attention=True, attention_head_dim=8)
    narrow = build_unet(narrow_cfg).eval()
    with torch.no_grad():  # diffusers zero-inits nothing here, but make every weight matter
        for p in narrow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = wide_config(narrow_cfg, unet_config(16, (8 * k, 16 * k, 16 * k), 1, in_channels=3, attention=True,
                                              attention_head_dim=8))
    assert cfg["attention_head_dim"] == 8 * k and widening_factor(narrow_cfg, cfg) == k
    wide = build_unet(cfg).eval()
    shapes = {n: t.shape for n, t in wide.state_dict().items()}
    wide.load_state_dict(widen_state_dict(narrow.state_dict(), shapes, k, noise=0.0))
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0.05, 1.0, 50.0])
    with torch.no_grad():
        a, b = narrow(x, t).sample, wide(x, t).sample
    assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max()) * k)  # float32 sums in another order
    noisy = widen_state_dict(narrow.state_dict(), shapes, k, noise=0.01, generator=torch.Generator().manual_seed(0))
    w = noisy["down_blocks.0.resnets.0.conv1.weight"]
    assert not torch.equal(w[0], w[1])  # the copies of a channel differ: training can tell them apart


def test_widening_factor_refuses_other_shapes():
    base = unet_config(16, (8, 16), 1)
    assert widening_factor(base, unet_config(16, (16, 32), 1)) == 2
    assert widening_factor(base, unet_config(16, (8, 16), 1)) == 1
    widened = unet_config(16, (32, 64), 1, attention_head_dim=64)  # a prior widened 2x from head width 32
    assert wide_config(widened, unet_config(16, (32, 64), 1))["attention_head_dim"] == 64  # k = 1 keeps its heads
    assert widening_factor(base, unet_config(16, (16, 24), 1)) is None  # not one factor
    assert widening_factor(base, unet_config(16, (16, 32), 2)) is None  # deeper, not wider
    assert widening_factor(base, unet_config(16, (16, 32, 64), 1)) is None
    shifted = {"freq_shift": 1}  # other time frequencies: the old ones are not among the wide ones
    assert widening_factor({**base, **shifted}, {**unet_config(16, (16, 32), 1), **shifted}) is None
