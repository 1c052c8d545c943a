"""2.5D patch priors: the network also sees the noisy neighbouring slices (``context_slices``)."""
import nibabel as nib
import numpy as np
import pytest
import torch

from medrecon.errors import InputError
from medrecon.linop import Identity
from medrecon.priors import load_prior, read_model_card
from medrecon.priors.base import Denoiser, schedule_from_dict, stack_indices
from medrecon.priors.patch import PatchPrior, PatchSampler, prepare_volumes
from medrecon.priors.unet import EDM_SCHEDULE
from medrecon.solvers import FastSampler
from medrecon.volume import Volume

CT = {"physical_min": -1000.0, "physical_max": 1000.0, "unit": "HU"}


def test_stack_indices_order_edges_and_z_flip():
    assert stack_indices(3, 10, 0) == [3]
    assert stack_indices(3, 10, 1) == [3, 2, 4]
    assert stack_indices(3, 10, 2) == [3, 1, 2, 4, 5]
    assert stack_indices(0, 10, 2) == [0, 0, 0, 1, 2]  # the edge slice repeats past the volume's ends
    assert stack_indices(9, 10, 1) == [9, 8, 9]
    assert stack_indices(3, 10, 2, z_flip=True) == [3, 5, 4, 2, 1]


def test_sampled_context_channels_are_the_neighbouring_slices():
    """Slices of constant, distinct values: each patch's channels are its slice and the two beside it,
    in either z order."""
    z_n, n = 5, 16
    vol = np.stack([np.full((n, n), -800.0 + 300.0 * z, np.float32) for z in range(z_n)])
    data = prepare_volumes([Volume(vol, spacing=(1.0, 1.0, 2.0))], CT, min_std=0.0)
    level = [float(v.mean()) for v in data.volumes[0]]
    s = PatchSampler(data, sizes=(16,), pixels=32 * 16 * 16, spacing_range=(1.0, 1.0), rotate_deg=0, flip=False,
                     jitter=0, context=1)
    patches, _ = s.sample(torch.Generator().manual_seed(0))
    assert patches.shape == (32, 3, 16, 16)
    orders = set()
    for p in patches:
        z = min(range(z_n), key=lambda k: abs(level[k] - float(p[0].mean())))
        below, above = level[max(z - 1, 0)], level[min(z + 1, z_n - 1)]
        got = (float(p[1].mean()), float(p[2].mean()))
        assert np.allclose(sorted(got), sorted((below, above)), atol=1e-5)
        if below != above:
            orders.add(bool(np.isclose(got[0], below, atol=1e-5)))
    assert orders == {True, False}  # both z orders are drawn


def phantom(rng, z=4, n=28):
    yy, xx = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    vol = np.full((z, n, n), -1000.0, np.float32)
    for k in range(z):
        vol[k][(xx / 0.8) ** 2 + (yy / rng.uniform(0.6, 0.9)) ** 2 < 1] = 40
    return vol


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    """A 2D patch prior trained by the CLI and a 2.5D one started from it (zero steps of learning)."""
    from pipelines.cli import main

    tmp = tmp_path_factory.mktemp("ctx")
    rng = np.random.default_rng(0)
    files = []
    for i in range(2):
        f = tmp / f"v{i}.nii.gz"
        nib.save(nib.Nifti1Image(phantom(rng).transpose(2, 1, 0), np.diag([-0.9, -0.9, 2.0, 1.0])), f)
        files.append(str(f))
    common = ["--arch", "patch", "--data", *files, "--patch-sizes", "8,16", "--channels", "8,16",
              "--batch-size", "2", "--checkpoint-every", "0", "--sample-every", "0", "--pixel-range", "0.9", "2.0",
              "--device", "cpu", "--no-progress"]
    assert main(["train", *common, "--output", str(tmp / "p2d"), "--steps", "3"]) == 0
    assert main(["train", *common, "--output", str(tmp / "p25d"), "--steps", "1", "--lr", "0",
                 "--context-slices", "1", "--init-from", str(tmp / "p2d")]) == 0
    return tmp / "p2d", tmp / "p25d", files


def test_a_2p5d_prior_started_from_a_2d_one_is_that_prior_whatever_its_context(priors):
    p2d, p25d, _ = priors
    a, b = load_prior(p2d), load_prior(p25d)
    assert isinstance(b, PatchPrior) and b.context_slices == 1 and b.network.config.in_channels == 5
    assert read_model_card(p25d)["patch"]["context_slices"] == 1
    x = torch.randn(2, 1, 30, 20, generator=torch.Generator().manual_seed(1))
    ctx = torch.randn(2, 2, 30, 20, generator=torch.Generator().manual_seed(2))
    s = torch.tensor([0.1, 1.0])
    d2 = a.denoise(x, s)
    b.reseed()
    assert torch.allclose(b.denoise(x, s, ctx), d2, atol=1e-6)  # the new inputs start with zero weights
    b.reseed()
    assert torch.allclose(b.denoise(x, s), d2, atol=1e-6)  # no context given: the slice stands in for it
    with pytest.raises(ValueError, match="context must be"):
        b.denoise(x, s, ctx[:, :1])


def test_cli_refuses_context_without_patches_and_a_mismatched_start(priors, tmp_path, capsys):
    from pipelines.cli import main

    p2d, _, files = priors
    assert main(["train", "--data", *files, "--output", str(tmp_path / "u"), "--context-slices", "1",
                 "--steps", "1", "--no-progress"]) == 2
    assert "--context-slices needs --arch patch" in capsys.readouterr().err
    assert main(["train", "--data", *files, "--output", str(tmp_path / "u"), "--intensity-scale", "0.5", "1.1",
                 "--steps", "1", "--no-progress"]) == 2
    assert "--intensity-scale needs --arch patch" in capsys.readouterr().err
    assert main(["train", "--arch", "patch", "--data", *files, "--output", str(tmp_path / "u"), "--intensity-scale",
                 "1.1", "0.5", "--steps", "1", "--no-progress"]) == 2
    assert "--intensity-scale 1.1 0.5: give finite 0 < LO <= HI" in capsys.readouterr().err
    assert main(["train", "--data", *files, "--output", str(tmp_path / "u"), "--fov-crop", "0.3",
                 "--steps", "1", "--no-progress"]) == 2
    assert "--fov-crop needs --arch patch" in capsys.readouterr().err
    assert main(["train", "--arch", "patch", "--data", *files, "--output", str(tmp_path / "w"), "--patch-sizes",
                 "8,16", "--channels", "8,16,32", "--steps", "1", "--init-from", str(p2d), "--no-progress"]) == 2
    assert "its network differs from the one asked for" in capsys.readouterr().err
    # the bundled whole-slice prior has attention layers a patch network has not: refused, not a torch traceback
    assert main(["train", "--arch", "patch", "--data", *files, "--output", str(tmp_path / "a"), "--patch-sizes",
                 "8,16", "--channels", "16,32,64,128", "--steps", "1", "--init-from", "bundled:ct",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "its network differs from the one asked for" in err and "--attention" in err and "Traceback" not in err
    assert main(["train", "--arch", "patch", "--data", *files, "--output", str(tmp_path / "x"), "--patch-sizes",
                 "8,16", "--channels", "8,16", "--steps", "1", "--init-from", str(tmp_path), "--no-progress"]) == 2
    assert str(tmp_path) in capsys.readouterr().err  # not a prior folder: the loader's own message names it
    assert not (tmp_path / "x").exists()  # and nothing was written


def test_loader_checks_the_input_channels_against_the_card(priors, tmp_path):
    import shutil
    import yaml

    _, p25d, _ = priors
    bad = tmp_path / "bad"
    shutil.copytree(p25d, bad)
    card = yaml.safe_load((bad / "model_card.yaml").read_text())
    card["patch"]["context_slices"] = 0
    (bad / "model_card.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(InputError, match="takes 3 input channels"):
        load_prior(bad)


class NeighbourMean(Denoiser):
    """Returns the mean of a slice's two context slices: shows what the solver hands a 2.5D prior."""

    context_slices = 1

    def __init__(self):
        self.schedule = schedule_from_dict(EDM_SCHEDULE)
        self.card = {}

    def _denoise(self, x, sigma):
        assert x.shape[1] == 3
        return x[:, 1:].mean(1, keepdim=True)


def test_the_solver_gives_every_slice_its_own_neighbours_at_any_chunk_size():
    x = torch.arange(5.0).view(5, 1, 1).expand(5, 4, 4).contiguous()
    solver = FastSampler(NeighbourMean(), Identity((4, 4)), x.clone(), n_steps=2, lam=0.0, rho=1.0)
    want = torch.tensor([0.5, 1.0, 2.0, 3.0, 3.5]).view(5, 1, 1).expand(5, 4, 4)
    for chunk in (1, 2, 5):
        assert torch.equal(solver.denoise_volume(x, 0.3, chunk), want)
    xc = torch.complex(x, -x)  # complex volumes: real and imaginary parts with their own neighbours
    assert torch.equal(solver.denoise_volume(xc, 0.3, 2), torch.complex(want, -want))


def test_guided_samplers_and_diffusion_mbir_give_a_2p5d_prior_the_steps_neighbours_at_any_chunk_size():
    """MCG/DPS denoise with the neighbours too (they repeated the slice itself), and DiffusionMBIR reads them
    from the step's start, not from chunks already updated (its result depended on the chunk size)."""
    from medrecon.solvers import DiffusionMBIR, DPSSampler, MCGSampler
    x = torch.arange(5.0).view(5, 1, 1).expand(5, 4, 4).contiguous()
    want = torch.tensor([0.5, 1.0, 2.0, 3.0, 3.5]).view(5, 1, 1).expand(5, 4, 4)
    for cls in (MCGSampler, DPSSampler):
        solver = cls(NeighbourMean(), Identity((4, 4)), x.clone(), n_steps=2)
        x0, _, _ = solver.tweedie(x, 0.3, 2)
        assert torch.equal(x0, want), cls.__name__
    g = torch.Generator().manual_seed(0)
    y = torch.randn(6, 8, 8, generator=g)
    mask = (torch.rand(8, 8, generator=g) < 0.5).float()
    from medrecon.linop import Diagonal
    runs = [DiffusionMBIR(NeighbourMean(), Diagonal(mask, (8, 8)), y * mask, n_steps=5, lam=0.01, rho=1.0,
                          chunk_size=c, seed=1).run() for c in (1, 2, 6)]
    assert max(float((r - runs[2]).abs().max()) for r in runs[:2]) < 1e-5


def test_a_wider_prior_started_from_a_narrow_one_is_that_prior(priors, tmp_path):
    from pipelines.cli import main

    p2d, _, files = priors
    assert main(["train", "--arch", "patch", "--data", *files, "--output", str(tmp_path / "wide"), "--patch-sizes",
                 "8,16", "--channels", "16,32", "--batch-size", "2", "--steps", "1", "--lr", "0", "--pixel-range",
                 "0.9", "2.0", "--checkpoint-every", "0", "--sample-every", "0", "--init-from", str(p2d),
                 "--device", "cpu", "--no-progress"]) == 0
    a, b = load_prior(p2d), load_prior(tmp_path / "wide")
    assert list(b.network.config.block_out_channels) == [16, 32]
    x = torch.randn(2, 1, 30, 20, generator=torch.Generator().manual_seed(1))
    s = torch.tensor([0.1, 1.0])
    a.reseed()
    b.reseed()
    d_narrow, d_wide = a.denoise(x, s), b.denoise(x, s)
    gap = float((d_wide - d_narrow).abs().max())
    assert 0 < gap < 0.05 * float(d_narrow.abs().max())  # the same function up to the symmetry-breaking noise


def test_edm_loss_input_error_reaches_the_slice_and_its_context_but_not_the_target():
    from types import SimpleNamespace

    from medrecon.priors.network import edm_coefficients
    from medrecon.priors.train import TrainOptions, edm_loss

    seen = {}

    def unet(inp, c_noise):  # D = c_skip * input: what the network is given shows through
        seen["inp"] = inp
        return SimpleNamespace(sample=torch.zeros(inp.shape[0], 1, *inp.shape[-2:]))

    x0, ctx = torch.zeros(2, 1, 8, 8), torch.zeros(2, 2, 8, 8)
    err = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 1e-6)
    loss = edm_loss(unet, x0, TrainOptions(), sigma=sigma, context=ctx, input_error=err)
    c_skip, _, c_in, _ = (float(v[0]) for v in edm_coefficients(sigma, 0.5))
    assert torch.allclose(seen["inp"][:, :1], c_in * err, atol=1e-5)  # the slice
    assert torch.allclose(seen["inp"][:, 1:], c_in * err.expand(-1, 2, -1, -1), atol=1e-5)  # each neighbour alike
    w = (1e-12 + 0.25) / (1e-12 * 0.25)
    assert torch.allclose(loss, w * (c_skip * err).pow(2).flatten(1).mean(1), rtol=1e-4)  # scored against x0
