"""NCSN++ (score_sde, VE): golden outputs of the tiny fixture, EMA handling, full-size key list, size checks."""
from pathlib import Path

import pytest
import torch
from shared_fixtures import fixtures_root, rel_err

from medrecon.priors import load_prior
from medrecon.priors.ncsnpp import NCSNpp

FIX = fixtures_root() / "ncsnpp"
pytestmark = pytest.mark.skipif(not FIX.is_dir(), reason="shared NCSN++ fixtures not present")


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIX / "tiny_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def prior(golden):
    return load_prior(FIX / "tiny_checkpoint.pth", card={"config": golden["config"]})


def test_golden_model_output_and_score(prior, golden):
    with torch.no_grad():
        out = prior.network(golden["x"], golden["labels"])
        score = prior.score(golden["x"], golden["labels"])
    assert rel_err(out, golden["model_output"]).max() <= 1e-5
    assert rel_err(score, golden["score"]).max() <= 1e-5
    nominal = prior.network(golden["x"], golden["sigmas"])
    assert rel_err(nominal, golden["model_output_at_nominal_sigmas"]).max() <= 1e-5


def test_denoiser_is_tweedie_of_the_score(prior, golden):
    """D(x, sigma) = x + sigma^2 s(x, sigma), both from this machine's network: the golden score is checked
    above to its own 1e-5; here the identity holds to float32 rounding of the sum (a few ulps of the terms)."""
    x, s = golden["x"], golden["labels"]
    with torch.no_grad():
        d = prior.denoise(x, s)
        term = s.view(-1, 1, 1, 1) ** 2 * prior.score(x, s)
    ulp = torch.finfo(torch.float32).eps
    assert ((d - (x + term)).abs() <= 8 * ulp * (x.abs() + term.abs())).all()


def test_ema_is_applied_and_forgetting_it_is_detected(prior, golden):
    raw = load_prior(FIX / "tiny_checkpoint.pth", card={"config": golden["config"]}, use_ema=False)
    with torch.no_grad():
        out_raw = raw.network(golden["x"], golden["labels"])
        out_ema = prior.network(golden["x"], golden["labels"])
    assert rel_err(out_raw, golden["model_output_without_ema"]).max() <= 1e-5
    assert rel_err(out_raw, golden["model_output"]).min() > 1e-2  # the golden test would catch a missing EMA
    assert prior.card["ema_applied"] is True and raw.card["ema_applied"] is False
    # the fixed Fourier frequencies are not in the EMA list and keep the checkpoint's value
    ck = torch.load(FIX / "tiny_checkpoint.pth", weights_only=True)
    assert torch.equal(prior.network.all_modules[0].W, ck["model"]["module.all_modules.0.W"])
    assert rel_err(out_ema, golden["model_output"]).max() <= 1e-5


def test_fourier_features_sine_first(prior, golden):
    feats = prior.network.all_modules[0](torch.log(golden["labels"]))
    assert rel_err(feats, golden["module_outputs"][0][2]).max() <= 1e-6


def test_prior_attributes(prior, golden):
    assert prior.image_size == 32 and prior.schedule.kind == "ve"
    assert prior.schedule.sigma_min == pytest.approx(0.01) and prior.schedule.sigma_max == pytest.approx(378.0)
    assert prior.card["checkpoint_step"] == 123
    n0 = prior.nfe
    prior.denoise(golden["x"], golden["labels"])
    assert prior.nfe == n0 + 3
    assert prior.device.type == "cpu"


def test_public_card_comes_from_the_pipelines():
    """The core knows no modality: the AAPM CT card of the public checkpoints is added by pipelines.prior_cards."""
    from pipelines.prior_cards import load_prior_for
    golden = torch.load(FIX / "tiny_golden.pt", weights_only=True)
    p = load_prior_for(FIX / "tiny_checkpoint.pth", card={"config": golden["config"]})
    assert p.intensity.model_min == 0.0 and p.intensity.model_max == 1.0 and p.intensity.unit == "HU"
    assert p.card["modality"] == "ct" and p.card["assumptions"]


def test_aapm256_keys_and_shapes_exact():
    rows = [line.rstrip("\n").split("\t") for line in open(FIX / "aapm256_state_dict_keys.tsv")
            if not line.startswith("#")]
    ref = [(k[len("module."):], tuple(int(d) for d in s.split(","))) for k, s, _ in rows if k != "module.sigmas"]
    with torch.device("meta"):
        net = NCSNpp()  # AAPM-256 defaults
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == ref
    params = [line.split("\t") for line in open(FIX / "aapm256_parameters.tsv") if not line.startswith("#")]
    trainable = [p[1][len("module."):] for p in params if p[5] == "1"]
    assert [n for n, p in net.named_parameters() if p.requires_grad] == trainable  # EMA shadow order


def test_wrong_image_size_is_refused(prior):
    with pytest.raises(ValueError, match="trained at 32x32"):
        prior.denoise(torch.zeros(1, 1, 64, 64), torch.ones(1))
    with pytest.raises(ValueError, match="configured size 32x32"):
        prior.network(torch.zeros(1, 1, 64, 64), torch.ones(1))


@pytest.mark.gpu
def test_cuda_matches_golden(golden):
    p = load_prior(FIX / "tiny_checkpoint.pth", card={"config": golden["config"]}, device="cuda")
    with torch.no_grad():
        out = p.score(golden["x"].cuda(), golden["labels"].cuda()).cpu()
    assert rel_err(out, golden["model_output"]).max() <= 1e-4  # TF32/cuDNN arithmetic differs from CPU
