"""Training a prior: data preparation, the held-out denoising loss drops, exact resume, the CLI."""
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from medrecon.device import bf16_native
from medrecon.errors import InputError, UnreadableError
from medrecon.priors import load_prior, read_model_card
from medrecon.priors.train import TrainOptions, heldout_loss, learning_rate, train_prior
from medrecon.priors.training_data import prepare_slices
from medrecon.volume import Volume

CT = {"physical_min": -1000.0, "physical_max": 1000.0, "unit": "HU"}
MR = {"physical_min": 0.0, "physical_max": 1.0, "unit": "normalised magnitude"}


def phantom_volume(rng, z=16, n=32):
    """CT-like slices in HU: air, an elliptic body of soft tissue, three discs of lung/bone-like values."""
    yy, xx = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    vol = np.full((z, n, n), -1000.0, np.float32)
    for k in range(z):
        a, b = rng.uniform(0.6, 0.9, 2)
        body = (xx / a) ** 2 + (yy / b) ** 2 < 1
        vol[k][body] = 40
        for _ in range(3):
            cx, cy, r = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0.08, 0.25)
            vol[k][((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) & body] = rng.choice([-500, 300, 800])
    return vol


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    train = prepare_slices([phantom_volume(rng) for _ in range(4)], CT, 16, modality="ct")
    held = prepare_slices([phantom_volume(rng)], CT, 16).slices
    return train, held


def test_prepare_slices_ct_window_crop_resize_spacing():
    v = np.full((3, 20, 24), -1000.0, np.float32)
    v[0, :, :12] = 1000.0
    v[0, :, 12:] = 0.0
    v[2] = 3000.0  # beyond the window: clipped, then constant -> dropped
    sd = prepare_slices([Volume(v, spacing=(0.8, 0.8, 2.0))], CT, 10)
    assert sd.slices.shape == (1, 1, 10, 10)  # slice 1 (all air) and 2 (all clipped) are constant: dropped
    s = sd.slices[0, 0]
    assert s.min() == 0.0 and s.max() == 1.0  # 0 HU -> 0, 1000 HU -> 1 in [-1, 1]
    assert sd.pixel_spacing_mm == [1.6, 1.6]  # 20 px crop resized to 10 px
    assert sd.intensity == {"physical_min": -1000.0, "physical_max": 1000.0, "model_min": -1.0, "model_max": 1.0,
                            "unit": "HU"}


def test_prepare_slices_mri_is_per_volume_normalised():
    rng = np.random.default_rng(3)
    v = rng.gamma(2.0, 1.0, size=(4, 16, 16)).astype(np.float32)
    a = prepare_slices([v], MR, 16, magnitude_percentile=99.5).slices
    b = prepare_slices([v * 1000.0], MR, 16, magnitude_percentile=99.5).slices
    assert torch.allclose(a, b, atol=1e-5)
    q = np.percentile(v, 99.5)
    assert np.isclose(float(a.max()), 1.0) and np.isclose(float(((v <= q).mean())), 0.995, atol=0.003)
    with pytest.raises(InputError, match="needs physical_max"):
        prepare_slices([v], {"physical_min": 0.0}, 16)
    with pytest.raises(InputError, match="physical_min < physical_max"):
        prepare_slices([v], {"physical_min": 1.0, "physical_max": 1.0}, 16)


def test_training_lowers_heldout_denoising_loss(data, tmp_path):
    train, held = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=200, batch_size=8, lr=2e-3, warmup=20,
                        checkpoint_every=0, sample_every=0, log_every=20)
    t0 = time.perf_counter()
    out = train_prior(train, tmp_path / "prior", opts, heldout=held, progress=False)
    elapsed = time.perf_counter() - t0
    card = read_model_card(out)
    h = card["training"]["heldout"]
    print(f"200 steps in {elapsed:.1f} s; held-out loss {h['loss_before']:.3f} -> {h['loss_after']:.3f}")
    assert h["loss_after"] <= 0.7 * h["loss_before"]  # at least 30% lower (measured about 80%)
    # save -> load: the loaded prior reproduces the held-out loss computed on the in-memory EMA network
    prior = load_prior(out)
    assert abs(heldout_loss(prior, held) - h["loss_after"]) < 1e-5
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert [int(r["step"]) for r in rows] == list(range(20, 201, 20))
    assert float(rows[-1]["loss"]) < 0.7 * float(rows[0]["loss"]) and float(rows[-1]["img_per_s"]) > 0
    assert card["training"]["steps"] == 200 and card["training"]["final_loss"] > 0
    assert card["image_size"] == 16 and card["parameterization"] == "edm"


def test_resume_continues_exactly(data, tmp_path):
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=8, batch_size=4, warmup=3, checkpoint_every=0,
                        sample_every=0, log_every=2)
    straight = train_prior(train, tmp_path / "a", opts, progress=False)
    half = train_prior(train, tmp_path / "b", replace(opts, steps=4), progress=False)
    with pytest.raises(InputError, match="already holds a prior; use --resume"):
        train_prior(train, half, opts, progress=False)
    resumed = train_prior(train, half, opts, resume=True, progress=False)
    x = train.slices[:4]
    sigma = torch.tensor([0.05, 0.3, 1.0, 5.0])
    assert torch.equal(load_prior(straight).denoise(x, sigma), load_prior(resumed).denoise(x, sigma))
    assert [int(r["step"]) for r in csv.DictReader(open(resumed / "loss.csv"))] == [2, 4, 6, 8]
    with pytest.raises(InputError, match="nothing to resume"):
        train_prior(train, tmp_path / "c", opts, resume=True, progress=False)
    with pytest.raises(InputError, match="options ask for image size 32"):
        train_prior(train, tmp_path / "d", replace(opts, image_size=32), progress=False)


def test_resume_refuses_other_training_options_and_keeps_the_runs_warm_up(data, tmp_path):
    """A resumed run must be the same run: options that change what it learns are refused with the run's own
    values named; how long it runs may change, and a longer --steps does not send it back into its warm-up."""
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=20, batch_size=4, warmup=200, checkpoint_every=0,
                        sample_every=0, lr=1e-3)
    out = train_prior(train, tmp_path / "p", replace(opts, steps=4), progress=False)  # its warm-up: 1 step (4 // 10)
    with pytest.raises(InputError, match=r"trained with --batch-size 4 \(now 8\), --seed 0 \(now 5\); resume"):
        train_prior(train, out, replace(opts, batch_size=8, seed=5), resume=True, progress=False)
    spelled = train_prior(replace(train, description={**train.description, "volumes": ["vols/v0.nii.gz"]}),
                          tmp_path / "spelled", replace(opts, steps=2), progress=False)
    respelled = replace(train, description={**train.description, "volumes": [f"{tmp_path}/vols/v0.nii.gz"]})
    train_prior(respelled, spelled, replace(opts, steps=3), resume=True, progress=False)  # the same data, resumed
    other = prepare_slices([Volume(np.full((3, 20, 20), 40.0, np.float32) + np.arange(20.0), (1.0, 1.0, 2.0))],
                           {**CT, "model_min": -1.0, "model_max": 1.0}, 16, modality="ct")
    with pytest.raises(InputError, match="trained on other data than given now"):  # its card would lie about both
        train_prior(other, out, replace(opts, steps=8), resume=True, progress=False)
    train_prior(train, out, replace(opts, steps=400), resume=True, progress=False)  # 400 // 10 = 40 > step 4
    lrs = [float(r["lr"]) for r in csv.DictReader(open(out / "loss.csv"))]
    assert max(lrs) == pytest.approx(1e-3) and min(lrs[1:]) == pytest.approx(1e-3)  # not back into a warm-up
    train_prior(train, out, replace(opts, steps=404), resume=True, progress=False)  # resumed twice: refused before
    assert read_model_card(out)["training"]["steps"] == 404


def test_a_resumed_run_keeps_its_whole_warm_up(data, tmp_path):
    """A run stopped inside its warm-up (100 steps of 1000) and resumed with a smaller --steps warms up as it
    began: 100 steps, not a tenth of the new --steps."""
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=1000, batch_size=2, warmup=100, checkpoint_every=0,
                        sample_every=0, lr=1e-3, log_every=1, time_limit=None)
    out = train_prior(train, tmp_path / "p", replace(opts, steps=1000, time_limit=1e-9), progress=False)
    done = len(list(csv.DictReader(open(out / "loss.csv"))))
    train_prior(train, out, replace(opts, steps=done + 4), resume=True, progress=False)
    lrs = [float(r["lr"]) for r in csv.DictReader(open(out / "loss.csv"))]
    assert lrs[-1] == pytest.approx(1e-3 * (done + 4) / 100)  # step done+3 of a 100-step warm-up


def test_a_widened_run_resumes_without_init_from(data, tmp_path):
    """A run widened from a narrower prior keeps that prior's attention-head width; --resume rebuilds the run's
    own network from its checkpoint instead of refusing the options it was started with."""
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(16, 32), steps=2, batch_size=4, warmup=1, checkpoint_every=0,
                        sample_every=0)  # heads of 32 channels, the default width: 64 once widened twice
    narrow = train_prior(train, tmp_path / "narrow", opts, progress=False)
    wide = replace(opts, channels=(32, 64), steps=4)
    half = train_prior(train, tmp_path / "wide", replace(wide, steps=2, init_from=str(narrow)), progress=False)
    straight = train_prior(train, tmp_path / "straight", replace(wide, init_from=str(narrow)), progress=False)
    resumed = train_prior(train, half, wide, resume=True, progress=False)  # no --init-from this time
    x, sigma = train.slices[:4], torch.tensor([0.05, 0.3, 1.0, 5.0])
    fresh = train_prior(train, tmp_path / "fresh", replace(wide, steps=1), progress=False)
    head = {p: load_prior(p).network.config["attention_head_dim"] for p in (resumed, straight, fresh)}
    assert head[resumed] == head[straight] != head[fresh], head
    assert torch.equal(load_prior(straight).denoise(x, sigma), load_prior(resumed).denoise(x, sigma))


def test_overwrite_forgets_the_old_run_so_resume_cannot_continue_it(data, tmp_path, monkeypatch):
    """--overwrite replaces a prior; if the new run dies before its first checkpoint, --resume must not silently
    continue the old run from its training state."""
    from medrecon.priors import train as train_module
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=2, batch_size=4, checkpoint_every=0, sample_every=2)
    old = train_prior(train, tmp_path / "p", opts, progress=False)
    assert (old / "samples").is_dir()
    mine = tmp_path / "mine"  # a folder with files of its own, no prior: a new run there deletes nothing
    (mine / "samples").mkdir(parents=True)
    (mine / "samples" / "keep.txt").write_text("mine")
    train_prior(train, mine, opts, progress=False)
    assert (mine / "samples" / "keep.txt").is_file()

    def killed(self):
        raise RuntimeError("killed")
    monkeypatch.setattr(train_module._Trainer, "train_step", killed)
    with pytest.raises(RuntimeError, match="killed"):
        train_prior(train, old, replace(opts, lr=1e-3), overwrite=True, progress=False)
    with pytest.raises(InputError, match="nothing to resume"):
        train_prior(train, old, opts, resume=True, progress=False)
    assert not (old / "samples").exists()  # nor the old run's sample grids (or logs) as this one's
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is a file; --output names the folder"):
        train_prior(train, tmp_path / "file", opts, progress=False)


def test_time_limit_stops_early_exports_and_resume_finishes(data, tmp_path):
    """--time-limit: the loop stops once it has run that long (at least one step), exports a prior whose card
    records the steps done, and --resume carries on to --steps."""
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=6, batch_size=4, warmup=2, checkpoint_every=0,
                        sample_every=0, log_every=1, time_limit=1e-9)  # reached after the first step
    out = train_prior(train, tmp_path / "p", opts, progress=False)
    assert read_model_card(out / "model_card.yaml")["training"]["steps"] == 1
    train_prior(train, out, replace(opts, time_limit=None), resume=True, progress=False)
    assert read_model_card(out / "model_card.yaml")["training"]["steps"] == 6
    assert [int(r["step"]) for r in csv.DictReader(open(out / "loss.csv"))] == [1, 2, 3, 4, 5, 6]


def test_a_run_stopped_between_log_rows_logs_as_the_uninterrupted_run(data, tmp_path):
    """The losses since loss.csv's last row travel with the checkpoint: the first row after a resume averaged only
    the steps since it (1.549 against 1.506)."""
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=4, batch_size=4, warmup=2, checkpoint_every=0,
                        sample_every=0, log_every=2)
    straight = train_prior(train, tmp_path / "a", opts, progress=False)
    out = train_prior(train, tmp_path / "b", replace(opts, time_limit=1e-9), progress=False)  # stops after step 1
    train_prior(train, out, opts, resume=True, progress=False)
    rows = [list(csv.DictReader(open(p / "loss.csv"))) for p in (straight, out)]
    assert [(r["step"], r["loss"]) for r in rows[0]] == [(r["step"], r["loss"]) for r in rows[1]]
    each = list(csv.DictReader(open(train_prior(train, tmp_path / "c", replace(opts, log_every=1),
                                                progress=False) / "loss.csv")))
    losses = [float(r["loss"]) for r in each]  # a row every step: each step's own loss; every 2: the pair's mean
    assert [float(r["loss"]) for r in rows[0]] == pytest.approx([sum(losses[:2]) / 2, sum(losses[2:]) / 2], abs=2e-6)


def test_final_prior_is_exported_before_the_last_sample_grid(data, tmp_path, monkeypatch):
    """The last sample grid takes minutes for a large prior on a CPU: the trained prior is on disk before it
    starts, so stopping the run there loses nothing."""
    import medrecon.priors.samples as samples_module  # where train's draw_grid samples

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(samples_module, "quick_samples", interrupted)
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=2, batch_size=4, warmup=1, checkpoint_every=0,
                        sample_every=5, log_every=1)
    with pytest.raises(KeyboardInterrupt):
        train_prior(train, tmp_path / "p", opts, progress=False)
    assert read_model_card(tmp_path / "p" / "model_card.yaml")["training"]["steps"] == 2
    assert load_prior(tmp_path / "p").image_size == 16


def test_cli_train_writes_a_loadable_prior(tmp_path):
    from pipelines.cli import main

    rng = np.random.default_rng(5)
    files = []
    for i in range(2):
        vol = phantom_volume(rng, z=6, n=24)[:, 2:22, :]  # (Z, Y, X) = (6, 20, 24)
        affine = np.diag([-0.8, -0.8, 2.0, 1.0])  # RAS affine of LPS spacing (0.8, 0.8, 2.0)
        f = tmp_path / f"vol{i}.nii.gz"
        nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), affine), f)
        files.append(str(f))
    out = tmp_path / "cli_prior"
    rc = main(["train", "--data", *files, "--output", str(out), "--image-size", "16", "--steps", "6",
               "--batch-size", "4", "--channels", "8,16", "--checkpoint-every", "3", "--sample-every", "0",
               "--hu-window", "-1000", "1000", "--device", "cpu", "--no-progress"])
    assert rc == 0
    prior = load_prior(out)
    card = prior.card
    cmd = card["training"]["command"]
    assert cmd.startswith("medrecon train --data ") and all(f in cmd for f in files)
    assert "--steps 6" in cmd and "--hu-window -1000.0 1000.0" in cmd
    assert card["pixel_spacing_mm"] == [1.0, 1.0]  # 20 px crop at 0.8 mm resized to 16 px
    assert card["training"]["data"]["n_volumes"] == 2 and card["training"]["steps"] == 6
    # --amp is the default: the card says bf16 where this CPU computes it natively (and ran it), else none
    assert card["training"]["mixed_precision"] == ("bf16" if bf16_native(torch.device("cpu")) else "none")
    assert (out / "samples" / "step_0000006.png").is_file()
    assert prior.denoise(torch.zeros(2, 1, 16, 16), torch.ones(2)).shape == (2, 1, 16, 16)
    assert main(["train", "--data", str(tmp_path / "missing"), "--output", str(out)]) == 2  # clear error, no traceback
    rc = main(["train", "--data", *files, "--output", str(none := tmp_path / "no_grid"), "--image-size", "16",
               "--steps", "2", "--batch-size", "4", "--channels", "8,16", "--checkpoint-every", "0",
               "--sample-every", "-1", "--device", "cpu", "--no-progress"])
    assert rc == 0 and load_prior(none) and not (none / "samples").exists()  # -1: no sample grid at all


def test_cli_patch_training_on_a_folder_records_each_volume_and_refuses_another_modality(tmp_path, capsys):
    """--data FOLDER holding several volumes (the README's own command) trains a patch prior whose card names each
    volume (it crashed with IndexError); a DICOM volume whose Modality says MR is refused for a CT prior."""
    from medrecon.io import write_dicom_series
    from pipelines.cli import main

    rng = np.random.default_rng(6)
    folder = tmp_path / "vols"
    folder.mkdir()
    for i in range(3):
        nib.save(nib.Nifti1Image(phantom_volume(rng, z=4, n=24).transpose(2, 1, 0), np.diag([-1.0, -1.0, 2.0, 1.0])),
                 folder / f"v{i}.nii.gz")
    common = ["--arch", "patch", "--patch-sizes", "8,16", "--channels", "8,16", "--steps", "2", "--batch-size", "2",
              "--pixel-range", "0.8", "1.2", "--sample-every", "0", "--checkpoint-every", "0", "--device", "cpu",
              "--no-progress"]
    assert main(["train", "--data", str(folder), "--output", str(tmp_path / "p"), *common]) == 0
    data = load_prior(tmp_path / "p").card["training"]["data"]
    assert data["n_volumes"] == 3 and sorted(Path(v["path"]).name for v in data["volumes"]) == ["v0.nii.gz", "v1.nii.gz",
                                                                                         "v2.nii.gz"]
    mr = Volume(np.abs(phantom_volume(rng, z=4, n=24)), spacing=(1.0, 1.0, 2.0), meta={"dicom": {"Modality": "MR"}})
    write_dicom_series(mr, tmp_path / "mr")
    capsys.readouterr()
    assert main(["train", "--data", str(folder), str(tmp_path / "mr"), "--output", str(tmp_path / "q"), *common]) == 2
    assert "its DICOM Modality is MR, but the prior is for ct" in capsys.readouterr().err
    assert main(["train", "--dataset", "ct_tumour1", "--output", str(tmp_path / "r"), *common]) == 2
    assert "'ct_tumour1' is a held-out test scan" in capsys.readouterr().err  # CC BY-NC: never trained on
    assert main(["train", "--dataset", "ct_val_neck", "--output", str(tmp_path / "v"), *common]) == 2
    assert "'ct_val_neck' is a validation scan" in capsys.readouterr().err  # it chooses settings: never trained on


def test_cli_training_refuses_values_of_another_modality_as_reconstruct_does(tmp_path, capsys):
    """train applied none of reconstruct's domain checks: an MR magnitude volume under the default --modality ct
    trained (air at 0 HU), CT in HU under --modality mri trained as a contrast-inverted MR prior (|HU|), and a PET
    DICOM series passed as CT. Each is refused with reconstruct's reason and the training option that fixes it."""
    from medrecon.io import write_dicom_series
    from pipelines.cli import main

    rng = np.random.default_rng(7)
    hu = phantom_volume(rng, z=4, n=24)
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.abs(hu / 1000.0).transpose(2, 1, 0), affine), tmp_path / "mr.nii.gz")
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), affine), tmp_path / "ct.nii.gz")
    write_dicom_series(Volume(hu, spacing=(1.0, 1.0, 2.0), meta={"dicom": {"Modality": "PT"}}), tmp_path / "pet")
    common = ["--arch", "patch", "--patch-sizes", "8,16", "--channels", "8,16", "--steps", "1", "--batch-size", "2",
              "--pixel-range", "0.8", "1.2", "--sample-every", "0", "--checkpoint-every", "0", "--device", "cpu",
              "--no-progress"]
    for data, modality, said in (("mr.nii.gz", "ct", "do not look like CT in HU"),
                                 ("ct.nii.gz", "mri", "do not look like MR magnitudes"),
                                 ("pet", "ct", "its DICOM Modality is PT, but the prior is for ct")):
        capsys.readouterr()
        out = tmp_path / f"p_{modality}_{Path(data).stem}"
        assert main(["train", "--data", str(tmp_path / data), "--modality", modality, "--output", str(out),
                     *common]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and not (out / "model_card.yaml").exists(), err
    assert main(["train", "--data", str(tmp_path / "mr.nii.gz"), "--modality", "mri", "--output",
                 str(tmp_path / "ok"), *common]) == 0  # the same MR volume, for an MR prior


@pytest.mark.gpu
def test_cuda_bf16_training_and_device_transfer(data, tmp_path):
    train, held = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=50, batch_size=8, lr=2e-3, warmup=5,
                        checkpoint_every=0, sample_every=0, device="cuda", amp=True)
    out = train_prior(train, tmp_path / "gpu", opts, heldout=held, progress=False)
    card = read_model_card(out)
    assert card["training"]["mixed_precision"] == "bf16" and card["training"]["device"].startswith("cuda")
    assert card["training"]["heldout"]["loss_after"] < card["training"]["heldout"]["loss_before"]
    cpu, gpu = load_prior(out), load_prior(out, device="cuda")
    assert gpu.device.type == "cuda"
    x, s = held[:4], torch.tensor([0.05, 0.3, 1.0, 5.0])
    d_gpu = gpu.denoise(x.cuda(), s.cuda())
    assert d_gpu.device.type == "cuda"
    assert torch.allclose(d_gpu.cpu(), cpu.denoise(x, s), atol=1e-3)


def test_find_volume_paths_discovers_volume_files_and_dicom_folders(tmp_path):
    from medrecon.io import find_volume_paths

    (tmp_path / "a" / "series").mkdir(parents=True)
    (tmp_path / "a" / "x.nii.gz").write_bytes(b"")
    (tmp_path / "a" / "y.nrrd").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("no volume")
    (tmp_path / "a" / "series" / "1.dcm").write_bytes(b"")
    (tmp_path / "a" / ".hidden").mkdir()
    (tmp_path / "a" / ".hidden" / "z.nii").write_bytes(b"")
    found = find_volume_paths([tmp_path / "a"])
    assert found == [tmp_path / "a" / "x.nii.gz", tmp_path / "a" / "y.nrrd", tmp_path / "a" / "series"]
    with pytest.raises(InputError, match="no such file or folder"):
        find_volume_paths([tmp_path / "missing"])



def test_training_discovery_and_read_volume_name_their_volume_files_apart():
    """discovery.py kept a function of dispatch.py's name, is_volume_file, with another rule (.npy in, NIfTI/Analyze
    pairs out): the names now say which is which."""
    from medrecon.io import dispatch, discovery
    assert not hasattr(discovery, "is_volume_file")
    assert discovery.is_training_volume_file("x.npy") and not dispatch.is_volume_file("x.npy")
    assert discovery.is_training_volume_file("x.nii.gz") and dispatch.is_volume_file("x.nii.gz")

def test_learning_rate_warms_up_then_stays_or_decays_by_cosine():
    """Linear warm-up to lr; constant without lr_final; with it, a cosine that ends at lr_final on the
    last step, passes the mean halfway and never rises."""
    o = TrainOptions(steps=1000, lr=1e-3, warmup=100)
    assert learning_rate(o, 0) == pytest.approx(1e-5) and learning_rate(o, 99) == pytest.approx(1e-3)
    assert learning_rate(o, 999) == pytest.approx(1e-3)
    c = replace(o, lr_final=1e-4)
    lrs = [learning_rate(c, s) for s in range(100, 1000)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert learning_rate(c, 100 + 899 // 2) == pytest.approx(5.5e-4, rel=1e-2)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("value", ["-1e-5", "1"])
def test_cli_lr_final_outside_zero_to_lr_is_one_line_error(tmp_path, capsys, value):
    from pipelines.cli import main

    out = tmp_path / "prior"
    assert main(["train", "--data", str(tmp_path), "--output", str(out), "--lr", "1e-4", "--lr-final", value]) == 2
    assert "--lr-final" in capsys.readouterr().err and not out.exists()


def test_patch_batches_take_any_seed():
    """The loader's per-step generator seed: --seed 20240601 (a date) overflowed torch's 64-bit seed."""
    from medrecon.priors.train import PatchBatches

    class Draw:
        last_spacing = 1.0

        def sample(self, g):
            return torch.rand(2, generator=g), None

    same_as_before = torch.rand(2, generator=torch.Generator().manual_seed(7 * 2 ** 40 + 2))
    assert torch.equal(PatchBatches(Draw(), 7, 3)[2][0], same_as_before)  # small seeds keep their stream
    big = PatchBatches(Draw(), 20240601, 3)
    assert not torch.equal(big[1][0], big[2][0])  # drawn, and one stream per step


@pytest.mark.parametrize("extra, named", [
    (["--batch-size", "0"], "--batch-size"), (["--heldout-fraction", "0.99"], "--heldout-fraction"),
    (["--heldout-fraction", "-0.5"], "--heldout-fraction"), (["--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--image-size", "30", "--channels", "16,32,64"], "--image-size 30: not a multiple of 2^2 = 4"),
    (["--channels", "12,24"], "--channels 12,24"), (["--steps", "0"], "--steps"),
    (["--arch", "patch", "--patch-sizes", "10,16", "--channels", "8,16,32"], "--patch-sizes 10,16: 10 not"),
    (["--arch", "patch", "--pixel-range", "2", "1"], "--pixel-range 2 1"), (["--hu-window", "500", "-500"],
                                                                           "--hu-window 500 -500")])
def test_cli_options_out_of_range_are_one_line_errors_before_the_data_are_read(tmp_path, capsys, extra, named):
    """Values that ended in a traceback (--batch-size 0, --heldout-fraction 0.99 or -0.5; --image-size 30 with three
    levels only once the data were read) or did something odd (--checkpoint-every -1 checkpointed every step) are
    refused naming the option, before the data are read: the data path here does not exist."""
    from pipelines.cli import main

    out = tmp_path / "prior"
    assert main(["train", "--data", str(tmp_path / "missing"), "--output", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and "no such file" not in err and not out.exists()


def test_trained_weights_are_shared_as_the_umask_says_and_an_unreadable_file_is_named(data, tmp_path, monkeypatch):
    """safetensors wrote the weights owner-only (0600) whatever the umask, so colleagues could not read the prior;
    and a weights file this user may not read was reported as 'No such file or directory ... truncated or
    corrupt'. Now the weights get 0666 less the umask, and an unreadable file is 'permission denied'."""
    import os

    from medrecon.priors.unet import WEIGHTS_NAME

    train, _ = data
    old = os.umask(0o022)
    try:
        out = train_prior(train, tmp_path / "p", TrainOptions(image_size=16, channels=(8, 16), steps=1, batch_size=2,
                                                              checkpoint_every=0, sample_every=0), progress=False)
    finally:
        os.umask(old)
    weights = out / WEIGHTS_NAME
    assert weights.stat().st_mode & 0o777 == 0o644
    weights.chmod(0o200)
    real = os.access  # root reads anything: then the loader is told it may not
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == weights else real(p, mode, **kw))
    with pytest.raises(InputError, match=r"permission denied.*chmod a\+r") as e:
        load_prior(out)
    assert "corrupt" not in str(e.value)


def test_cli_patch_prior_takes_in_its_own_scans_pixel_size_by_default(tmp_path, capsys):
    """A patch prior trained (the README's command, no --pixel-range) on 0.5 mm scans recorded a range from 0.7 mm
    up, and reconstruct refused the very scan it was trained on. The default range now takes in the scans' own
    pixel sizes, and the card says why; a --pixel-range that leaves them out is warned about, naming it."""
    from pipelines.cli import main
    from pipelines.problem import in_pixel_range

    rng = np.random.default_rng(8)
    f = tmp_path / "fine.nii.gz"
    nib.save(nib.Nifti1Image(phantom_volume(rng, z=3, n=32).transpose(2, 1, 0), np.diag([-0.5, -0.5, 2.0, 1.0])), f)
    common = ["--data", str(f), "--arch", "patch", "--patch-sizes", "8,16", "--channels", "8,16", "--steps", "2",
              "--batch-size", "1", "--sample-every", "-1", "--checkpoint-every", "0", "--device", "cpu", "--no-progress"]
    assert main(["train", *common, "--output", str(tmp_path / "p")]) == 0
    card = load_prior(tmp_path / "p").card
    assert in_pixel_range(0.5, card["pixel_spacing_mm_range"]), card["pixel_spacing_mm_range"]
    aug = card["training"]["augmentation"]
    assert card["training"]["options"]["pixel_spacing_range"] == [0.5, 4.0]
    assert "widened" in aug["pixel_spacing_range_why"]
    assert aug["pixel_spacing_range_mm"] == card["pixel_spacing_mm_range"] == [0.5, 2.0]  # 16 mm slices: 8 px of 2 mm
    assert "--pixel-range" not in card["training"]["command"]  # the default: the same data give the same range
    capsys.readouterr()
    assert main(["train", *common, "--output", str(tmp_path / "q"), "--pixel-range", "0.8", "1.2"]) == 0
    err = capsys.readouterr().err
    assert "training scans at 0.5 mm lie outside --pixel-range 0.8 1.2" in err


def test_cli_resume_refuses_other_scans_of_ones_own_naming_them(tmp_path, capsys, monkeypatch):
    """--resume on other scans of one's own with as many slices was accepted silently (the run's record kept only
    slice counts for the user's files). The card now records each volume's absolute path, voxels' SHA-256 and pixel
    size; a resume on other voxels or pixel sizes is refused naming the volume; the same scans elsewhere resume."""
    import json
    import shutil

    from pipelines.cli import main

    rng = np.random.default_rng(9)
    (tmp_path / "scans").mkdir()
    for name, mm in (("a", 0.8), ("b", 0.8), ("c", 1.1)):
        nib.save(nib.Nifti1Image(phantom_volume(rng, z=4, n=20).transpose(2, 1, 0), np.diag([-mm, -mm, 2.0, 1.0])),
                 tmp_path / "scans" / f"{name}.nii.gz")
    shutil.copy(tmp_path / "scans" / "b.nii.gz", tmp_path / "b_copy.nii.gz")
    monkeypatch.chdir(tmp_path)
    common = ["--output", "p", "--image-size", "16", "--channels", "8,16", "--batch-size", "2", "--checkpoint-every",
              "2", "--sample-every", "-1", "--device", "cpu", "--no-progress"]
    assert main(["train", "--data", "scans/a.nii.gz", "scans/b.nii.gz", "--steps", "2", *common]) == 0
    vols = load_prior(tmp_path / "p").card["training"]["data"]["volumes"]
    assert [v["path"] for v in vols] == [str(tmp_path / "scans" / "a.nii.gz"), str(tmp_path / "scans" / "b.nii.gz")]
    assert len(vols[0]["voxels_sha256"]) == 64 and vols[0]["pixel_spacing_mm"] == [0.8, 0.8]
    capsys.readouterr()
    assert main(["train", "--data", "scans/a.nii.gz", "scans/c.nii.gz", "--steps", "4", "--resume", *common]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'scans' / 'c.nii.gz'}: pixel size [1.1, 1.1] mm, the run's [0.8, 0.8] mm, its voxels " \
           f"differ (SHA-256); the run trained on {tmp_path / 'scans' / 'b.nii.gz'}" in err
    assert main(["train", "--data", "scans/a.nii.gz", "b_copy.nii.gz", "--steps", "4", "--resume", *common]) == 0
    assert load_prior(tmp_path / "p").card["training"]["steps"] == 4  # the same scans from another folder
    state_file = tmp_path / "p" / "checkpoints" / "state.pt"  # a checkpoint of before: only slice counts recorded
    st = torch.load(state_file, weights_only=True)
    record = json.loads(st["data"])
    record["volumes"] = [None, None]
    del record["intensity_window"]
    st["data"] = json.dumps(record, sort_keys=True)
    torch.save(st, state_file)
    assert main(["train", "--data", "scans/a.nii.gz", "scans/b.nii.gz", "--steps", "6", "--resume", *common]) == 0


def test_a_resumed_runs_card_lists_each_parts_command_and_lr(data, tmp_path):
    """After a resume with another --lr the card said the whole run used the last one and its command could not
    reproduce the run. The training state and the card now keep the run's parts: steps, command and lr of each."""
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=4, batch_size=2, warmup=1, checkpoint_every=0,
                        sample_every=0, lr=1e-3)
    out = train_prior(train, tmp_path / "p", opts, command="medrecon train --lr 0.001", progress=False)
    assert [(p["from_step"], p["to_step"]) for p in read_model_card(out)["training"]["segments"]] == [(0, 4)]
    train_prior(train, out, replace(opts, steps=6, lr=5e-4), command="medrecon train --lr 0.0005", resume=True,
                progress=False)
    training = read_model_card(out)["training"]
    assert [(p["from_step"], p["to_step"], p["command"], p["lr"]) for p in training["segments"]] == [
        (0, 4, "medrecon train --lr 0.001", 1e-3), (4, 6, "medrecon train --lr 0.0005", 5e-4)]
    assert training["lr"] == 5e-4 and "resumed" in training["segments_note"]
    state_file = out / "checkpoints" / "state.pt"  # a checkpoint of before: its first part's command unknown
    st = torch.load(state_file, weights_only=True)
    del st["segments"]
    torch.save(st, state_file)
    train_prior(train, out, replace(opts, steps=7, lr=5e-4), command="third", resume=True, progress=False)
    parts = read_model_card(out)["training"]["segments"]
    assert [(p["from_step"], p["to_step"], p["command"]) for p in parts][1:] == [(6, 7, "third")]
    assert parts[0]["command"].startswith("not recorded") and parts[0]["to_step"] == 6


def test_cli_series_chooses_the_series_of_a_dicom_folder_and_the_card_records_them(tmp_path, capsys):
    """A DICOM folder holding several series: the tie (and the warning for the largest) told the user to choose
    with --series UID, which `medrecon train` rejected, and the card recorded only the folder. --series (repeatable)
    chooses, each series its own volume, and the card records each volume's SeriesInstanceUID."""
    import shutil

    from medrecon.io import read_volume, write_dicom_series
    from pipelines.cli import main

    rng = np.random.default_rng(10)
    study, uids = tmp_path / "study", []
    study.mkdir()
    for k in range(2):
        one = tmp_path / f"series{k}"
        write_dicom_series(Volume(phantom_volume(rng, z=4, n=20), spacing=(1.0, 1.0, 2.0)), one, modality="CT")
        uids.append(read_volume(one).meta["series_uid"])
        for f in one.iterdir():
            shutil.copy(f, study / f"{k}_{f.name}")
    common = ["--data", str(study), "--image-size", "16", "--channels", "8,16", "--steps", "1", "--batch-size", "2",
              "--checkpoint-every", "0", "--sample-every", "-1", "--device", "cpu", "--no-progress"]
    assert main(["train", *common, "--output", str(tmp_path / "tie")]) == 2
    assert "choose one with --series UID" in capsys.readouterr().err  # the advice now names an option train has
    assert main(["train", *common, "--output", str(tmp_path / "p"), "--series", uids[1], "--series", uids[0]]) == 0
    vols = load_prior(tmp_path / "p").card["training"]["data"]["volumes"]
    assert sorted(v["series_uid"] for v in vols) == sorted(uids) and all(v["path"] == str(study) for v in vols)
    assert main(["train", *common, "--output", str(tmp_path / "q"), "--series", "1.2.3"]) == 2
    assert "--series 1.2.3: no DICOM folder under" in capsys.readouterr().err


def test_a_resumed_patch_runs_card_keeps_why_its_pixel_range_was_drawn(tmp_path, capsys):
    """After --resume without --pixel-range the card said the range was 'given (--pixel-range)', which no command
    of the run gave; and a seed beyond torch's 64 bits was a traceback."""
    from pipelines.cli import main

    rng = np.random.default_rng(8)
    nib.save(nib.Nifti1Image(phantom_volume(rng, z=4, n=24).transpose(2, 1, 0), np.diag([-1.0, -1.0, 2.0, 1.0])),
             tmp_path / "v.nii.gz")
    run = ["train", "--data", str(tmp_path / "v.nii.gz"), "--output", str(tmp_path / "p"), "--arch", "patch",
           "--patch-sizes", "8,16", "--channels", "8,16", "--steps", "2", "--batch-size", "2", "--sample-every", "0",
           "--checkpoint-every", "0", "--device", "cpu", "--no-progress"]
    assert main([*run, "--time-limit", "0"]) == 0
    why = load_prior(tmp_path / "p").card["training"]["augmentation"]["pixel_spacing_range_why"]
    assert why.startswith("the default")
    assert main([*run, "--resume"]) == 0
    assert load_prior(tmp_path / "p").card["training"]["augmentation"]["pixel_spacing_range_why"] == why
    capsys.readouterr()
    assert main([*run[:5], str(tmp_path / "q"), "--seed", str(2 ** 64)]) == 2
    assert "--seed" in capsys.readouterr().err


def test_resume_compares_options_as_resolved_and_a_resume_that_trains_nothing_leaves_the_card(tmp_path, capsys):
    """Spelling out a unet's default --attention at a resume was refused ('--attention None (now True)'); resuming a
    unet run with --arch patch was called a data difference; a resume with nothing left to train wrote its own
    --init-from (never used) into the card; and loss_before did not say at which step it was scored."""
    import yaml

    from pipelines.cli import main

    rng = np.random.default_rng(9)
    nib.save(nib.Nifti1Image(phantom_volume(rng, z=12, n=24).transpose(2, 1, 0), np.diag([-1.0, -1.0, 2.0, 1.0])),
             tmp_path / "v.nii.gz")
    run = ["train", "--data", str(tmp_path / "v.nii.gz"), "--output", str(tmp_path / "p"), "--image-size", "16",
           "--channels", "8,16", "--batch-size", "2", "--sample-every", "0", "--checkpoint-every", "0",
           "--device", "cpu", "--no-progress"]
    assert main([*run, "--steps", "2"]) == 0
    assert main([*run, "--steps", "4", "--attention", "--lr", "1e-3", "--resume"]) == 0
    capsys.readouterr()
    assert main([*run, "--steps", "6", "--arch", "patch", "--patch-sizes", "16", "--resume"]) == 2
    assert "trained with --arch unet (now patch)" in capsys.readouterr().err
    assert main([*run, "--steps", "4", "--init-from", str(tmp_path / "p"), "--resume"]) == 0  # nothing left
    training = yaml.safe_load((tmp_path / "p" / "model_card.yaml").read_text())["training"]
    assert training["options"]["init_from"] is None and training["lr"] == 1e-3
    assert "--init-from" not in training["command"] and [s["to_step"] for s in training["segments"]] == [2, 4]
    assert training["heldout"]["loss_before_step"] == 0


def test_training_takes_a_volume_medrecon_converted_to_dicom_as_ot(tmp_path, capsys):
    """medrecon convert writes a NIfTI as DICOM Modality OT; train refused it ('its DICOM Modality is OT') though
    reconstruct reads it: an unmapped tag goes to the value check."""
    from medrecon.io import write_dicom_series
    from pipelines.cli import main

    hu = phantom_volume(np.random.default_rng(10), z=4, n=24)
    write_dicom_series(Volume(hu, spacing=(1.0, 1.0, 2.0)), tmp_path / "ot")
    common = ["--arch", "patch", "--patch-sizes", "8,16", "--channels", "8,16", "--steps", "1", "--batch-size", "2",
              "--pixel-range", "0.8", "1.2", "--sample-every", "0", "--checkpoint-every", "0", "--device", "cpu",
              "--no-progress"]
    assert main(["train", "--data", str(tmp_path / "ot"), "--output", str(tmp_path / "p"), *common]) == 0


def test_training_in_all_planes_reslices_only_near_isotropic_volumes_that_hold_a_patch():
    """--planes all: a 3D (near-isotropic) volume gives axial, coronal and sagittal slices; thick slices stay as
    stored (they would be stretched); a view that ``fits`` refuses (too few slices for a patch) is left out."""
    from medrecon.priors.training_data import in_all_planes

    iso = Volume(np.zeros((30, 40, 50), np.float32), spacing=(1.0, 1.1, 1.2))
    thick = Volume(np.zeros((6, 40, 50), np.float32), spacing=(1.0, 1.0, 5.0))
    vols, recs = in_all_planes([iso, thick], [{"name": "iso"}, {"name": "thick"}])
    assert [(r["name"], r["plane"]) for r in recs] == [("iso", "axial"), ("iso", "coronal"), ("iso", "sagittal"),
                                                       ("thick", "as stored")]
    assert [v.shape for v in vols] == [(30, 40, 50), (40, 30, 50), (50, 30, 40), (6, 40, 50)]
    vols, recs = in_all_planes([iso], [{"name": "iso"}], fits=lambda v: v.shape[1] >= 40)
    assert [r["plane"] for r in recs] == ["axial"]  # 30 rows in the other planes: left out, the axial kept


def test_cli_planes_all_needs_a_patch_prior(tmp_path, capsys):
    from pipelines.cli import main

    rc = main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "p"), "--planes", "all"])
    assert rc == 2 and "--planes all needs --arch patch" in capsys.readouterr().err


def test_cli_planes_all_trains_on_every_plane_of_a_3d_volume_and_the_card_says_so(tmp_path, capsys):
    """The card lists each volume with its plane; a resume without --planes all is refused naming it (it said
    "1 volumes now, the run had 3"), and with it continues."""
    from pipelines.cli import main

    vol = phantom_volume(np.random.default_rng(8), z=24, n=24)
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.1, 1.0])), tmp_path / "iso.nii.gz")
    args = ["train", "--data", str(tmp_path / "iso.nii.gz"), "--output", str(tmp_path / "p"), "--arch", "patch",
            "--patch-sizes", "8,16", "--channels", "8,16", "--batch-size", "2", "--pixel-range", "0.8", "1.2",
            "--sample-every", "0", "--checkpoint-every", "1", "--device", "cpu", "--no-progress"]
    assert main([*args, "--planes", "all", "--steps", "2"]) == 0
    data = load_prior(tmp_path / "p").card["training"]["data"]
    assert [v["plane"] for v in data["volumes"]] == ["axial", "coronal", "sagittal"]
    assert data["n_volumes"] == 3 and "--planes all" in load_prior(tmp_path / "p").card["training"]["command"]
    # each plane's own pixel size (the coronal and sagittal records repeated the axial one's)
    assert [v["pixel_spacing_mm"] for v in data["volumes"]] == [[1.0, 1.0], [1.0, 1.1], [1.0, 1.1]]
    capsys.readouterr()
    assert main([*args, "--steps", "3", "--resume"]) == 2
    assert "--planes axial now, the run had --planes all" in capsys.readouterr().err
    assert main([*args, "--planes", "all", "--steps", "3", "--resume", "--channels", "16,32"]) == 2
    assert "--channels 8,16 (now 16,32)" in capsys.readouterr().err  # as the command line spells it
    state = tmp_path / "p" / "checkpoints" / "state.pt"  # a run from before: its views' records say 1.0 x 1.0 mm
    st = torch.load(state, weights_only=True)
    old = json.loads(st["data"])
    for v in old["volumes"]:
        v["pixel_spacing_mm"] = [1.0, 1.0]
    torch.save({**st, "data": json.dumps(old, sort_keys=True)}, state)
    assert main([*args, "--planes", "all", "--steps", "3", "--resume"]) == 0
    training = load_prior(tmp_path / "p").card["training"]
    assert training["steps"] == 3 and training["final_loss_note"].endswith("over the last 3 steps")


def _nifti(path, rng, z=3, n=32, mm=1.0):
    nib.save(nib.Nifti1Image(phantom_volume(rng, z=z, n=n).transpose(2, 1, 0), np.diag([-mm, -mm, 2.0, 1.0])), path)
    return str(path)


PATCH_RUN = ["--arch", "patch", "--patch-sizes", "8,16", "--channels", "8,16", "--steps", "1", "--batch-size", "1",
             "--sample-every", "-1", "--checkpoint-every", "0", "--device", "cpu", "--no-progress"]


def test_a_patch_priors_pixel_range_is_what_it_prints_records_and_reconstruct_enforces(tmp_path, capsys):
    """--pixel-range 2 3 on 8 mm scans printed 'drawn from 2-3 mm' and the card's augmentation said [2, 3], but
    patches are never drawn finer than a scan's own / 1.25, so every draw was 6.4 mm and reconstruct enforced
    6.4-6.4; the default printed 0.7-4 where 1 mm scans give 0.8-4. Now the range printed, the card's augmentation
    record and the range reconstruct enforces are one, the range the sampler draws from; a range cut so is warned
    about, one no scan can be drawn in is refused."""
    from pipelines.cli import main

    f = _nifti(tmp_path / "v.nii.gz", np.random.default_rng(11))  # 32 px of 1 mm: 8 px patches up to 4 mm
    for out, given, printed in (("d", [], "0.8-4 mm"), ("g", ["--pixel-range", "0.5", "2"], "0.8-2 mm")):
        capsys.readouterr()
        assert main(["train", "--data", f, "--output", str(tmp_path / out), *PATCH_RUN, *given]) == 0
        err = capsys.readouterr().err
        lo, hi = load_prior(tmp_path / out).pixel_spacing_mm_range  # what reconstruct enforces
        card = load_prior(tmp_path / out).card
        assert f"pixel sizes drawn from {lo:g}-{hi:g} mm" in err and printed in err, err
        assert card["training"]["augmentation"]["pixel_spacing_range_mm"] == [lo, hi]
        assert ("is cut to 0.8-2 mm" in err) == bool(given)
    capsys.readouterr()
    assert main(["train", "--data", f, "--output", str(tmp_path / "r"), *PATCH_RUN, "--pixel-range", "0.3", "0.6"]) == 2
    err = capsys.readouterr().err
    assert "--pixel-range 0.3 0.6: training scans at 1 mm are never drawn finer than 0.8 mm" in err
    assert "give HI of at least 0.8" in err and not (tmp_path / "r").exists()


def test_a_cut_pixel_range_is_said_once_naming_the_option_and_the_scans_that_cut_it(tmp_path, capsys):
    """A --pixel-range cut to what the scans give was said twice (the range's why: 'cut to ...: no patch is drawn
    finer than its scan's pixel size / 1.25 nor coarser than its slice holds'; then a warning '--pixel-range ... is
    cut to ...'), neither naming the scans that cut it. Now one line, a warning, names the option, each cut end and
    the scans that cut it (the one that sets the end first), as the card's why records it."""
    from pipelines.cli import main

    rng = np.random.default_rng(14)
    a, b = _nifti(tmp_path / "a.nii.gz", rng), _nifti(tmp_path / "b.nii.gz", rng, n=16, mm=1.5)  # 32 mm, 24 mm
    capsys.readouterr()
    assert main(["train", "--data", a, "--data", b, "--output", str(tmp_path / "p"), *PATCH_RUN,
                 "--pixel-range", "0.5", "5"]) == 0
    err = capsys.readouterr().err
    cut = (f"--pixel-range 0.5 5 is cut to 0.8-4 mm: no patch is drawn finer than its scan's pixel size / 1.25 "
           f"({a}: 0.8 mm, {b}: 1.2 mm) nor coarser than its slice holds ({a}: 4 mm, {b}: 3 mm)")
    assert err.count("cut to") == 1 and cut in err, err
    line = next(x for x in err.splitlines() if cut in x)
    assert line.startswith("warning: pixel sizes drawn from 0.8-4 mm (given (--pixel-range); ")
    assert line.endswith("): the prior will refuse other pixel sizes in reconstruct (without --resample)")
    card = load_prior(tmp_path / "p").card
    assert card["pixel_spacing_mm_range"] == [0.8, 4.0]
    assert card["training"]["augmentation"]["pixel_spacing_range_why"].endswith(cut)
    capsys.readouterr()
    assert main(["train", "--data", a, "--output", str(tmp_path / "d"), *PATCH_RUN]) == 0  # the default: said, not
    err = capsys.readouterr().err                                                          # warned
    assert "cut to 0.8-4 mm: no patch is drawn finer than its scan's pixel size / 1.25 (" in err
    assert "warning" not in err and "--pixel-range 0.7 4 is cut" not in err, err


def test_the_patch_samplers_draws_stay_in_the_range_the_card_records():
    """trained_pixel_range (the card's range) is the sampler's own: many batches reach its ends and never leave it."""
    from medrecon.priors.patch import PatchSampler, prepare_volumes
    from medrecon.priors.train import trained_pixel_range

    rng = np.random.default_rng(12)
    data = prepare_volumes([Volume(phantom_volume(rng, z=2, n=24), spacing=(1.0, 1.0, 2.0)),
                            Volume(phantom_volume(rng, z=2, n=40), spacing=(0.6, 0.6, 2.0))], CT)
    opts = TrainOptions(arch="patch", patch_sizes=(8, 16), pixel_spacing_range=(0.3, 4.0))
    (lo, hi), why = trained_pixel_range(data, opts)
    assert (lo, hi) == (0.48, 3.0) and "cut to 0.48-3 mm" in why  # 0.6 mm / 1.25; 24 mm / 8 px
    sampler = PatchSampler(data, opts.patch_sizes, spacing_range=opts.pixel_spacing_range)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        sampler.sample(g)
    assert sampler.used_spacing == pytest.approx([lo, hi])


@pytest.mark.parametrize("extra, named", [
    (["--arch", "patch", "--pixel-range", "nan", "2"], "--pixel-range nan 2: give finite numbers"),
    (["--arch", "patch", "--pixel-range", "1", "inf"], "--pixel-range 1 inf: give finite numbers"),
    (["--arch", "patch", "--intensity-scale", "nan", "1"], "--intensity-scale nan 1: give finite numbers"),
    (["--hu-window", "-1000", "inf"], "--hu-window -1000 inf: give finite numbers"),
    (["--time-limit", "inf"], "--time-limit inf: give finite numbers"),
    (["--lr-final", "nan"], "--lr-final nan: give finite numbers")])
def test_cli_numbers_that_are_not_finite_are_one_line_errors_before_anything_is_written(tmp_path, capsys, extra,
                                                                                        named):
    """--pixel-range nan 2 was a traceback that left loss.csv; 1 inf was recorded as .inf; --intensity-scale nan 1
    'diverged at step 1' naming a checkpoint that did not exist. Non-finite numbers are refused naming the option."""
    from pipelines.cli import main

    out = tmp_path / "prior"
    assert main(["train", "--data", _nifti(tmp_path / "v.nii.gz", np.random.default_rng(13)), "--output", str(out),
                 *PATCH_RUN, *extra]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and not out.exists(), err


def test_a_resume_with_nothing_left_to_train_says_so_and_leaves_the_card(tmp_path, capsys):
    """--steps 100 --resume on a run at step 20540 exited 0 and wrote --steps 100 into the card's options."""
    from pipelines.cli import main

    run = ["train", "--data", _nifti(tmp_path / "v.nii.gz", np.random.default_rng(14)), "--output",
           str(tmp_path / "p"), *PATCH_RUN]
    assert main([*run, "--steps", "3"]) == 0
    card = (tmp_path / "p" / "model_card.yaml").read_bytes()
    capsys.readouterr()
    assert main([*run, "--steps", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--steps 2:" in err and "already reached step 3" in err and "give more than 3" in err, err
    assert main([*run, "--steps", "3", "--resume"]) == 0
    assert "nothing left to train" in capsys.readouterr().err
    assert (tmp_path / "p" / "model_card.yaml").read_bytes() == card


@pytest.fixture
def terminal_ctrl_c():
    """SIGINT as at a terminal (KeyboardInterrupt): a suite started from a background shell inherits it ignored,
    and the training keeps an ignored signal ignored."""
    import signal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupted_run_keeps_a_checkpoint_that_resumes_exactly(data, tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM) with --checkpoint-every 0 left no training state, though the message said 'go on with
    --resume'. The step under way now finishes, the prior and its state are written, and the resume continues as
    the uninterrupted run."""
    import os
    import signal

    from medrecon.priors import train as train_mod

    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=6, batch_size=4, warmup=2, checkpoint_every=0,
                        sample_every=0, log_every=2)
    straight = train_prior(train, tmp_path / "a", opts, progress=False)
    step = train_mod._Trainer.train_step

    def interrupted(self):  # Ctrl-C arrives during the third step
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self)
    def interrupted_twice(self):  # a second Ctrl-C during a step stops at once, unless SIGINT is ignored
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return step(self)
    monkeypatch.setattr(train_mod._Trainer, "train_step", interrupted_twice)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a run started with `nohup ... &`: it trains on
    try:
        ignored = train_prior(train, tmp_path / "c", opts, progress=False)
        monkeypatch.setattr(train_mod._Trainer, "train_step", interrupted)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as at a terminal (terminal_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            train_prior(train, tmp_path / "b", opts, progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(train_mod._Trainer, "train_step", step)
    assert read_model_card(tmp_path / "c" / "model_card.yaml")["training"]["steps"] == 6  # ignored, not stopped
    assert read_model_card(tmp_path / "b" / "model_card.yaml")["training"]["steps"] == 3
    resumed = train_prior(train, tmp_path / "b", opts, resume=True, progress=False)
    x, sigma = train.slices[:4], torch.tensor([0.05, 0.3, 1.0, 5.0])
    assert torch.equal(load_prior(straight).denoise(x, sigma), load_prior(resumed).denoise(x, sigma))
    assert torch.equal(load_prior(straight).denoise(x, sigma), load_prior(ignored).denoise(x, sigma))
    assert [r["loss"] for r in csv.DictReader(open(resumed / "loss.csv"))] == \
        [r["loss"] for r in csv.DictReader(open(straight / "loss.csv"))]


def test_a_step_that_fails_while_an_interrupt_waits_raises_its_own_error_and_saves_nothing(data, tmp_path,
                                                                                           monkeypatch,
                                                                                           terminal_ctrl_c):
    """Review: the interrupt deferred during a step replaced the step's own error, so a diverged state was saved
    as the checkpoint to resume from and the message said 'interrupted ... saved'."""
    import os
    import signal

    from medrecon.priors import train as train_mod

    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=6, batch_size=4, warmup=2, checkpoint_every=0,
                        sample_every=0, log_every=2)

    def diverges(self):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives, then the step fails
            raise InputError("training diverged at step 3 (loss nan)")
        return step(self)
    step = train_mod._Trainer.train_step
    monkeypatch.setattr(train_mod._Trainer, "train_step", diverges)
    with pytest.raises(InputError, match="diverged"):
        train_prior(train, tmp_path / "c", opts, progress=False)
    assert not (tmp_path / "c" / "checkpoints" / "state.pt").exists()


def test_a_second_interrupt_during_a_step_stops_at_once_and_saves_nothing_of_it(data, tmp_path, monkeypatch,
                                                                                 capsys, terminal_ctrl_c):
    """Review: a second Ctrl-C was deferred like the first, so a user could not stop a long step. It now stops at
    once; the half-done step is not saved (the last checkpoint, step 2 here, stays)."""
    import os
    import signal

    from medrecon.priors import train as train_mod

    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=6, batch_size=4, warmup=2, checkpoint_every=2,
                        sample_every=0, log_every=2)
    step = train_mod._Trainer.train_step

    def pressed_twice(self):
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # raises here, in the middle of the step
            raise AssertionError("the second interrupt did not stop the step")
        return step(self)
    monkeypatch.setattr(train_mod._Trainer, "train_step", pressed_twice)
    with pytest.raises(train_mod.StoppedAtOnce):
        train_prior(train, tmp_path / "d", opts, progress=False)
    assert "stopped at once by a second interrupt: nothing of step 4 is saved" in capsys.readouterr().err
    state = torch.load(tmp_path / "d" / "checkpoints" / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 2


def test_a_damaged_dicom_series_in_a_data_folder_is_skipped_and_recorded(tmp_path, capsys, caplog):
    """A folder of good NIfTI files and a truncated .dcm (and a text file named .dcm) warned 'skipped unreadable
    file' and then stopped: 'no slice could be decoded'. The unreadable series is now skipped, as said, and the card
    records it; a damaged file named itself is still an error."""
    from medrecon.io import write_dicom_series
    from pipelines.cli import main

    rng = np.random.default_rng(15)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(2):
        _nifti(folder / f"v{i}.nii.gz", rng)
    write_dicom_series(Volume(phantom_volume(rng, z=1, n=16), spacing=(1.0, 1.0, 2.0)), tmp_path / "dcm")
    good = next((tmp_path / "dcm").iterdir()).read_bytes()
    (folder / "cut.dcm").write_bytes(good[:-200])
    (folder / "fake.dcm").write_text("not a DICOM file")
    (folder / "cut.nii.gz").write_bytes(Path(_nifti(tmp_path / "whole.nii.gz", rng)).read_bytes()[:300])
    assert main(["train", "--data", str(folder), "--output", str(tmp_path / "p"), *PATCH_RUN]) == 0
    assert f"skipped {folder}: " in caplog.text and f"skipped {folder / 'cut.nii.gz'}: " in caplog.text
    data = load_prior(tmp_path / "p").card["training"]["data"]
    assert data["n_volumes"] == 2 and len(data["skipped"]) == 2
    assert any("no slice could be decoded" in s for s in data["skipped"])
    (tmp_path / "link").symlink_to(folder)  # the same data by another path: the skipped volume's path is no data
    assert main(["train", "--data", str(tmp_path / "link"), "--output", str(tmp_path / "p"), *PATCH_RUN, "--steps",
                 "2", "--resume"]) == 0
    assert main(["train", "--data", str(folder / "cut.dcm"), str(folder / "v0.nii.gz"), "--output",
                 str(tmp_path / "q"), *PATCH_RUN]) == 2
    assert "cut.dcm" in capsys.readouterr().err and not (tmp_path / "q").exists()


def test_output_problems_are_told_before_the_data_are_read(tmp_path, capsys):
    """An existing prior without --overwrite/--resume, or --resume without a training state, was told only after
    every volume had been read (here the data do not even exist)."""
    from pipelines.cli import main

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "model_card.yaml").write_text("name: p\n")
    missing = ["train", "--data", str(tmp_path / "missing"), *PATCH_RUN, "--output"]
    assert main([*missing, str(tmp_path / "p")]) == 2
    assert "already holds a prior" in capsys.readouterr().err
    assert main([*missing, str(tmp_path / "q"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err and not (tmp_path / "q").exists()


def test_an_output_holding_files_a_run_writes_but_no_prior_is_refused_unless_overwrite(tmp_path, capsys):
    """A folder holding a config.json or loss.csv of the user's own (or of a run killed before its first
    checkpoint) but no model card took a new run, which overwrote them without a word; now refused naming them,
    and --overwrite replaces them. A folder of other files is still an output."""
    from medrecon.errors import InputError
    from medrecon.priors.train import check_output

    (out := tmp_path / "p").mkdir()
    (out / "notes.txt").write_text("mine")
    check_output(out, resume=False, overwrite=False)  # other files: no problem
    (out / "config.json").write_text("{}")
    (out / "loss.csv").write_text("step,loss\n")
    with pytest.raises(InputError, match=r"p: holds config.json, loss.csv but no prior .* --overwrite"):
        check_output(out, resume=False, overwrite=False)
    check_output(out, resume=False, overwrite=True)


def test_a_copy_of_a_registered_held_out_scan_given_with_data_is_warned_of_and_kept_in_the_card(tmp_path, caplog,
                                                                                               monkeypatch):
    """`--dataset` refuses val and test scans; a byte-for-byte copy of one given with --data trained silently. Now
    it is warned of by name and role; the registry's digests are every file of every scan not for training. The
    card's training.data kept no word of it: its volume's record now holds the warning, and a resume keeps it once
    (the run trained on it, whatever the check says at the resume)."""
    import nibabel as nib

    from medrecon.io.common import file_sha256
    from pipelines import datasets
    from pipelines.cli import main

    known = datasets._held_out_digests()
    assert known[datasets.scan("ct_lung2").sha256] == "ct_lung2 (test)"
    assert known[datasets.scan("ct_val_neck").sha256] == "ct_val_neck (val)"
    assert datasets.scan("ct_lung1").sha256 not in known  # a training scan
    rng = np.random.default_rng(7)
    for i in range(2):
        nib.save(nib.Nifti1Image(phantom_volume(rng, z=4, n=24).transpose(2, 1, 0), np.diag([-1.0, -1.0, 2.0, 1.0])),
                 tmp_path / f"v{i}.nii.gz")
    monkeypatch.setattr(datasets, "_held_out_digests", lambda: {file_sha256(tmp_path / "v1.nii.gz"): "ct_x (test)"})
    common = ["--arch", "patch", "--patch-sizes", "8,16", "--channels", "8,16", "--steps", "1", "--batch-size", "2",
              "--pixel-range", "0.8", "1.2", "--sample-every", "0", "--checkpoint-every", "0", "--device", "cpu",
              "--no-progress"]
    assert main(["train", "--data", str(tmp_path / "v0.nii.gz"), str(tmp_path / "v1.nii.gz"), "--output",
                 str(tmp_path / "p"), *common]) == 0
    assert f"{tmp_path / 'v1.nii.gz'}: holds the registered scan ct_x (test), which medrecon keeps out" in caplog.text
    assert "v0.nii.gz: holds" not in caplog.text
    said = "holds the registered scan ct_x (test), which medrecon keeps out of training (its figures are held out)"

    def warnings():
        return [v.get("warning") for v in load_prior(tmp_path / "p").card["training"]["data"]["volumes"]]
    assert warnings()[0] is None and warnings()[1].startswith(said)
    first = warnings()
    for steps, digests in (("2", {}), ("3", None)):  # the check finds no copy now; then finds it again
        if digests is not None:
            monkeypatch.setattr(datasets, "_held_out_digests", lambda: digests)
        else:
            monkeypatch.undo()
            monkeypatch.setattr(datasets, "_held_out_digests",
                                lambda: {file_sha256(tmp_path / "v1.nii.gz"): "ct_x (test)"})
        assert main(["train", "--data", str(tmp_path / "v0.nii.gz"), str(tmp_path / "v1.nii.gz"), "--output",
                     str(tmp_path / "p"), *common, "--steps", steps, "--resume"]) == 0
        assert warnings() == first
    assert json.dumps(load_prior(tmp_path / "p").card["training"]).count(said) == 1


def test_dataset_train_warns_that_ct_head_holds_the_old_validation_slab_and_the_card_keeps_it(tmp_path, caplog,
                                                                                              monkeypatch):
    """`--dataset train` (CT) trains on all of ct_head, slices 82-107 too: the slab that chose settings until the
    forty-ninth session, which the bundled CT patch priors never trained on (their cards: slices 0-75). It did so
    silently; now train warns of it and the card keeps the warning with ct_head's record, the other scans none.
    (Each registered scan is a small phantom here: the cache is not needed.)"""
    from pipelines import datasets
    from pipelines.cli import main

    names = datasets.names("train", "ct")
    assert "ct_head" in names
    rng, files = np.random.default_rng(3), {}
    for n in names:
        files[n] = tmp_path / f"{n}.nii.gz"
        nib.save(nib.Nifti1Image(phantom_volume(rng, z=4, n=24).transpose(2, 1, 0), np.diag([-1.0, -1.0, 2.0, 1.0])),
                 files[n])
    monkeypatch.setattr(datasets, "path", lambda name, cache_dir=None: files[name])
    assert main(["train", "--dataset", "train", "--output", str(tmp_path / "p"), "--arch", "patch", "--patch-sizes",
                 "8,16", "--channels", "8,16", "--steps", "1", "--batch-size", "2", "--pixel-range", "0.8", "1.2",
                 "--sample-every", "0", "--checkpoint-every", "0", "--device", "cpu", "--no-progress"]) == 0
    said = "all its 108 slices, 82-107 too: the validation slab that chose settings until the forty-ninth session"
    assert f"{files['ct_head']}: {said}" in caplog.text and caplog.text.count(said) == 1
    volumes = load_prior(tmp_path / "p").card["training"]["data"]["volumes"]
    assert [v["name"] for v in volumes] == names
    assert [(v.get("warning") or "").startswith(said) for v in volumes] == [n == "ct_head" for n in names]


def test_a_dicom_series_no_installed_decoder_reads_stops_training_saying_what_to_install(tmp_path, capsys, caplog):
    """A training folder's DICOM series compressed in a transfer syntax no installed decoder reads (HTJ2K here:
    pydicom needs pylibjpeg-openjpeg) was skipped as 'damaged' and training went on without it. The files may be
    whole: it is now a one-line error naming the series, the file and the package to install, and nothing is
    written; a damaged series in the same folder is still skipped."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    from medrecon.io import write_dicom_series
    from pipelines.cli import main

    htj2k = "1.2.840.10008.1.2.4.201"
    if get_decoder(htj2k).is_available:
        pytest.skip("an HTJ2K decoder is installed here")
    rng = np.random.default_rng(17)
    folder = tmp_path / "data"
    folder.mkdir()
    _nifti(folder / "good.nii.gz", rng)
    write_dicom_series(Volume(phantom_volume(rng, z=2, n=16), spacing=(1.0, 1.0, 2.0)), folder / "htj2k")
    for f in (folder / "htj2k").iterdir():
        ds = pydicom.dcmread(f)
        ds.PixelData = encapsulate([b"\x00" * 64])  # no decoder is asked to read these bytes
        ds.file_meta.TransferSyntaxUID = htj2k
        ds.save_as(f, enforce_file_format=True)
    assert main(["train", "--data", str(folder), "--output", str(tmp_path / "p"), *PATCH_RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {folder / 'htj2k'}: no slice could be decoded (e.g. IM0001.dcm: no installed "
                          "decoder reads its transfer syntax High-Throughput JPEG 2000") and "\n" not in err
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in err and "damaged" not in err
    assert "skipped" not in caplog.text and not (tmp_path / "p").exists()
    write_dicom_series(Volume(phantom_volume(rng, z=2, n=16), spacing=(1.0, 1.0, 2.0)), tmp_path / "plain")
    for f in (folder / "htj2k").iterdir():  # the same series damaged (cut short, uncompressed): passed over
        f.write_bytes((tmp_path / "plain" / f.name).read_bytes()[:-200])
    assert main(["train", "--data", str(folder), "--output", str(tmp_path / "p"), *PATCH_RUN]) == 0
    assert len(load_prior(tmp_path / "p").card["training"]["data"]["skipped"]) == 1


def test_a_damaged_volume_the_user_named_is_an_error_not_a_skip(tmp_path):
    """Review: only a named file was refused; a damaged DICOM series folder given as such was skipped with a warning
    (training went on without it), as was a series asked for by --series."""
    from medrecon.io import write_dicom_series
    from medrecon.priors.training_data import read_volumes

    rng = np.random.default_rng(16)
    good = _nifti(tmp_path / "good.nii.gz", rng)
    write_dicom_series(Volume(phantom_volume(rng, z=2, n=16), spacing=(1.0, 1.0, 2.0)), tmp_path / "series")
    for f in (tmp_path / "series").iterdir():
        f.write_bytes(f.read_bytes()[:-200])  # every slice's pixels cut
    with pytest.raises(UnreadableError, match="no slice could be decoded"):
        read_volumes([good, tmp_path / "series"])
    (tmp_path / "both").mkdir()
    (tmp_path / "series").rename(tmp_path / "both" / "series")
    Path(good).rename(tmp_path / "both" / "good.nii.gz")
    np.save(tmp_path / "both" / "cut.npy", np.zeros((4, 16, 16), np.float32))
    (tmp_path / "both" / "cut.npy").write_bytes((tmp_path / "both" / "cut.npy").read_bytes()[:-100])
    volumes, _, skipped = read_volumes([tmp_path / "both"])  # found in a folder of several: passed over, recorded
    assert len(volumes) == 1 and len(skipped) == 2 and any("cut.npy" in s and "truncated" in s for s in skipped)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "both" / "binary.nii")
    raw = bytearray((tmp_path / "both" / "binary.nii").read_bytes())
    raw[70:74] = (1).to_bytes(2, "little") + (1).to_bytes(2, "little")  # datatype 1 (binary), 1 bit per voxel
    (tmp_path / "both" / "binary.nii").write_bytes(bytes(raw))
    with pytest.raises(InputError, match="binary.nii: data code 1 not supported; convert it to a numeric data type"):
        read_volumes([tmp_path / "both"])  # whole but unsupported: refused, not passed over as damaged


def test_a_run_the_time_limit_ended_skips_the_final_sample_grid_and_says_how_to_draw_it(data, tmp_path,
                                                                                         monkeypatch, capsys):
    """--time-limit bounds the run: the final sample grid (minutes for a large prior on a CPU; 8 min 31 s after a
    12 s --time-limit 0.2 run) is not drawn when the limit ended the run, the card and the console say so and how to
    draw it, and `python -m medrecon.priors.sample_grid PRIOR` draws it afterwards (its card's 2 samples, 2 steps).
    A run that reaches --steps draws it, saying so whatever the progress setting."""
    import medrecon.priors.samples as samples_module  # where train's draw_grid samples

    drawn = []
    real = samples_module.quick_samples
    monkeypatch.setattr(samples_module, "quick_samples", lambda *a, **k: drawn.append(a) or real(*a, **k))
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=6, batch_size=4, warmup=2, checkpoint_every=0,
                        sample_every=4, num_samples=2, sample_steps=2, log_every=1, time_limit=1e-9)
    out = train_prior(train, tmp_path / "p", opts, progress=False)
    err = capsys.readouterr().err
    assert drawn == [] and not (out / "samples").exists()
    grid = read_model_card(out / "model_card.yaml")["training"]["sample_grid"]
    assert "skipped" in grid and "--time-limit" in grid and "python -m medrecon.priors.sample_grid" in grid
    assert "final sample grid is skipped" in err and "python -m medrecon.priors.sample_grid" in err
    import subprocess
    import sys

    drew = subprocess.run([sys.executable, "-m", "medrecon.priors.sample_grid", str(out), "--device", "cpu"],
                          capture_output=True, text=True)
    assert drew.returncode == 0 and "Warning" not in drew.stderr, drew.stderr
    assert drew.stdout.strip() == str(out / "samples" / "step_0000001.png") and Path(drew.stdout.strip()).is_file()
    # reaching --steps: the grid is drawn, the line said with --no-progress too, and the card's note is gone
    train_prior(train, out, replace(opts, time_limit=None), resume=True, progress=False)
    assert len(drawn) == 2 and (out / "samples" / "step_0000006.png").is_file()  # step 4's and the final one
    assert "drawing the final sample grid" in capsys.readouterr().err
    assert "sample_grid" not in read_model_card(out / "model_card.yaml")["training"]


@pytest.mark.parametrize("never", [0, -1])
def test_sample_every_0_and_minus_1_both_mean_no_sample_grid_in_python_as_on_the_command_line(data, tmp_path,
                                                                                           monkeypatch, never):
    """TrainOptions(sample_every=-1) drew a grid at every step (step % -1 == 0) where the CLI's -1 means never:
    -1 is never in Python too (as 0 always was; the CLI's 0, only at the end, passes --steps), and below -1 is
    refused naming the meanings."""
    import medrecon.priors.samples as samples_module  # where train's draw_grid samples

    drawn = []
    monkeypatch.setattr(samples_module, "quick_samples", lambda *a, **k: drawn.append(a))
    monkeypatch.setattr(samples_module, "save_grid", lambda *a, **k: None)
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=3, batch_size=4, warmup=1, checkpoint_every=0,
                        sample_every=never, log_every=1)
    train_prior(train, tmp_path / "p", opts, progress=False)
    assert drawn == []
    assert opts.sample_every == 0 and replace(opts, sample_every=-1).sample_every == 0  # the card says 0 for none
    with pytest.raises(InputError, match="sample_every -2: .*-1"):
        TrainOptions(sample_every=-2)



def _grid_skipped_prior(data, tmp_path, monkeypatch):
    """A prior whose run --time-limit ended (its card's sample_grid note: skipped), trained into a relative folder."""
    train, _ = data
    monkeypatch.chdir(tmp_path)
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=6, batch_size=4, warmup=2, checkpoint_every=0,
                        sample_every=4, num_samples=2, sample_steps=2, log_every=1, time_limit=1e-9)
    train_prior(train, Path("p"), opts, progress=False)
    return tmp_path / "p"


def test_the_skipped_grid_note_names_the_prior_folder_absolutely(data, tmp_path, monkeypatch):
    """The card's note named the folder as given to medrecon train ('p'): a command useless from elsewhere."""
    out = _grid_skipped_prior(data, tmp_path, monkeypatch)
    note = read_model_card(out / "model_card.yaml")["training"]["sample_grid"]
    assert note.endswith(f"draw it with python -m medrecon.priors.sample_grid {out}"), note


def test_sample_grid_command_refuses_0_samples_or_steps_in_one_line(data, tmp_path, monkeypatch, capsys):
    """-n 0 and --steps 0 fell back to the card's values (a.n or ...) and drew a grid."""
    from medrecon.priors.samples import main

    out = _grid_skipped_prior(data, tmp_path, monkeypatch)
    capsys.readouterr()
    for args in (["-n", "0"], ["--steps", "0"], ["-n", "-3"]):
        assert main([str(out), "--device", "cpu", *args]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {args[0]} {args[1]}: give at least 1 {'step' if args[0] == '--steps' else 'sample'}\n"
    assert not (out / "samples").exists()


def test_sample_grid_command_names_an_unwritable_output_in_one_line(data, tmp_path, monkeypatch, capsys):
    """An --output that cannot be written was a traceback."""
    from medrecon.priors.samples import main

    out = _grid_skipped_prior(data, tmp_path, monkeypatch)
    note = read_model_card(out / "model_card.yaml")["training"]["sample_grid"]
    (tmp_path / "a_file").write_text("")
    bad = tmp_path / "a_file" / "grid.png"
    assert main([str(out), "--device", "cpu", "--output", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"error: cannot write {bad}: ") and err[-1].endswith("; choose a writable --output")
    assert read_model_card(out / "model_card.yaml")["training"]["sample_grid"] == note  # nothing drawn


def test_sample_grid_command_notes_the_drawn_grid_in_the_card(data, tmp_path, monkeypatch, capsys):
    """After the grid was drawn the card still said 'skipped: ... draw it with ...'; now it says where it is (the card
    rewritten through a temporary sibling, write_model_card), and a second drawing where that one is."""
    from medrecon.priors.samples import main

    out = _grid_skipped_prior(data, tmp_path, monkeypatch)
    assert main([str(out), "--device", "cpu"]) == 0
    grid = out / "samples" / "step_0000001.png"
    assert capsys.readouterr().out.strip() == str(grid) and grid.is_file()
    drawn = read_model_card(out / "model_card.yaml")["training"]["sample_grid"]
    assert drawn == (f"drawn afterwards: {grid} (2 samples, 2 steps); the run skipped it: --time-limit 1e-09 min "
                     "ended the run at step 1"), drawn
    assert not list(out.glob(".*.tmp"))
    assert main(["p", "--device", "cpu", "-n", "1", "--output", "again.png"]) == 0
    assert read_model_card(out / "model_card.yaml")["training"]["sample_grid"] == (
        f"drawn afterwards: {tmp_path / 'again.png'} (1 sample, 2 steps); the run skipped it: --time-limit 1e-09 min "
        "ended the run at step 1")


def test_the_skipped_grid_facts_are_a_field_of_the_card_that_drawing_it_reads_and_adds_to(data, tmp_path,
                                                                                           monkeypatch, capsys):
    """The card's sample_grid note was prose that drawing the grid parsed back for why the run skipped it. The
    facts are fields now (sample_grid_skipped, then sample_grid_drawn), read back as written; the note stays for
    people, and what it says is not read."""
    from medrecon.priors.card import write_model_card
    from medrecon.priors.samples import main

    out = _grid_skipped_prior(data, tmp_path, monkeypatch)
    card = read_model_card(out / "model_card.yaml")
    why = "--time-limit 1e-09 min ended the run at step 1"
    assert card["training"]["sample_grid_skipped"] == why, card["training"]
    card["training"]["sample_grid"] = "a note a person reworded"
    write_model_card(out / "model_card.yaml", card)
    assert main([str(out), "--device", "cpu"]) == 0
    training = read_model_card(out / "model_card.yaml")["training"]
    grid = out / "samples" / "step_0000001.png"
    assert training["sample_grid_skipped"] == why
    assert training["sample_grid_drawn"] == {"path": str(grid), "samples": 2, "steps": 2}, training
    assert training["sample_grid"] == f"drawn afterwards: {grid} (2 samples, 2 steps); the run skipped it: {why}"


@pytest.mark.parametrize("drawn_before", [False, True])
def test_a_card_with_only_the_older_prose_note_still_reads_why_the_grid_was_skipped(data, tmp_path, monkeypatch,
                                                                                     capsys, drawn_before):
    """Cards written before the sample_grid_skipped field hold only the note ('skipped: WHY; draw it with ...', or
    after a drawing 'drawn afterwards: ...; the run skipped it: WHY'): drawing the grid still finds WHY there."""
    from medrecon.priors.card import write_model_card
    from medrecon.priors.samples import draw_command, main

    out = _grid_skipped_prior(data, tmp_path, monkeypatch)
    card = read_model_card(out / "model_card.yaml")
    why = "--time-limit 1e-09 min ended the run at step 1"
    for key in ("sample_grid_skipped", "sample_grid_drawn"):
        card["training"].pop(key, None)
    card["training"]["sample_grid"] = (f"drawn afterwards: /x.png (1 sample, 2 steps); the run skipped it: {why}"
                                       if drawn_before else f"skipped: {why}; draw it with {draw_command(out)}")
    write_model_card(out / "model_card.yaml", card)
    assert main([str(out), "--device", "cpu"]) == 0
    training = read_model_card(out / "model_card.yaml")["training"]
    assert training["sample_grid"].endswith(f"; the run skipped it: {why}") and training["sample_grid_skipped"] == why


def test_a_prior_folder_holding_a_newline_is_printed_on_one_line_by_train_and_the_grid_command(data, tmp_path,
                                                                                              monkeypatch, capsys):
    """train's lines naming its output folder and the grid command's printed path were raw: a newline in the
    folder's name split them. Escaped now, as errors are."""
    from medrecon.priors.samples import main

    train, _ = data
    out = tmp_path / "p\nq"
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=2, batch_size=4, warmup=1, checkpoint_every=0,
                        sample_every=4, num_samples=1, sample_steps=1, log_every=1, time_limit=1e-9)
    train_prior(train, out, opts, progress=False)
    err = capsys.readouterr().err
    assert f"draw it with python -m medrecon.priors.sample_grid '{tmp_path}/p\\nq'\n" in err, err
    assert main([str(out), "--device", "cpu", "--output", str(out / "g\x1b.png")]) == 0
    assert capsys.readouterr().out == f"{tmp_path}/p\\nq/g\\x1b.png\n"


def test_a_model_card_is_written_atomically(tmp_path, monkeypatch):
    """A rewrite that fails before its rename leaves the old card whole and no temporary behind."""
    import os

    from medrecon.priors.card import write_model_card

    path = write_model_card(tmp_path / "model_card.yaml", {"name": "old"})

    def fail(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(InputError, match=r"model_card\.yaml.*No space left on device"):
        write_model_card(path, {"name": "new"})
    assert read_model_card(path)["name"] == "old" and [p.name for p in tmp_path.iterdir()] == ["model_card.yaml"]


def test_heldout_data_scores_ones_own_volume_with_a_registered_one_and_a_resume_keeps_it(tmp_path, capsys,
                                                                                          monkeypatch):
    """--heldout-data FILE (the GPU lease's validation slab: no data cache there) is scored as --heldout-dataset
    volumes are: heldout_slices of it, before, every --heldout-every steps and after, recorded in the card's
    heldout_volumes with its path and voxels' checksum; it may go with --heldout-dataset; a resume keeps it, and
    one with another held-out volume is refused naming it."""
    from medrecon.io import read_volume
    from medrecon.io.common import voxels_sha256
    from medrecon.priors.patch import heldout_slices
    from medrecon.priors.training_data import load_patch_data
    from pipelines import datasets
    from pipelines.commands_train import training_intensity
    from pipelines.cli import main
    from pipelines.modality import Modality

    rng = np.random.default_rng(11)
    train = _nifti(tmp_path / "train.nii.gz", rng, z=6, n=24)
    held = Path(_nifti(tmp_path / "val.nii", rng, n=24))  # 3 slices: heldout_slices takes all three
    other = _nifti(tmp_path / "other.nii", rng, n=24)
    lung2 = _nifti(tmp_path / "lung2.nii.gz", rng, z=8, n=20, mm=1.1)  # the registered scan's stand-in
    monkeypatch.setattr(datasets, "path", lambda name, cache_dir=None: {"ct_lung2": lung2}[name])
    out = tmp_path / "p"
    run = ["train", "--data", train, "--heldout-dataset", "ct_lung2", "--output", str(out), *PATCH_RUN]
    assert main([*run, "--heldout-data", str(held), "--steps", "2", "--heldout-every", "1"]) == 0
    said = capsys.readouterr()
    assert "step 2: held-out loss " in said.err  # the run's output tells the last one too, on stderr
    assert said.out.strip() == str(out)  # stdout holds only the prior's folder: PRIOR=$(medrecon train ...)
    prior = load_prior(out)
    training = prior.card["training"]
    vols = training["data"]["heldout_volumes"]
    assert [v.get("name") for v in vols] == ["ct_lung2", None]  # the registered scan, then the file of one's own
    assert vols[1]["path"] == str(held.resolve()) and vols[1]["voxels_sha256"] == voxels_sha256(read_volume(held))
    assert training["data"]["n_volumes"] == 1 and "--heldout-data " + str(held) in training["command"]
    imap, _ = training_intensity(Modality.ct, (-1000.0, 1000.0), 99.5)
    slices = heldout_slices(load_patch_data([lung2, held], imap, modality="ct"), 2.0)
    h = training["heldout"]
    assert [s.shape[0] for s in slices] == [4, 3] and h["n_slices"] == 7
    assert [step for step, _ in h["log"]] == [0, 1, 2] and np.isfinite(h["loss_after"])
    assert abs(heldout_loss(prior, slices) - h["loss_after"]) < 1e-4  # the loss of these very slices
    assert main([*run, "--heldout-data", str(held), "--steps", "3", "--resume"]) == 0
    h = load_prior(out).card["training"]["heldout"]
    assert h["loss_before_step"] == 0 and [step for step, _ in h["log"]] == [0, 1, 2, 3]
    capsys.readouterr()
    assert main([*run, "--heldout-data", other, "--steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"held-out volume 2: its voxels differ (SHA-256); the run held out {held.resolve()}" in err  # its file
    assert "--heldout-data/--heldout-dataset" in err
    # dropping the held-out data, or adding a volume, reads as the other lines do (was "heldout volumes None now,
    # the run had [{'pixel_spacing_mm': ...}]" and "3 heldout volumes now, the run had 2")
    had = f"the run had 2 (ct_lung2, {held.resolve()})"  # a registered scan by its name, not its cache path
    for given, said in ((["train", "--data", train, "--output", str(out), *PATCH_RUN],
                         f"held-out volumes: none now, {had}"),
                        ([*run, "--heldout-data", str(held), "--heldout-data", other],
                         f"3 held-out volumes now, {had}")):
        assert main([*given, "--steps", "4", "--resume"]) == 2
        assert f"({said}); resume with" in capsys.readouterr().err


def test_heldout_data_that_is_also_trained_on_is_refused_in_one_line(tmp_path, capsys):
    """A --heldout-data volume that is also a training volume, given as the same path, the same file by another
    path, or a copy (the same voxels), is refused in one line naming it and the fix, and nothing is written."""
    import shutil

    from pipelines.cli import main

    rng = np.random.default_rng(12)
    a, b = Path(_nifti(tmp_path / "a.nii.gz", rng, z=4, n=24)), _nifti(tmp_path / "b.nii.gz", rng, z=4, n=24)
    shutil.copy(a, tmp_path / "a_copy.nii.gz")
    (tmp_path / "link.nii.gz").symlink_to(a)
    for given, same in ((a, "the same file"), (tmp_path / "link.nii.gz", "the same file"),
                        (tmp_path / "a_copy.nii.gz", f"the same voxels as the training volume {a}")):
        capsys.readouterr()
        out = tmp_path / f"p_{given.name}"
        assert main(["train", "--data", str(a), b, "--heldout-data", str(given), "--output", str(out),
                     *PATCH_RUN]) == 2
        err = capsys.readouterr().err
        said = f"{given.resolve()}: both held out and trained on ({same}); a held-out volume is never trained on: " \
               f"keep it in only one of --heldout-data {given} and --data {a}"  # the options as given
        assert err.splitlines()[-1] == f"error: {said}" and "Traceback" not in err, err  # (after the pixel range)
        assert not out.exists()


def test_a_volume_given_twice_as_heldout_data_is_refused_in_one_line(tmp_path, capsys):
    """The same held-out volume given twice (--heldout-data H --heldout-data H, a file and its folder, a copy: the
    same voxels) was accepted and its loss weighed twice; now one line names it, and nothing is written."""
    import shutil

    from pipelines.cli import main

    rng = np.random.default_rng(14)
    train = _nifti(tmp_path / "train.nii.gz", rng, z=4, n=24)
    (tmp_path / "held").mkdir()
    h = Path(_nifti(tmp_path / "held" / "h.nii", rng, n=24))
    shutil.copy(h, tmp_path / "h_copy.nii")
    twice = "given twice as held-out data (--heldout-data {} and --heldout-data {}); give it once"
    for k, (given, said) in enumerate([((h, h), f"{h}: {twice.format(h, h)}"),
                                       ((h, tmp_path / "held"), f"{h}: {twice.format(h, tmp_path / 'held')}"),
                                       ((h, tmp_path / "h_copy.nii"), f"{tmp_path / 'h_copy.nii'} (the same voxels "
                                        f"as {h}): {twice.format(h, tmp_path / 'h_copy.nii')}")]):
        capsys.readouterr()
        out = tmp_path / f"p{k}"
        held = [w for g in given for w in ("--heldout-data", str(g))]
        assert main(["train", "--data", train, *held, "--output", str(out), *PATCH_RUN]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == f"error: {said}" and "Traceback" not in err, err
        assert not out.exists()


def test_a_file_held_out_and_trained_on_or_held_out_twice_is_refused_before_any_volume_is_read(tmp_path, capsys,
                                                                                                  monkeypatch):
    """The overlap refusal came after every volume was read (minutes on large data); the same file (a path, its
    folder) trained on and held out, or held out twice, is now refused before any is read (a copy, the same voxels,
    after: the voxels need reading)."""
    from medrecon.priors import training_data
    from pipelines.cli import main

    rng = np.random.default_rng(15)
    (tmp_path / "d").mkdir()
    a, b = Path(_nifti(tmp_path / "d" / "a.nii.gz", rng, z=4, n=24)), _nifti(tmp_path / "b.nii.gz", rng, z=4, n=24)

    def no_reading(*args, **kw):
        raise AssertionError("a volume was read")

    monkeypatch.setattr(training_data, "read_training_volume", no_reading)
    for k, (args, said) in enumerate([
            (["--data", tmp_path / "d", b, "--heldout-data", a], f"{a}: both held out and trained on (the same file); "
             f"a held-out volume is never trained on: keep it in only one of --heldout-data {a} and --data "
             f"{tmp_path / 'd'}"),  # the folder given, not a file the user never named
            (["--data", b, "--heldout-data", a, "--heldout-data", tmp_path / "d"],
             f"{a}: given twice as held-out data (--heldout-data {a} and --heldout-data {tmp_path / 'd'}); give it "
             "once")]):
        capsys.readouterr()
        out = tmp_path / f"p{k}"
        assert main(["train", *map(str, args), "--output", str(out), *PATCH_RUN]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == f"error: {said}" and "Traceback" not in err, err
        assert not out.exists()


def _refused_in_one_line(tmp_path, capsys, cases):
    """Each (train's ARGS, the refusal): exit 2, the refusal its last line, no traceback, nothing written."""
    from pipelines.cli import main

    for k, (args, said) in enumerate(cases):
        capsys.readouterr()
        out = tmp_path / f"p{k}"
        assert main(["train", *args, "--output", str(out), *PATCH_RUN]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == f"error: {said}" and "Traceback" not in err, err
        assert not out.exists()


def test_a_copy_of_a_registered_scan_held_out_and_trained_on_is_refused_both_ways(tmp_path, capsys, monkeypatch):
    """A registered scan's record (its provenance: the file's SHA-256, its cache path) had no voxels' SHA-256, so a
    copy of it given with --heldout-data while --dataset trains on it, or trained on with --data while
    --heldout-dataset scores it, was accepted: its loss was not held out. read_volumes now records the voxels'
    SHA-256 of a registered scan too, and both are refused in one line naming it and the fix. (The stand-ins' bytes
    are not the registry's checksums: a converted copy, found by its voxels after reading; a byte copy is refused
    before, test_a_byte_copy_of_a_registered_scan_held_out_and_trained_on_is_refused_before_any_volume_is_read.)"""
    import shutil

    from pipelines import datasets

    rng = np.random.default_rng(13)
    files = {n: Path(_nifti(tmp_path / f"{n}.nii.gz", rng, z=4, n=24)) for n in ("ct_head", "ct_lung2")}
    monkeypatch.setattr(datasets, "path", lambda name, cache_dir=None: files[name])
    for n in files:
        shutil.copy(files[n], tmp_path / f"copy_{n}.nii.gz")
    other = _nifti(tmp_path / "other.nii.gz", rng, z=4, n=24)
    cases = [(["--dataset", "ct_head", "--heldout-data", str(tmp_path / "copy_ct_head.nii.gz")],
              f"{tmp_path / 'copy_ct_head.nii.gz'}: both held out and trained on (the same voxels as the training "
              "volume ct_head); a held-out volume is never trained on: keep it in only one of --heldout-data "
              f"{tmp_path / 'copy_ct_head.nii.gz'} and --dataset ct_head"),
             (["--data", other, str(tmp_path / "copy_ct_lung2.nii.gz"), "--heldout-dataset", "ct_lung2"],
              f"ct_lung2: both held out and trained on (the same voxels as the training volume "
              f"{tmp_path / 'copy_ct_lung2.nii.gz'}); a held-out volume is never trained on: keep it in only one "
              f"of --heldout-dataset ct_lung2 and --data {tmp_path / 'copy_ct_lung2.nii.gz'}")]
    _refused_in_one_line(tmp_path, capsys, cases)


def test_a_resume_with_heldout_data_of_a_run_that_held_out_training_slices_says_so_in_words():
    """A unet run with --heldout-fraction records heldout_slices; a --resume with --heldout-data (no such field)
    was refused as "heldout slices None now, the run had 3", the raw field and value; it is worded as the others."""
    from medrecon.priors.train import _data_difference

    vol = {"sha256": "a" * 64, "pixel_spacing_mm": 1.0}
    run = {"n_volumes": 1, "volumes": [vol], "heldout_slices": 3}
    now = {"n_volumes": 1, "volumes": [vol], "heldout_volumes": [{"voxels_sha256": "b" * 64}]}
    said = _data_difference(json.dumps(run), json.dumps(now), ["t.nii"], ["t.nii"])
    assert said == "held-out slices of the training data: none now, the run had 3"
    assert _data_difference(json.dumps(now | {"heldout_slices": 2}), json.dumps(run), ["t.nii"], ["t.nii"]) == \
        "held-out volumes: none now, the run had 1"  # (the other way: the run's held-out volumes are missed first)


def test_a_registered_scan_held_out_twice_through_test_names_the_options_given(tmp_path, capsys, monkeypatch):
    """--heldout-dataset test --heldout-dataset ct_lung2 holds ct_lung2 out twice; the refusal said "give it once"
    though the user named it once: it now names both options as given."""
    from medrecon.priors import training_data
    from pipelines import datasets
    from pipelines.cli import main

    rng = np.random.default_rng(16)
    train = _nifti(tmp_path / "train.nii.gz", rng, z=4, n=24)
    monkeypatch.setattr(datasets, "path", lambda name, cache_dir=None: tmp_path / f"{name}.nii.gz")
    monkeypatch.setattr(training_data, "read_training_volume", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("a volume was read")))
    out = tmp_path / "p"
    assert main(["train", "--data", train, "--heldout-dataset", "test", "--heldout-dataset", "ct_lung2",
                 "--output", str(out), *PATCH_RUN]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "error: ct_lung2: given twice as held-out data (--heldout-dataset test and " \
        "--heldout-dataset ct_lung2); give it once", err
    assert not out.exists()


def test_a_resume_names_the_runs_heldout_file_and_a_registered_scan_by_its_name():
    """A resume whose held-out volume's voxels differ said only "held-out volume 1: its voxels differ": it now names
    the run's file; and the checkpoint's heldout_paths named a registered scan by its data-cache path: its name."""
    from types import SimpleNamespace

    from medrecon.priors.train import _data_difference, _Trainer

    vol = {"sha256": "a" * 64, "pixel_spacing_mm": 1.0}
    run = {"n_volumes": 1, "volumes": [vol], "heldout_volumes": [{"path": "/d/val.nii", "voxels_sha256": "b" * 64}]}
    now = {**run, "heldout_volumes": [{"path": "/d/val.nii", "voxels_sha256": "c" * 64}]}
    said = _data_difference(json.dumps(run), json.dumps(now), ["t.nii"], ["t.nii"], ["/d/val.nii"])
    assert said == "held-out volume 1: its voxels differ (SHA-256); the run held out /d/val.nii"
    held = [{"name": "ct_lung2", "path": "/cache/ct_lung2/lung.nii.gz", "sha256": "d" * 64},
            {"path": "/d/val.nii", "voxels_sha256": "b" * 64}]
    trainer = SimpleNamespace(data=SimpleNamespace(description={"heldout_volumes": held}))
    assert _Trainer._heldout_names(trainer) == ["ct_lung2", "/d/val.nii"]


def test_a_resume_on_a_registered_scan_whose_voxels_read_otherwise_is_accepted(tmp_path, capsys, monkeypatch):
    """A registered scan's record carries the file's SHA-256 and its voxels' (for the held-out overlap check); the
    resume compared both, so a reader that changed a voxel made a --dataset run refuse to resume on the very same
    file. The file's checksum identifies it; the voxels' is no longer compared for such a record."""
    from medrecon.priors import training_data
    from pipelines import datasets
    from pipelines.cli import main

    name = datasets.names("train", "ct")[0]
    rng = np.random.default_rng(17)
    scan = _nifti(tmp_path / "scan.nii.gz", rng, z=6, n=24)
    held = _nifti(tmp_path / "held.nii.gz", rng, z=6, n=24)  # held-out data: the record carries the voxels' too
    monkeypatch.setattr(datasets, "path", lambda n, cache_dir=None: scan)
    out = tmp_path / "p"
    run = ["train", "--dataset", name, "--heldout-data", str(held), "--output", str(out), *PATCH_RUN]
    assert main([*run, "--steps", "2", "--checkpoint-every", "1"]) == 0
    vols = load_prior(out).card["training"]["data"]["volumes"]
    assert vols[0]["name"] == name and vols[0]["sha256"] and vols[0]["voxels_sha256"]
    read = training_data.voxels_sha256  # another reader's voxels of the registered scan (the held-out one's alike)
    monkeypatch.setattr(training_data, "voxels_sha256",
                        lambda vol: "0" * 64 if read(vol) == vols[0]["voxels_sha256"] else read(vol))
    capsys.readouterr()
    assert main([*run, "--steps", "3", "--resume"]) == 0, capsys.readouterr().err


def test_a_registered_scan_is_hashed_by_its_voxels_only_with_held_out_data(tmp_path, monkeypatch):
    """Only the held-out overlap check uses a registered scan's voxels' SHA-256: without held-out data train does
    not hash its voxels, nor records it (the file's SHA-256 identifies it); with held-out data it records it."""
    from medrecon.priors import training_data
    from pipelines import datasets
    from pipelines.cli import main

    name = datasets.names("train", "ct")[0]
    rng = np.random.default_rng(19)
    scan = _nifti(tmp_path / "scan.nii.gz", rng, z=6, n=24)
    held = _nifti(tmp_path / "held.nii.gz", rng, z=6, n=24)
    monkeypatch.setattr(datasets, "path", lambda n, cache_dir=None: scan)
    read, hashed = training_data.voxels_sha256, []
    monkeypatch.setattr(training_data, "voxels_sha256", lambda vol: hashed.append(vol) or read(vol))
    assert main(["train", "--dataset", name, "--output", str(tmp_path / "a"), *PATCH_RUN]) == 0
    vols = load_prior(tmp_path / "a").card["training"]["data"]["volumes"]
    assert hashed == [] and vols[0]["name"] == name and vols[0]["sha256"] and "voxels_sha256" not in vols[0]
    assert main(["train", "--dataset", name, "--heldout-data", str(held), "--output", str(tmp_path / "b"),
                 *PATCH_RUN]) == 0
    data = load_prior(tmp_path / "b").card["training"]["data"]
    assert len(hashed) == 2 and data["volumes"][0]["voxels_sha256"] == read(training_data.read_training_volume(scan))
    assert data["heldout_volumes"][0]["voxels_sha256"] == read(training_data.read_training_volume(held))


def test_a_file_of_ones_own_is_hashed_once_in_a_run(tmp_path, monkeypatch):
    """The overlap refusal before reading (_found_records: a file's SHA-256 where a registered scan is held out) and
    the held-out copy warning while reading (datasets.held_out_copy) share the run's digests: each file is hashed
    once, not once by each."""
    from medrecon.io import common
    from pipelines import datasets
    from pipelines.cli import main

    file_sha256 = common.file_sha256
    rng = np.random.default_rng(20)
    own = Path(_nifti(tmp_path / "own.nii.gz", rng, z=4, n=24)).resolve()
    reg = _nifti(tmp_path / "reg.nii.gz", rng, z=4, n=24)
    monkeypatch.setattr(datasets, "path", lambda name, cache_dir=None: reg)
    hashed = []
    for module in (common, datasets):  # however it is reached
        monkeypatch.setattr(module, "file_sha256", lambda f: hashed.append(Path(f).resolve()) or file_sha256(f))
    held = datasets.names("test", "ct")[0]
    assert main(["train", "--data", str(own), "--heldout-dataset", held, "--output", str(tmp_path / "p"),
                 *PATCH_RUN]) == 0
    assert hashed.count(own) == 1, hashed


def test_a_byte_copy_of_a_registered_scan_held_out_and_trained_on_is_refused_before_any_volume_is_read(
        tmp_path, capsys, monkeypatch):
    """A --data byte copy of a registered scan that --heldout-dataset scores (or a --heldout-data one of a --dataset
    scan) was warned of while reading (held_out_copy) and refused only after every volume was read, by its voxels;
    its file's SHA-256, which the registered scan's record carries, is known before: refused before reading."""
    import dataclasses
    import shutil

    from medrecon.io.common import file_sha256
    from medrecon.priors import training_data
    from pipelines import datasets

    rng = np.random.default_rng(18)
    files = {n: Path(_nifti(tmp_path / f"{n}.nii.gz", rng, z=4, n=24)) for n in ("ct_lung1", "ct_lung2")}
    monkeypatch.setattr(datasets, "path", lambda name, cache_dir=None: files[name])
    for n, f in files.items():  # the registry's checksum of the stand-in
        monkeypatch.setitem(datasets.SCANS, n, dataclasses.replace(datasets.SCANS[n], sha256=file_sha256(f)))
        shutil.copy(f, tmp_path / f"copy_{n}.nii.gz")
    other = _nifti(tmp_path / "other.nii.gz", rng, z=4, n=24)

    def no_reading(*args, **kw):
        raise AssertionError("a volume was read")

    monkeypatch.setattr(training_data, "read_training_volume", no_reading)
    lung1, lung = tmp_path / "copy_ct_lung1.nii.gz", tmp_path / "copy_ct_lung2.nii.gz"
    cases = [(["--dataset", "ct_lung1", "--heldout-data", str(lung1)],
              f"{lung1}: both held out and trained on (the same bytes as the training volume ct_lung1); a held-out "
              f"volume is never trained on: keep it in only one of --heldout-data {lung1} and --dataset ct_lung1"),
             (["--data", other, str(lung), "--heldout-dataset", "ct_lung2"],
              f"ct_lung2: both held out and trained on (the same bytes as the training volume {lung}); a held-out "
              f"volume is never trained on: keep it in only one of --heldout-dataset ct_lung2 and --data {lung}")]
    _refused_in_one_line(tmp_path, capsys, cases)


@pytest.mark.parametrize("damage", ["cut", "empty", "text", "other"])
def test_resume_from_a_damaged_training_state_is_one_line_naming_it(data, tmp_path, damage):
    """A state.pt cut short (a full disk, a copy cut off), emptied, overwritten or holding something else ended
    `--resume` in torch.load's traceback (or click's bare 'Aborted!' for an empty file); now one line naming the
    file, what is wrong and how to go on, the prior it exported left as it was."""
    train, _ = data
    opts = TrainOptions(image_size=16, channels=(8, 16), steps=2, batch_size=4, checkpoint_every=0, sample_every=0)
    out = train_prior(train, tmp_path / "p", opts, progress=False)
    state = out / "checkpoints" / "state.pt"
    whole = state.read_bytes()
    if damage == "other":
        torch.save([1, 2], state)
    else:
        state.write_bytes({"cut": whole[:3000], "empty": b"", "text": b"not a checkpoint\n"}[damage])
    weights = (out / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(InputError) as e:
        train_prior(train, out, replace(opts, steps=4), resume=True, progress=False)
    said = str(e.value)
    assert said.startswith(f"{state}: ") and "\n" not in said and f"--init-from {out}" in said
    assert ("not a training state" if damage == "other" else "unreadable") in said
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() == weights


def test_an_output_that_is_in_or_holds_the_training_data_is_refused_before_anything_is_written(tmp_path, capsys,
                                                                                             monkeypatch):
    """`--output` the --data folder, a folder inside it, or the cached folder of a registered scan trained on
    (`--dataset`) trained and wrote the prior among the scans; now refused in one line naming the input, as every
    other command's output is (medrecon.io.atomic.check_not_input), and nothing is written there."""
    from pipelines import datasets
    from pipelines.cli import main

    rng = np.random.default_rng(3)
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(nib.Nifti1Image(phantom_volume(rng, z=4, n=24).transpose(2, 1, 0), np.diag([-1.0, -1.0, 2.0, 1.0])),
             scans / "v.nii.gz")
    cached = tmp_path / "cache" / "ct_lung1"
    cached.mkdir(parents=True)
    (cached / "lung1_image.nrrd").write_bytes((scans / "v.nii.gz").read_bytes())
    monkeypatch.setenv("MEDRECON_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "path", lambda name, cache_dir=None: cached / "lung1_image.nrrd")
    run = ["--image-size", "16", "--channels", "8,16", "--steps", "1", "--batch-size", "2", "--sample-every", "-1",
           "--device", "cpu", "--no-progress"]
    for given, out in ((["--data", str(scans)], scans), (["--data", str(scans)], scans / "prior"),
                       (["--dataset", "ct_lung1"], cached / "prior")):
        assert main(["train", *given, "--output", str(out), *run]) == 2
        err = capsys.readouterr().err
        assert f"refusing to write {out}: it is, contains or lies inside the input" in err and "Traceback" not in err
    assert sorted(p.name for p in scans.iterdir()) == ["v.nii.gz"]
    assert sorted(p.name for p in cached.iterdir()) == ["lung1_image.nrrd"]


def test_an_output_that_cannot_be_made_is_one_line_before_the_data_are_read(tmp_path, capsys, monkeypatch):
    """`--output FILE/sub` (a file where a folder must be) ended, after every volume was read, in mkdir's
    NotADirectoryError traceback; now one line naming the file, before the data are read (here they do not even
    exist). A folder the check cannot see is unwritable (a read-only file system) is one line too, from mkdir."""
    from medrecon.priors import train as train_module
    from pipelines.cli import main

    (tmp_path / "f").write_text("a file")
    missing = ["train", "--data", str(tmp_path / "missing"), *PATCH_RUN, "--output"]
    assert main([*missing, str(tmp_path / "f" / "sub" / "p")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'f'} is a file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

    def read_only(self, *a, **k):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(Path, "mkdir", read_only)
    rng = np.random.default_rng(2)
    with pytest.raises(InputError, match="p: cannot be made .Read-only file system.; choose another --output"):
        train_prior(prepare_slices([phantom_volume(rng, z=4)], CT, 16, modality="ct"), tmp_path / "p",
                    TrainOptions(image_size=16, channels=(8, 16), steps=1, batch_size=2, sample_every=0),
                    progress=False)


def test_a_training_volume_given_twice_is_refused_naming_it_and_both_options(tmp_path, capsys):
    """The same file given twice (twice over, or as a file and within its folder, or through a link) or a copy of
    its voxels trained twice over, weighing it double, and a unet's held-out last slices were then slices of a
    volume trained on; now refused in one line naming the volume and both options, as held-out data given twice
    is (the file before the data are read, the voxels after)."""
    from pipelines.cli import main

    rng = np.random.default_rng(9)
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(phantom_volume(rng, z=4, n=24).transpose(2, 1, 0), np.diag([-1.0, -1.0, 2.0, 1.0])),
                 scans / f"{name}.nii.gz")
    (tmp_path / "copy.nii.gz").write_bytes((scans / "a.nii.gz").read_bytes())
    (tmp_path / "link").symlink_to(scans)
    a = scans / "a.nii.gz"
    run = ["--image-size", "16", "--channels", "8,16", "--steps", "1", "--batch-size", "2", "--sample-every", "-1",
           "--device", "cpu", "--no-progress"]
    for data, said in (([a, a], f"{a}: given twice as training data (--data {a} and --data {a})"),
                       ([scans, a], f"{a}: given twice as training data (--data {scans} and --data {a})"),
                       ([tmp_path / "link", scans], f"{a}: given twice as training data (--data {tmp_path / 'link'} "
                                                    f"and --data {scans})"),
                       ([a, tmp_path / "copy.nii.gz"], f"{tmp_path / 'copy.nii.gz'} (the same voxels as {a}): given "
                                                       "twice as training data")):
        out = tmp_path / "p"
        assert main(["train", "--data", *map(str, data), "--output", str(out), *run]) == 2
        err = capsys.readouterr().err
        assert said in err and "give it once" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    assert main(["train", "--data", str(scans), "--output", str(tmp_path / "p"), *run]) == 0


def test_a_fine_tune_reads_its_init_from_prior_once(tmp_path, monkeypatch):
    """--init-from is read before the data (its errors first); the trainer then loaded it a second time (the
    weights read and the network built twice). Now the one loaded prior starts the network."""
    from medrecon.priors import loader
    from pipelines.cli import main

    rng = np.random.default_rng(4)
    nib.save(nib.Nifti1Image(phantom_volume(rng, z=6, n=24).transpose(2, 1, 0), np.diag([-1.0, -1.0, 2.0, 1.0])),
             tmp_path / "v.nii.gz")
    run = ["train", "--data", str(tmp_path / "v.nii.gz"), "--image-size", "16", "--channels", "8,16",
           "--batch-size", "2", "--steps", "1", "--sample-every", "0", "--checkpoint-every", "0", "--device", "cpu",
           "--no-progress", "--output"]
    assert main([*run, str(tmp_path / "p")]) == 0
    loads = []
    real = loader.load_prior
    monkeypatch.setattr(loader, "load_prior", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    monkeypatch.setattr("medrecon.priors.load_prior", loader.load_prior)
    assert main([*run, str(tmp_path / "q"), "--init-from", str(tmp_path / "p")]) == 0
    assert loads == [str(tmp_path / "p")]


def test_an_init_from_that_is_no_prior_is_told_before_the_data_are_read(tmp_path, capsys):
    """`--init-from` a path that does not exist or a folder without a model card was told only once every volume
    had been read (minutes for many); now the loader's own one line comes first (here the data do not even exist)."""
    from pipelines.cli import main

    (tmp_path / "notes").mkdir()
    missing = ["train", "--data", str(tmp_path / "missing"), *PATCH_RUN, "--output", str(tmp_path / "p"),
               "--init-from"]
    assert main([*missing, str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such file or folder (give a prior folder" in capsys.readouterr().err
    assert main([*missing, str(tmp_path / "notes")]) == 2
    assert "model_card.yaml: model card not found" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_registered_scans_name_given_as_a_data_path_says_how_it_is_named(tmp_path, capsys, monkeypatch):
    """`--dataset ct_lung1 ct_abdomen` gives ct_abdomen as a path of --data's, which was refused as a missing file
    (NIfTI, NRRD, ...) without a word of --dataset; now the line says how a registered scan is named. A file or
    folder of that name, where there is one, is still data."""
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    run = ["train", "--dataset", "ct_lung1", "ct_abdomen", "--output", str(tmp_path / "p"), *PATCH_RUN]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "ct_abdomen: no such file or folder; the registered scan ct_abdomen is trained on with --dataset " \
           "ct_abdomen (one name per --dataset)" in err and not (tmp_path / "p").exists()
