"""ADM (guided-diffusion, VP, learned sigma): golden outputs, key list, config inference, VE<->VP conversion."""
from pathlib import Path

import pytest
import torch
from shared_fixtures import fixtures_root, rel_err

from medrecon.errors import InputError
from medrecon.priors import GaussianDenoiser, VPEpsPrior, VPSchedule, load_prior
from medrecon.priors.adm import AAPM256_CONFIG, ADMUNet, adm_config_from_state_dict

FIX = fixtures_root() / "adm"
pytestmark = pytest.mark.skipif(not FIX.is_dir(), reason="shared ADM fixtures not present")


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIX / "tiny_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def prior():
    # the tiny channel_mult (1,2,2,4) has no guided-diffusion default size: the card supplies it
    return load_prior(FIX / "tiny_checkpoint.pt", card={"image_size": 32})


def test_golden_outputs_float_and_int_timesteps(prior, golden):
    with torch.no_grad():
        out_f = prior.network(golden["x"], golden["timesteps"])
        out_i = prior.network(golden["x"], golden["timesteps"].long())
        eps = prior.eps(golden["x"], golden["timesteps"])
    assert rel_err(out_f, golden["model_output"]).max() <= 1e-5
    assert rel_err(out_i, golden["model_output_int64_timesteps"]).max() <= 1e-5
    assert rel_err(eps, golden["eps"]).max() <= 1e-5


def test_config_is_inferred_from_shapes(prior, golden):
    cfg = prior.card["config"]
    resolved = golden["config"]["resolved"]
    assert cfg["channel_mult"] == list(resolved["channel_mult"])
    assert cfg["attention_ds"] == list(resolved["attention_resolutions_downsample_factors"])
    assert cfg["model_channels"] == resolved["model_channels"] and cfg["out_channels"] == resolved["out_channels"]
    assert cfg["num_res_blocks"] == 1 and cfg["use_scale_shift_norm"] is True
    assert cfg["attention_resolutions"] == [8]


def test_schedule_matches_dds(prior, golden):
    assert prior.schedule.kind == "vp"
    assert torch.equal(prior.schedule.betas, golden["betas"])
    assert torch.allclose(prior.schedule.alphas_cumprod, golden["alphas_cumprod"], rtol=1e-6, atol=0)


def test_aapm256_keys_shapes_and_inference():
    rows = [line.rstrip("\n").split("\t") for line in open(FIX / "aapm256_state_dict_keys.tsv")
            if not line.startswith("#")]
    ref = [(k, tuple(int(d) for d in s.split(","))) for k, s, _ in rows]
    with torch.device("meta"):
        net = ADMUNet()  # DDS AAPM256.yml defaults
    sd = net.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == ref
    inferred = adm_config_from_state_dict(sd)
    for k in ("model_channels", "num_res_blocks", "channel_mult", "image_size", "out_channels"):
        assert inferred[k] == AAPM256_CONFIG[k]
    assert inferred["attention_ds"] == [16]  # 16x16 at image size 256


def test_ve_view_reproduces_dds_tweedie(prior, golden):
    """VP prior seen as VE: D(x_t / sqrt(abar_t), sigma_t) equals DDS's x0_pred at the same native steps."""
    t = golden["timesteps"].long()
    abar = prior.schedule.alphas_cumprod[t].double()
    sigma_t = torch.sqrt((1 - abar) / abar)
    x_ve = (golden["x"].double() / abar.sqrt().view(-1, 1, 1, 1)).float()
    d = prior.denoise(x_ve, sigma_t.float())
    assert rel_err(d, golden["x0_pred"]).max() <= 1e-5


def test_ve_view_equals_direct_eps_formula_on_grid(prior):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([3, 120, 400, 777, 999])
    sched = prior.schedule
    abar = sched.alphas_cumprod[t]
    x_t = torch.randn(5, 1, 32, 32, generator=g)
    direct = (x_t - (1 - abar).sqrt().view(-1, 1, 1, 1) * prior.eps(x_t, t.float())) / abar.sqrt().view(-1, 1, 1, 1)
    d = prior.denoise(x_t / abar.sqrt().view(-1, 1, 1, 1), sched.sigmas[t])
    assert rel_err(d, direct).max() <= 1e-5


def test_timestep_of_sigma_is_exact_on_the_native_grid():
    s = VPSchedule()
    assert torch.equal(s.timestep_of_sigma(s.sigmas), torch.arange(1000))
    assert torch.equal(s.timestep_of_sigma(s.sigmas.float()), torch.arange(1000))


class _GaussianEps(torch.nn.Module):
    """Exact eps(x_t, t) for x0 ~ N(m, v) under the VP forward process x_t = sqrt(abar) x0 + sqrt(1-abar) n."""

    def __init__(self, sched, m, v):
        super().__init__()
        self.abar, self.m, self.v = sched.alphas_cumprod.double(), m, v
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x_t, t):
        a = self.abar[t.long()].view(-1, 1, 1, 1)
        x_t = x_t.double()
        return ((1 - a).sqrt() * (x_t - a.sqrt() * self.m) / (a * self.v + 1 - a)).float()


def test_vp_and_ve_views_agree_for_gaussian_data():
    sched, m, v = VPSchedule(), 0.3, 0.5
    vp = VPEpsPrior(_GaussianEps(sched, m, v), {"name": "gauss-vp"}, sched, None, None)
    ve = GaussianDenoiser(m, v)
    t = torch.tensor([0, 10, 250, 600, 999])
    sigma = sched.sigmas[t].float()
    n = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = m + n * (v + sigma.view(-1, 1, 1, 1) ** 2).sqrt()
    assert torch.allclose(vp.denoise(x, sigma), ve.denoise(x, sigma), rtol=1e-4, atol=1e-5)


def test_unknown_image_size_needs_a_card():
    with pytest.raises(InputError, match=r"tiny_checkpoint.pt: cannot tell the image size.*image_size"):
        load_prior(FIX / "tiny_checkpoint.pt")


def test_wrong_image_size_is_refused(prior):
    with pytest.raises(ValueError, match="trained at 32x32"):
        prior.denoise(torch.zeros(1, 1, 48, 48), torch.ones(1))
    with pytest.raises(ValueError, match="divisible by 8"):
        prior.network(torch.zeros(1, 1, 36, 36), torch.zeros(1))


@pytest.mark.gpu
def test_cuda_matches_golden(golden):
    p = load_prior(FIX / "tiny_checkpoint.pt", card={"image_size": 32}, device="cuda")
    assert p.device.type == "cuda"
    with torch.no_grad():
        out = p.network(golden["x"].cuda(), golden["timesteps"].cuda()).cpu()
    assert rel_err(out, golden["model_output"]).max() <= 1e-4  # TF32/cuDNN arithmetic differs from CPU


def test_a_two_channel_adm_is_refused_and_a_guessed_size_is_marked(tmp_path):
    """DDS's complex fastMRI ADMs take 2 input channels: one loaded as a 256-pixel CT prior and crashed at the first
    denoising ('expected input ... to have 2 channels'). Its channel_mult is guided-diffusion's default for 256 and
    320 pixels alike: the size taken is listed among the card's assumptions."""
    import torch

    small = {"model_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 1, 2, 2, 4, 4], "attention_ds": [],
             "num_head_channels": 32, "image_size": 64}  # GroupNorm32: widths of 32
    torch.save(ADMUNet({**small, "in_channels": 2, "out_channels": 4}).state_dict(), tmp_path / "complex.pt")
    with pytest.raises(InputError, match=r"complex.pt: this ADM takes 2 input channels.*single-channel checkpoint"):
        load_prior(tmp_path / "complex.pt")
    torch.save(ADMUNet({**small, "in_channels": 1, "out_channels": 2}).state_dict(), tmp_path / "real.pt")
    guessed = load_prior(tmp_path / "real.pt")
    assert guessed.image_size == 256 and any("256 and 320 pixels alike; 256 assumed" in a
                                             for a in guessed.card["assumptions"])
    told = load_prior(tmp_path / "real.pt", card={"image_size": 320})
    assert told.image_size == 320 and not any("alike" in a for a in told.card.get("assumptions") or [])
