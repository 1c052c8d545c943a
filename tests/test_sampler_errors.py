"""Training on the sampler's recorded steps (medrecon.priors.sampler_errors, `medrecon train --sampler-errors`)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from medrecon.errors import InputError
from medrecon.priors import load_prior, read_model_card
from medrecon.priors.patch import prepare_volumes, slice_positions
from medrecon.priors.sampler_errors import RecordedSteps
from medrecon.priors.train import TrainOptions, train_prior

from test_patch_prior import CT, phantom

SIGMAS = np.array([1.0, 0.5, 0.1], np.float32)


def record(folder, reference, errors, name="ct8_scan_0"):
    folder.mkdir(exist_ok=True)
    np.savez(folder / f"{name}.npz", reference=reference.astype(np.float32), errors=errors.astype(np.float16),
             sigmas=SIGMAS[:len(errors)])


def test_patches_line_up_with_their_reference_step_and_mirrored_position(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.uniform(-1, 1, (2, 20, 24)).astype(np.float32)
    record(tmp_path, ref, np.stack([(k + 1) * ref for k in range(3)]))  # step k's error: (k + 1) x
    x, e, sig, pos = RecordedSteps(tmp_path).batch(64, 8, torch.Generator().manual_seed(1))
    factor = {1.0: 1, 0.5: 2, 0.1: 3}
    ref_t, flips = torch.from_numpy(ref), 0
    for xk, ek, sk, pk in zip(x[:, 0], e[:, 0], sig.tolist(), pos):
        assert torch.allclose(ek, factor[round(sk, 3)] * xk, atol=4e-3 * factor[round(sk, 3)])  # float16 errors
        i = int(round((pk[1, 0, 0].item() + 1) * 19 / 2))
        j = int(round((pk[0, 0, 0].item() + 1) * 23 / 2))
        assert torch.equal(pk, slice_positions(torch.arange(i, i + 8), torch.arange(j, j + 8), 20, 24))
        mirrored = ref_t.flip(-1)[:, i:i + 8, j:j + 8]  # a flipped patch is the mirrored slice's, at its place
        plain = ref_t[:, i:i + 8, j:j + 8]
        if any(torch.equal(xk, m) for m in mirrored):
            flips += 1
        else:
            assert any(torch.equal(xk, m) for m in plain)
    assert 16 < flips < 48


def test_sigma_floor_keeps_only_steps_at_or_above_it(tmp_path):
    ref = np.zeros((1, 16, 16), np.float32)
    record(tmp_path, ref, np.zeros((3, 1, 16, 16)))
    _, _, sig, _ = RecordedSteps(tmp_path, sigma_min=0.4).batch(32, 8, torch.Generator().manual_seed(0))
    assert set(sig.tolist()) == {1.0, 0.5}
    with pytest.raises(InputError, match="sigma >= 2"):
        RecordedSteps(tmp_path, sigma_min=2.0)
    with pytest.raises(InputError, match="no recorded sampler steps"):
        RecordedSteps(tmp_path / "empty")
    data = prepare_volumes([phantom(np.random.default_rng(0), z=2, n=48)], CT, modality="ct")  # holds a 32 patch
    opts = TrainOptions(arch="patch", channels=(8, 16), patch_sizes=(8, 32), steps=1, device="cpu",
                        sampler_errors=str(tmp_path))
    with pytest.raises(InputError, match="16 pixels on a side, smaller than the largest patch"):
        train_prior(data, tmp_path / "p", opts, progress=False)


def test_training_on_recorded_steps_teaches_the_network_to_remove_their_error(tmp_path):
    """Stripes recorded at a small sigma: a prior trained on them removes them far better than one that never
    saw them (same data, steps and seed)."""
    rng = np.random.default_rng(3)
    vols = [phantom(rng, z=4, n=32) for _ in range(2)]
    data = prepare_volumes(vols, CT, modality="ct")
    ref = data.volumes[0][:, 0].numpy()
    stripes = np.zeros_like(ref)
    stripes[:, ::4] = 0.4
    folder = tmp_path / "rec"
    record(folder, ref, np.stack([stripes] * 3))
    opts = TrainOptions(arch="patch", channels=(8, 16), patch_sizes=(16,), batch_size=8, steps=300, lr=2e-3,
                        warmup=10, checkpoint_every=0, heldout_every=0, sample_every=0, device="cpu",
                        pixel_spacing_range=(0.9, 1.1), rotate_deg=0.0)
    plain = load_prior(train_prior(data, tmp_path / "plain", opts, progress=False))
    out = train_prior(data, tmp_path / "se", replace(opts, sampler_errors=str(folder), sampler_error_prob=0.7),
                      progress=False)
    taught = load_prior(out)
    x = torch.from_numpy(ref[:, None])
    noisy = x + torch.from_numpy(stripes[:, None]) + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    sigma = torch.full((x.shape[0],), 0.1)
    err_plain = float(((plain.denoise(noisy, sigma) - x) ** 2).mean())
    err_taught = float(((taught.denoise(noisy, sigma) - x) ** 2).mean())
    print(f"stripe error: plain {err_plain:.4f}, taught {err_taught:.4f}")
    assert err_taught < 0.5 * err_plain
    rec = read_model_card(out)["training"]["sampler_errors"]
    assert rec["runs"] == ["ct8_scan_0.npz"] and rec["probability"] == 0.7


def test_cli_sampler_errors_needs_a_patch_prior_and_a_folder(tmp_path, capsys):
    from pipelines.cli import main

    f = tmp_path / "v.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(phantom(np.random.default_rng(0), z=3, n=24).data.transpose(2, 1, 0), np.eye(4)), f)
    base = ["train", "--data", str(f), "--output", str(tmp_path / "p"), "--steps", "2", "--no-progress"]
    assert main([*base, "--sampler-errors", str(tmp_path)]) == 2
    assert "--sampler-errors needs --arch patch" in capsys.readouterr().err
    assert main([*base, "--arch", "patch", "--sampler-errors", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_resume_with_recorded_steps_continues_exactly(tmp_path):
    """Resume is exact, and the run did train on recorded steps: it differs from the run with probability 0, which
    draws the same coin flips and would be identical had no flip chosen a recorded batch."""
    rng = np.random.default_rng(4)
    data = prepare_volumes([phantom(rng, z=3, n=24) for _ in range(2)], CT)
    record(tmp_path / "rec", data.volumes[0][:, 0].numpy(), rng.normal(0, 0.1, (3, 3, 24, 24)))
    opts = TrainOptions(arch="patch", channels=(8, 16), patch_sizes=(8, 16), batch_size=2, steps=6, warmup=2,
                        checkpoint_every=0, sample_every=0, log_every=2, device="cpu",
                        sampler_errors=str(tmp_path / "rec"), sampler_error_prob=0.5)
    straight = train_prior(data, tmp_path / "a", opts, progress=False)
    train_prior(data, tmp_path / "b", replace(opts, steps=3), progress=False)
    resumed = train_prior(data, tmp_path / "b", opts, resume=True, progress=False)
    never = train_prior(data, tmp_path / "c", replace(opts, sampler_error_prob=0.0), progress=False)
    x, s = torch.randn(2, 1, 30, 20), torch.tensor([0.1, 1.0])
    d = load_prior(straight).denoise(x, s)
    assert torch.equal(d, load_prior(resumed).denoise(x, s))
    assert not torch.equal(d, load_prior(never).denoise(x, s))
