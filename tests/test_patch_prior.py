"""Patch-based, position-aware prior (PaDIS): stitching, positions, training, save/load, the loader, the CLI."""
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medrecon.device import bf16_native, resolve_precision
from medrecon.errors import InputError
from medrecon.priors import load_prior, read_model_card
from medrecon.priors.patch import (PatchPrior, PatchSampler, patchwise, position_channels, prepare_volumes)
from medrecon.priors.train import TrainOptions, heldout_loss, train_prior
from medrecon.priors.unet import EDM_SCHEDULE, build_unet, save_unet_prior, unet_config
from medrecon.priors.base import schedule_from_dict
from medrecon.volume import Volume

CT = {"physical_min": -1000.0, "physical_max": 1000.0, "unit": "HU"}


def phantom(rng, z=6, n=40):
    yy, xx = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    vol = np.full((z, n, n), -1000.0, np.float32)
    for k in range(z):
        body = (xx / rng.uniform(0.6, 0.9)) ** 2 + (yy / rng.uniform(0.6, 0.9)) ** 2 < 1
        vol[k][body] = 40
        for _ in range(3):
            cx, cy, r = rng.uniform(-0.4, 0.4, 2).tolist() + [rng.uniform(0.08, 0.25)]
            vol[k][((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) & body] = rng.choice([-500, 300, 800])
    return Volume(vol, spacing=(1.0, 1.0, 2.0))


def tiny_prior(seed=0) -> PatchPrior:
    torch.manual_seed(seed)
    net = build_unet(unet_config(16, (8, 16), in_channels=3, attention=False))
    card = {"patch": {"sizes": [8, 16], "inference_size": 16}, "config": {"sigma_data": 0.5}}
    return PatchPrior(net, card, schedule_from_dict(EDM_SCHEDULE), None, patch_size=16, seed=seed)


class IdentityPatches(PatchPrior):
    def _patch_fn(self, tiles, pos, sigma):
        return tiles


def test_any_slice_size_gives_the_same_shape():
    prior = tiny_prior()
    assert prior.image_size is None
    x = torch.randn(2, 1, 37, 23)
    d = prior.denoise(x, torch.tensor([0.1, 2.0]))
    assert d.shape == x.shape and torch.isfinite(d).all()
    assert prior.denoise(torch.randn(1, 1, 5, 70), 0.5).shape == (1, 1, 5, 70)  # smaller than a patch


@pytest.mark.skipif(not bf16_native(torch.device("cpu")), reason="this CPU has no native bf16 (emulated: slow)")
def test_bf16_network_arithmetic_changes_the_estimate_by_bf16_rounding_only():
    """precision bf16 autocasts the network, not the EDM scalings around it: the estimate stays fp32 and moves from
    the fp32 one by rounding, not by a bug. bf16 keeps 8 significant bits (relative rounding 2^-9 per value);
    through the network's ~10 layers that adds up to a few per cent of the network's output, so the denoising
    residual D(x) - x may move by up to 5 % of its size, and must move (else nothing ran in bf16)."""
    prior = tiny_prior()
    x = torch.randn(2, 1, 32, 32)
    fp32 = prior.reseed().denoise(x, torch.tensor([0.1, 1.0]))
    prior.precision = "bf16"
    bf16 = prior.reseed().denoise(x, torch.tensor([0.1, 1.0]))
    assert bf16.dtype == torch.float32
    moved = ((bf16 - fp32).norm() / (fp32 - x).norm()).item()
    assert 0 < moved < 0.05, moved


def test_precision_auto_is_bf16_only_where_the_device_has_it():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if bf16_native(cpu) else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    # a prior whose bf16 quality nobody measured (the public NCSN++ / ADM checkpoints) stays fp32 under auto
    assert resolve_precision("auto", cpu, measured=False) == "fp32"
    assert resolve_precision("bf16", cpu, measured=False) == "bf16"  # asked for by name: as asked
    if not torch.cuda.is_available():  # a device without bf16 (no CUDA here): auto falls back to fp32
        assert resolve_precision("auto", torch.device("cuda")) == "fp32"
    with pytest.raises(InputError, match="precision 'half'"):
        resolve_precision("half", cpu)


def test_score_models_run_in_the_precision_asked_for_as_denoisers_do():
    """DiffusionMBIR and the Langevin corrector call ``score`` (a VE score network, NCSN++), not ``denoise``: it
    must run under the same arithmetic, with the convolutions that read the image (the input one and, as in
    NCSN++'s input pyramid, any other with as many input channels) in fp32 and the result returned in fp32."""
    from medrecon.priors import VEScorePrior, VESchedule

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_in, self.conv_out = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 1, 3, padding=1)
            self.pyramid = torch.nn.Conv2d(1, 4, 3, stride=2, padding=1)
            self.seen = []

        def forward(self, x, sigma):
            h = self.conv_in(x)
            p = self.pyramid(x)
            out = self.conv_out(h + torch.nn.functional.interpolate(p, scale_factor=2.0))
            self.seen.append((h.dtype, p.dtype, out.dtype))
            return out

    prior = VEScorePrior(Net(), {"name": "tiny"}, VESchedule(0.01, 50.0, 100), None, 8)
    x = torch.randn(2, 1, 8, 8)
    for precision, inner in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        prior.precision = precision
        assert prior.score(x, torch.ones(2)).dtype == torch.float32
        assert prior.network.seen[-1] == (torch.float32, torch.float32, inner)  # the image's convolutions fp32


def test_precision_auto_on_cuda_is_bf16_from_ampere_on_not_where_bf16_is_emulated(monkeypatch):
    """A V100 (7.0) or T4 (7.5) emulates bf16 (slower than fp32), though torch.cuda.is_bf16_supported() says yes."""
    import types
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    cuda = torch.device("cuda", 1)
    for major, expected in ((7, "fp32"), (8, "bf16"), (9, "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda d, major=major: types.SimpleNamespace(major=major) if d == cuda else None)
        assert resolve_precision("auto", cuda) == expected


def test_training_steps_run_in_bf16_where_the_cpu_has_it_and_in_fp32_without_amp(tmp_path):
    """TrainOptions.amp: training steps under bf16 autocast where the device has native bf16 (else fp32, as with
    amp off). From the same seed the first step's loss then moves by bf16 rounding only: the estimate by a few per
    cent (the test above), so its squared error by under 10 %; and it must move, else nothing ran in bf16."""
    from medrecon.priors.train import _PatchTrainer
    data = prepare_volumes([phantom(np.random.default_rng(0)) for _ in range(2)], CT, modality="ct")

    def first_step(amp):
        opts = TrainOptions(arch="patch", channels=(8, 16), patch_sizes=(8, 16), batch_size=8, steps=1, amp=amp,
                            pixel_spacing_range=(0.8, 1.5), device="cpu")
        trainer = _PatchTrainer(data, tmp_path / f"amp_{amp}", opts, None)
        return trainer.bf16, trainer.train_step()
    (bf16_on, loss_on), (bf16_off, loss_off) = first_step(True), first_step(False)
    assert bf16_off is False and bf16_on == bf16_native(torch.device("cpu"))
    if bf16_on:
        assert 0 < abs(loss_on - loss_off) < 0.1 * loss_off, (loss_on, loss_off)
    else:
        assert loss_on == loss_off


def test_a_sampler_run_does_not_depend_on_what_ran_before_it():
    """The tile shifts restart from the run's seed: the same run gives the same volume after another run
    (another method of a comparison, the previous study of a batch) and differs with another seed."""
    from medrecon.linop import Identity
    from medrecon.solvers import FastSampler
    prior = tiny_prior()
    y = torch.randn(2, 24, 24, generator=torch.Generator().manual_seed(1)) * 0.3

    def run(seed):
        return FastSampler(prior, Identity((24, 24)), y, n_steps=4, lam=0.0, rho=1.0, seed=seed).run()
    first = run(0)
    run(5)
    assert torch.equal(run(0), first)
    assert not torch.equal(run(5), first)


@pytest.mark.parametrize("final_sigma", [0.02, 0.0])
def test_the_returned_estimate_averages_two_tile_grids(final_sigma):
    """One tile grid leaves its seams (about the noise level: 10-20 HU at the final sigma 0.02 of ct_patch,
    straight lines in a brain window); the estimate a sampler returns is denoised on two grids, the steps
    before on one as the card says."""
    from medrecon.linop import Identity
    from medrecon.solvers import FastSampler
    prior = tiny_prior()
    grids = []
    real = prior._denoise_native

    def spy(x, sigma):
        grids.append(prior.shifts)
        return real(x, sigma)
    prior._denoise_native = spy
    y = torch.randn(2, 24, 24, generator=torch.Generator().manual_seed(1)) * 0.3
    FastSampler(prior, Identity((24, 24)), y, n_steps=4, lam=0.0, rho=1.0, final_sigma=final_sigma).run()
    assert grids[-1] == 2 and set(grids[:-1]) == {1} and prior.shifts == 1


def test_a_patch_prior_run_does_not_depend_on_the_chunk_size():
    """Every chunk of one pass over the volume is tiled alike, so the chunk size (on a GPU: chosen from the free
    memory) changes nothing; before, each chunk drew its own tile offset (716 HU apart with ct_patch)."""
    from medrecon.linop import Diagonal
    from medrecon.solvers import DiffusionMBIR, FastSampler
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(20, 20, generator=g) < 0.3).float()
    y = Diagonal(mask, (20, 20)).forward(torch.randn(4, 20, 20, generator=g))
    for cls in (FastSampler, DiffusionMBIR):
        runs = [cls(tiny_prior(), Diagonal(mask, (20, 20)), y, n_steps=4, lam=0.01, rho=1.0, chunk_size=c,
                    seed=3).run() for c in (1, 3, 4)]
        apart = max(float((r - runs[2]).abs().max()) for r in runs[:2])
        assert apart < 1e-4, (cls.__name__, apart)  # float32 rounding of other batch sizes; one offset per chunk: 0.28


def test_stitching_is_exact_for_an_identity_network():
    x = torch.randn(3, 1, 45, 31, dtype=torch.float64)
    sigma = torch.ones(3, dtype=torch.float64)
    for off in [(0, 0), (1, 15), (7, 3), (15, 15)]:
        assert torch.equal(patchwise(lambda t, p, s: t, x, sigma, 16, off), x)
    # the prior shifts its grid at random per call (seeded): D is still exactly the identity, and the
    # stitched position channels equal the whole slice's positions for every shift
    ident = IdentityPatches(tiny_prior().network, {}, schedule_from_dict(EDM_SCHEDULE), None, patch_size=16)
    offsets = set()
    for _ in range(5):
        offsets.add(ident.next_offset())
        assert torch.equal(ident.denoise(x.float(), 1.0), x.float())
    assert len(offsets) > 1
    full = position_channels(45, 31, dtype=torch.float64)
    for off in [(0, 0), (9, 4)]:
        for c in range(2):
            pos = patchwise(lambda t, p, s: p[:, c:c + 1], x, sigma, 16, off)
            assert torch.equal(pos[0, 0], full[c])


def test_position_channels_at_corners_and_in_sampled_patches():
    pos = position_channels(5, 7)
    assert pos.shape == (2, 5, 7)
    x, y = pos
    assert (x[0, 0], x[0, -1], x[-1, 0], x[-1, -1]) == (-1, 1, -1, 1)  # x: columns
    assert (y[0, 0], y[0, -1], y[-1, 0], y[-1, -1]) == (-1, -1, 1, 1)  # y: rows
    assert x[2, 3] == 0 and y[2, 3] == 0
    assert position_channels(1, 4)[1].abs().max() == 0  # one row: y = 0
    # a patch as large as the slice, no rescaling/rotation/flip/jitter: the slice itself with its positions
    vol = torch.rand(3, 1, 16, 16) * 2 - 1
    data = prepare_volumes([Volume(vol[:, 0].numpy() * 1000.0, spacing=(1.0, 1.0, 1.0))], CT)
    s = PatchSampler(data, sizes=(16,), pixels=2 * 16 * 16, spacing_range=(1.0, 1.0), rotate_deg=0, flip=False,
                     jitter=0)
    patches, positions = s.sample(torch.Generator().manual_seed(0))
    assert patches.shape == (2, 1, 16, 16) and positions.shape == (2, 2, 16, 16)
    with pytest.raises(InputError, match=r"slices span 16 mm, too little for a 32-pixel patch at 0.8 mm"):
        PatchSampler(data, sizes=(16, 32), spacing_range=(0.7, 4.0))  # patches would be drawn at 0.5 mm, off range
    assert torch.allclose(positions, position_channels(16, 16).expand(2, -1, -1, -1))
    for p in patches:
        assert min(float((p - v).abs().max()) for v in data.volumes[0]) < 1e-5


def test_the_pixel_size_rule_is_one_for_the_check_the_draws_and_the_cards_range():
    """The rule of the pixel sizes a patch is drawn at (README: never finer than its scan's pixel size /
    max_upsample, nor coarser than its slice holds) is applied by the slice check (too_small_for_patches), the draws
    (drawn_pixel_size, the sampler) and the card's range (trained_pixel_range). They agree at the limit, just
    inside and just outside it. Before, the check took a slice exactly at the limit (24 px of 0.6 mm: 14.4 mm =
    30 px x 0.48 mm) while the draws put its patches at 14.4 / 30 = 0.47999... mm, finer than the floor."""
    from medrecon.priors.patch import drawn_pixel_size, finest_pixel_size, holds_patch, too_small_for_patches
    from medrecon.priors.train import trained_pixel_range

    sp, m, p = (0.6, 0.6), 1.25, 30
    floor = finest_pixel_size(sp, m)
    assert floor == 0.6 / 1.25 == 0.48
    for n, fits in ((24, True), (25, True), (23, False)):  # 14.4 mm: at the limit; 15 mm inside; 13.8 mm outside
        assert holds_patch((n, n), sp, p, floor) == fits
        why = too_small_for_patches((n, n), sp, [8, p], (0.3, 4.0), m)
        assert (why is None) == fits, (n, why)
        draws = [drawn_pixel_size(s, sp, (n, n), p, m) for s in (0.3, 0.48, 0.49, 4.0)]
        if fits:  # never finer than the floor, never coarser than the slice holds
            assert min(draws) == floor and all(holds_patch((n, n), sp, p, d) for d in draws), draws
        else:
            assert why == "its slices span 14 mm, too little for a 30-pixel patch at 0.48 mm (the smallest pixel " \
                          "size allowed)"
            assert draws == [n * 0.6 / p] * 4  # the coarsest it holds, finer than allowed: the check refuses it
    assert too_small_for_patches((25, 25), sp, [p], (0.5, 4.0), m) is None  # the range's own floor, at the limit
    assert "at 0.501 mm" in too_small_for_patches((25, 25), sp, [p], (0.501, 4.0), m)
    slices = {n: prepare_volumes([Volume(np.random.default_rng(n).uniform(-900, 900, (2, n, n)).astype(np.float32),
                                         spacing=(0.6, 0.6, 2.0))], CT) for n in (23, 24, 25)}
    opts = TrainOptions(arch="patch", patch_sizes=(p,), pixel_spacing_range=(0.3, 0.55))  # (without 0.6: its own)
    assert trained_pixel_range(slices[24], opts)[0] == (0.48, 0.48)  # the card's range: the floor, exactly
    assert trained_pixel_range(slices[25], opts)[0] == (0.48, 0.5)
    for n in (24, 25):
        sampler = PatchSampler(slices[n], sizes=(p,), spacing_range=(0.3, 4.0), max_upsample=m)
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            sampler.sample(g)
        assert sampler.used_spacing[0] >= floor and holds_patch((n, n), sp, p, sampler.used_spacing[1])
    with pytest.raises(InputError, match="volume 1: its slices span 14 mm, too little for a 30-pixel patch"):
        PatchSampler(slices[23], sizes=(p,), spacing_range=(0.3, 4.0), max_upsample=m)
    with pytest.raises(InputError, match=r"never drawn finer than 0.48 mm"):  # the card's range: the same floor
        trained_pixel_range(slices[25], replace(opts, pixel_spacing_range=(0.3, 0.479)))
    assert trained_pixel_range(slices[25], replace(opts, pixel_spacing_range=(0.3, 0.48)))[0] == (0.48, 0.48)


def test_brightness_augmentation_scales_about_physical_zero_within_the_range():
    """--intensity-scale: each patch is the slice c times as bright in physical units (about physical 0, not
    the model's 0), one c per patch, log-uniform over [lo, hi]; no range draws nothing, lo = hi that factor."""
    mr = {"physical_min": 0.0, "physical_max": 1.0, "unit": "normalised"}
    vol = np.random.default_rng(0).uniform(0.05, 1.0, (2, 16, 16)).astype(np.float32)
    data = prepare_volumes([Volume(vol, spacing=(1.0, 1.0, 1.0))], mr)
    kw = dict(sizes=(16,), pixels=64 * 16 * 16, spacing_range=(1.0, 1.0), rotate_deg=0, flip=False, jitter=0)
    lo, hi, origin = 0.5, 1.1, -1.0  # physical 0 -> model -1 in [-1, 1]
    patches, _ = PatchSampler(data, scale_range=(lo, hi), scale_origin=origin, **kw).sample(torch.Generator())
    plain, _ = PatchSampler(data, **kw).sample(torch.Generator())
    phys = (patches[:, 0] + 1) / 2  # back to physical units
    ratios = [min((p / torch.from_numpy(v) for v in vol), key=lambda r: float(r.std())) for p in phys]
    assert max(float(r.std() / r.mean()) for r in ratios) < 1e-4  # one factor for the whole patch
    c = np.array([float(r.mean()) for r in ratios])
    assert lo - 1e-6 <= c.min() and c.max() <= hi + 1e-6
    assert c.min() < 0.6 and c.max() > 0.95  # spread over the range, not one value
    assert all(min(float((p[0] - torch.from_numpy(v) * 2 + 1).abs().max()) for v in vol) < 1e-5
               for p in plain)  # no range: the slices unchanged
    fixed, _ = PatchSampler(data, scale_range=(0.8, 0.8), scale_origin=origin, **kw).sample(torch.Generator())
    assert all(min(float(((p[0] + 1) / 2 - 0.8 * torch.from_numpy(v)).abs().max()) for v in vol) < 1e-5
               for p in fixed)  # lo = hi: that one factor for every patch, not none


def _mr_patches(low: float):
    """draw(**augmentation) -> 64 patches of 16 pixels, the same draw each call, from MR-like noise in [low, 1]
    (physical 0..1 -> model -1..1), with no other augmentation."""
    mr = {"physical_min": 0.0, "physical_max": 1.0, "unit": "normalised"}
    vol = np.random.default_rng(0).uniform(low, 1.0, (2, 32, 32)).astype(np.float32)
    data = prepare_volumes([Volume(vol, spacing=(1.0, 1.0, 1.0))], mr)
    kw = dict(sizes=(16,), pixels=64 * 16 * 16, spacing_range=(1.0, 1.0), rotate_deg=0, flip=False, jitter=0,
              scale_origin=-1.0)
    return lambda **aug: PatchSampler(data, **kw, **aug).sample(torch.Generator().manual_seed(0))[0]


def test_synthetic_phase_makes_parts_of_complex_images_with_a_smooth_phase():
    """--synthetic-phase: a patch becomes o + (x - o) cos(phi), the real (or imaginary) part of the magnitude image
    times a smooth phase phi(position): never brighter than the magnitude, negative in physical units where
    cos(phi) < 0, the factor smooth over the patch; probability 0 leaves every patch as it was, 1/2 about half."""
    draw = _mr_patches(low=0.3)
    plain, parts, none, half = draw(), draw(phase=1.0), draw(phase=0.0), draw(phase=0.5)
    assert torch.equal(none, plain)
    factor = (parts + 1) / (plain + 1)  # cos(phi): the magnitude is >= 0.3, so no division by ~0
    assert factor.abs().max() <= 1 + 1e-5
    assert (factor < -0.2).any() and (factor > 0.2).any()  # both signs: real and imaginary parts, any phase
    steps = torch.cat([factor.diff(dim=-1).abs().flatten(), factor.diff(dim=-2).abs().flatten()])
    # smooth: |cos'| <= |phi'|, a few rad per slice width (2 / 31 per pixel); noise from pixel to pixel would step ~1
    assert steps.mean() < 0.05 and torch.quantile(steps, 0.99) < 0.25
    unchanged = ((half - plain).flatten(1).abs().max(1).values < 1e-6).float().mean()
    assert 0.3 < unchanged < 0.7


def test_random_contrast_is_a_curve_through_zero_that_can_reorder_tissues():
    """--random-contrast: each changed patch is f(x) for one piecewise-linear f per patch with f(0) = 0 (air stays
    0), values in 0..1 at the knots, and some curves reverse the order of two intensities (T1 -> T2-like);
    probability 0 leaves every patch as it was."""
    from medrecon.priors.patch import random_contrast
    t = torch.linspace(0, 1, 301).view(1, 1, 1, 301).repeat(400, 1, 1, 1)
    f = random_contrast(t, torch.Generator().manual_seed(0))
    assert torch.allclose(f[..., 0], torch.zeros(400, 1, 1)) and f.min() >= 0 and f.max() <= 1 + 1e-6
    assert torch.allclose(f[..., 150], (f[..., 100] + f[..., 200]) / 2, atol=1e-5)  # linear between knots
    reversed_order = (f[..., 60] > f[..., 270]).float().mean()  # dark tissue made brighter than bright tissue
    assert 0.1 < reversed_order < 0.9
    draw = _mr_patches(low=0.0)
    plain, none, every = draw(), draw(contrast=0.0), draw(contrast=1.0)
    assert torch.equal(none, plain)
    changed = ((every - plain).flatten(1).abs().max(1).values > 1e-3).float().mean()
    assert changed > 0.9 and every.min() >= -1 - 1e-5 and every.max() <= 1 + 1e-5


def test_random_contrast_keeps_the_bottom_of_the_intensity_window_air():
    """The curve acts on the intensity window (CT: -1000..1000 HU), not on physical 0..1: CT air stays air, so a CT
    prior's patches keep their background; tissue intensities change."""
    from medrecon.priors.base import IntensityMap
    vol = np.full((2, 32, 32), -1000.0, dtype=np.float32)
    vol[:, 8:24, 8:24] = np.random.default_rng(0).uniform(-100, 300, (2, 16, 16))
    data = prepare_volumes([Volume(vol, spacing=(1.0, 1.0, 1.0))], CT)
    imap = IntensityMap.from_dict(data.intensity)
    kw = dict(sizes=(32,), pixels=16 * 32 * 32, spacing_range=(1.0, 1.0), rotate_deg=0, flip=False, jitter=0,
              scale_origin=imap.to_model(0.0))
    plain = PatchSampler(data, **kw).sample(torch.Generator().manual_seed(0))[0]
    every = PatchSampler(data, contrast=1.0, **kw).sample(torch.Generator().manual_seed(0))[0]
    air = plain <= imap.to_model(-999.0)
    assert air.float().mean() > 0.3 and (every[air] - imap.model_min).abs().max() < 1e-5
    assert ((every - plain)[~air].abs() > 1e-3).float().mean() > 0.9


def test_fov_crop_positions_refer_to_a_random_window_that_holds_the_patch():
    """--fov-crop: the patch is still a block of the slice, but its positions are those of a random window
    (between the patch and the slice in size) taken as the whole slice: steeper, and -1/+1 at the window's
    edges, which may lie inside the slice; fov_crop 0 keeps the whole slice's positions."""
    vol = torch.rand(2, 1, 32, 32) * 2 - 1
    data = prepare_volumes([Volume(vol[:, 0].numpy() * 1000.0, spacing=(1.0, 1.0, 1.0))], CT)
    kw = dict(sizes=(16,), pixels=64 * 16 * 16, spacing_range=(1.0, 1.0), rotate_deg=0, flip=False, jitter=0)
    patches, pos = PatchSampler(data, fov_crop=1.0, **kw).sample(torch.Generator().manual_seed(0))
    slope_x = (pos[:, 0, 0, 1] - pos[:, 0, 0, 0]).numpy()  # 2 / (window width - 1)
    widths = 1 + 2 / slope_x
    assert np.allclose(widths, np.round(widths), atol=1e-3) and widths.min() >= 16 - 1e-3 and widths.max() <= 32.001
    assert (widths < 31).mean() > 0.5  # most windows are smaller than the slice
    assert pos.min() >= -1 - 1e-5 and pos.max() <= 1 + 1e-5  # the patch lies inside its window
    blocks = [v[0, i:i + 16, j:j + 16] for v in data.volumes[0] for i in range(17) for j in range(17)]
    for p in patches:  # still a block of one of the slices
        assert min(float((p[0] - b).abs().max()) for b in blocks) < 1e-5
    _, whole = PatchSampler(data, **kw).sample(torch.Generator().manual_seed(0))
    assert torch.allclose(whole[:, 0, 0, 1] - whole[:, 0, 0, 0], torch.tensor(2 / 31))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(0)
    data = prepare_volumes([phantom(rng) for _ in range(3)], CT, modality="ct")
    held = [prepare_volumes([phantom(rng, z=2, n=32)], CT).volumes[0]]
    opts = TrainOptions(arch="patch", channels=(8, 16), patch_sizes=(8, 16), batch_size=8, steps=120, lr=2e-3,
                        warmup=10, checkpoint_every=0, heldout_every=0, sample_every=0, log_every=20,
                        pixel_spacing_range=(0.8, 1.5), device="cpu")
    out = train_prior(data, tmp_path_factory.mktemp("patch") / "prior", opts, heldout=held, progress=False)
    return out, held


def test_training_lowers_heldout_loss(trained):
    out, _ = trained
    h = read_model_card(out)["training"]["heldout"]
    print(f"held-out loss {h['loss_before']:.3f} -> {h['loss_after']:.3f}")
    assert h["loss_after"] < 0.8 * h["loss_before"]


def test_save_load_round_trip_is_exact_and_reproducible(trained):
    out, held = trained
    card = read_model_card(out)
    a, b = load_prior(out), load_prior(out)
    x = held[0] + 0.3 * torch.randn(held[0].shape, generator=torch.Generator().manual_seed(3))
    sigma = torch.full((x.shape[0],), 0.3)
    da = a.denoise(x, sigma)
    assert torch.equal(da, b.denoise(x, sigma))  # same seed, same grid shifts
    a.reseed()
    assert torch.equal(a.denoise(x, sigma), da)
    assert abs(heldout_loss(a, held) - card["training"]["heldout"]["loss_after"]) < 1e-5  # == in-memory EMA net


def test_loader_picks_the_patch_format_from_the_card(trained, tmp_path):
    out, _ = trained
    prior = load_prior(out)
    card = prior.card
    assert isinstance(prior, PatchPrior) and card["architecture"] == "diffusers-unet2d-patch"
    assert prior.image_size is None and prior.patch_size == 16 and card["patch"]["sizes"] == [8, 16]
    assert prior.shifts == card["patch"]["inference_shifts"] == 2  # a trained card keeps the two tile grids
    lo, hi = prior.pixel_spacing_mm_range
    assert 0.8 <= lo <= hi <= 1.5
    assert prior.intensity.physical_min == -1000 and prior.intensity.model_min == -1
    whole = save_unet_prior(tmp_path / "whole", build_unet(unet_config(16, (8, 16))),
                            {**card, "architecture": "diffusers-unet2d-patch"})
    with pytest.raises(InputError, match="3 input channels"):
        load_prior(whole)


def test_cli_trains_a_patch_prior(tmp_path):
    from pipelines.cli import main

    rng = np.random.default_rng(1)
    files = []
    for i in range(2):
        v = phantom(rng, z=4, n=28)
        f = tmp_path / f"v{i}.nii.gz"
        nib.save(nib.Nifti1Image(v.data.transpose(2, 1, 0), np.diag([-0.9, -0.9, 2.0, 1.0])), f)
        files.append(str(f))
    out = tmp_path / "p"
    rc = main(["train", "--arch", "patch", "--data", *files, "--output", str(out), "--patch-sizes", "8,16",
               "--channels", "8,16", "--steps", "4", "--batch-size", "2", "--checkpoint-every", "2",
               "--sample-every", "0", "--pixel-range", "0.9", "2.0", "--device", "cpu", "--no-progress"])
    assert rc == 0
    prior = load_prior(out)
    assert isinstance(prior, PatchPrior) and prior.card["training"]["steps"] == 4
    assert "--arch patch" in prior.card["training"]["command"]
    assert prior.card["training"]["data"]["pixel_spacing_mm"] == [[0.9, 0.9], [0.9, 0.9]]
    assert main(["train", "--arch", "patch", "--data", *files, "--output", str(tmp_path / "q"),
                 "--patch-sizes", "10", "--channels", "8,16,32", "--steps", "2", "--no-progress"]) == 2


def test_resume_continues_exactly(tmp_path):
    from dataclasses import replace

    rng = np.random.default_rng(2)
    data = prepare_volumes([phantom(rng, z=3, n=24) for _ in range(2)], CT)
    opts = TrainOptions(arch="patch", channels=(8, 16), patch_sizes=(8, 16), batch_size=2, steps=6, warmup=2,
                        checkpoint_every=0, sample_every=0, log_every=2, device="cpu")
    straight = train_prior(data, tmp_path / "a", opts, progress=False)
    train_prior(data, tmp_path / "b", replace(opts, steps=3), progress=False)
    resumed = train_prior(data, tmp_path / "b", opts, resume=True, progress=False)
    x, s = torch.randn(2, 1, 30, 20), torch.tensor([0.1, 1.0])
    assert torch.equal(load_prior(straight).denoise(x, s), load_prior(resumed).denoise(x, s))
    assert read_model_card(resumed)["pixel_spacing_mm_range"] == read_model_card(straight)["pixel_spacing_mm_range"]


def test_loader_workers_give_the_same_run_for_any_count_and_resume_exactly(tmp_path):
    """--loader-workers: each batch is seeded by its step, so 1 or 2 worker processes train the same network,
    a run resumed with another count continues it exactly, and the card's pixel range gathers the workers'."""
    from dataclasses import replace

    rng = np.random.default_rng(3)
    data = prepare_volumes([phantom(rng, z=3, n=24) for _ in range(2)], CT)
    opts = TrainOptions(arch="patch", channels=(8, 16), patch_sizes=(8, 16), batch_size=2, steps=6, warmup=2,
                        checkpoint_every=0, sample_every=0, log_every=2, device="cpu", loader_workers=1,
                        pixel_spacing_range=(0.8, 1.5))
    one = train_prior(data, tmp_path / "one", opts, progress=False)
    two = train_prior(data, tmp_path / "two", replace(opts, loader_workers=2), progress=False)
    train_prior(data, tmp_path / "resumed", replace(opts, steps=3, loader_workers=2), progress=False)
    resumed = train_prior(data, tmp_path / "resumed", opts, resume=True, progress=False)
    in_process = train_prior(data, tmp_path / "zero", replace(opts, loader_workers=0), progress=False)
    x, s = torch.randn(2, 1, 30, 20), torch.tensor([0.1, 1.0])
    d = load_prior(one).denoise(x, s)
    assert torch.equal(d, load_prior(two).denoise(x, s)) and torch.equal(d, load_prior(resumed).denoise(x, s))
    assert not torch.equal(d, load_prior(in_process).denoise(x, s))  # 0: the run's own generator, another stream
    lo, hi = read_model_card(one)["pixel_spacing_mm_range"]
    assert 0.8 <= lo < hi <= 1.5 and [lo, hi] == read_model_card(two)["pixel_spacing_mm_range"]


def test_a_card_whose_tile_the_network_cannot_halve_is_refused_at_load(tmp_path):
    """patch.inference_size 60 on a 4-level UNet loaded, then the first denoising died on tensor sizes."""
    from pipelines.prior_cards import load_prior_for
    src = Path(__file__).resolve().parents[1] / "medrecon" / "assets" / "priors" / "ct_patch"
    for f in src.iterdir():
        (tmp_path / f.name).symlink_to(f)
    card = tmp_path / "model_card.yaml"
    text = card.read_text().replace("  inference_size: 64\n", "  inference_size: 60\n", 1)
    card.unlink()
    card.write_text(text)
    with pytest.raises(InputError, match="patch.inference_size 60 is not a multiple of 8"):
        load_prior_for(tmp_path)


def test_fp32_network_calls_on_cuda_turn_cudnn_tf32_off_and_back():
    """On CUDA torch runs fp32 convolutions in TF32 (10-bit mantissa) by default from Ampere on, so
    solver.precision=fp32 was not fp32 there; the network's fp32 context turns cuDNN's TF32 off and restores it.
    (Checked on the flags, which a CPU build keeps too; the GPU itself was not available.)"""
    from medrecon.priors.network import exact_fp32
    cudnn = torch.backends.cudnn
    assert cudnn.allow_tf32  # torch's default
    with exact_fp32("cuda"):
        assert not cudnn.allow_tf32
    assert cudnn.allow_tf32
    with exact_fp32("cpu"):
        assert cudnn.allow_tf32  # nothing to change on the CPU


def test_a_fine_tune_keeps_the_tile_grids_of_the_prior_it_starts_from(tmp_path):
    """A card's inference_shifts sets a patch prior's CPU cost (2 grids: twice 1's). A run started from a prior
    (--init-from) keeps that prior's count, also when resumed without --init-from; a fresh run writes 2; a count
    given in the options wins."""
    rng = np.random.default_rng(1)
    data = prepare_volumes([phantom(rng) for _ in range(2)], CT, modality="ct")
    opts = TrainOptions(arch="patch", channels=(8, 16), patch_sizes=(8, 16), batch_size=4, steps=2, warmup=1,
                        checkpoint_every=0, heldout_every=0, sample_every=0, pixel_spacing_range=(0.8, 1.5),
                        device="cpu")

    def shifts(folder):
        return read_model_card(folder)["patch"]["inference_shifts"], load_prior(folder).shifts

    one = train_prior(data, tmp_path / "one", replace(opts, patch_inference_shifts=1), progress=False)
    fresh = train_prior(data, tmp_path / "fresh", opts, progress=False)
    tuned = train_prior(data, tmp_path / "tuned", replace(opts, init_from=str(one)), progress=False)
    given = train_prior(data, tmp_path / "given", replace(opts, init_from=str(one), patch_inference_shifts=2),
                        progress=False)
    assert shifts(one) == (1, 1) and shifts(fresh) == (2, 2) and shifts(tuned) == (1, 1) and shifts(given) == (2, 2)
    resumed = train_prior(data, tuned, replace(opts, steps=3), resume=True, progress=False)
    assert shifts(resumed) == (1, 1)
    assert read_model_card(resumed)["training"]["steps"] == 3
