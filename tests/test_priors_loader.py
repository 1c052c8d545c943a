"""load_prior: recognition by content, model cards, safety, and clear errors for bad inputs."""
import argparse
import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from shared_fixtures import fixtures_root

from medrecon.errors import InputError
from medrecon.priors import load_prior, read_model_card, write_model_card

NCSN = fixtures_root() / "ncsnpp"
ADM = fixtures_root() / "adm"
pytestmark = pytest.mark.skipif(not (NCSN.is_dir() and ADM.is_dir()), reason="shared fixtures not present")




@pytest.fixture(scope="module")
def ncsn_golden():
    return torch.load(NCSN / "tiny_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def adm_state():
    return torch.load(ADM / "tiny_checkpoint.pt", weights_only=True)


def rel_err(a, b):
    return ((a - b).abs().flatten(1).max(1).values / b.abs().flatten(1).max(1).values)


def test_truncated_file(tmp_path):
    f = tmp_path / "cut.pt"
    data = (ADM / "tiny_checkpoint.pt").read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.pt: cannot read the checkpoint.*truncated or corrupt"):
        load_prior(f)
    g = tmp_path / "garbage.pth"
    g.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(InputError, match=r"garbage\.pth: .*truncated or corrupt"):
        load_prior(g)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        load_prior(tmp_path / "nope.pt")


def test_pickle_needing_file_is_refused_unless_trusted(tmp_path, ncsn_golden):
    ck = torch.load(NCSN / "tiny_checkpoint.pth", weights_only=True)
    ck["config"] = argparse.Namespace(nf=16)  # a Python object: needs full pickle
    f = tmp_path / "pickled.pth"
    torch.save(ck, f)
    card = {"config": ncsn_golden["config"]}
    with pytest.raises(InputError, match=r"pickled\.pth: .*arbitrary code.*allow_unsafe_pickle=True"):
        load_prior(f, card=card)
    p = load_prior(f, card=card, allow_unsafe_pickle=True)
    out = p.network(ncsn_golden["x"], ncsn_golden["labels"])
    assert rel_err(out, ncsn_golden["model_output"]).max() <= 1e-5


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path, adm_state):
    sd = dict(adm_state)
    sd["extra.weight"] = torch.zeros(3)
    sd["input_blocks.1.0.extra"] = torch.zeros(3)
    del sd["middle_block.1.qkv.weight"]
    f = tmp_path / "broken.pt"
    torch.save(sd, f)
    with pytest.raises(InputError) as e:
        load_prior(f, card={"image_size": 32})
    msg = str(e.value)
    assert "broken.pt" in msg and "1 missing keys [middle_block.1.qkv.weight]" in msg
    assert "2 unexpected keys [extra.weight, input_blocks.1.0.extra]" in msg


def test_ncsnpp_config_mismatch_is_reported(tmp_path, ncsn_golden):
    cfg = {**ncsn_golden["config"]["model"], "image_size": 32, "num_res_blocks": 2}
    with pytest.raises(InputError, match=r"tiny_checkpoint.pth: .*does not fit NCSN\+\+ .*num_res_blocks=2"):
        load_prior(NCSN / "tiny_checkpoint.pth", card={"config": cfg})
    # without a card the AAPM-256 defaults are tried: shapes differ, the message points to the card
    with pytest.raises(InputError, match=r"tiny_checkpoint.pth: .*(EMA|missing|shapes).*model_card.yaml"):
        load_prior(NCSN / "tiny_checkpoint.pth")


def test_unrecognised_content(tmp_path):
    f = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, f)
    with pytest.raises(InputError, match=r"other.pt: not a recognised prior checkpoint.*encoder.weight"):
        load_prior(f)


def test_a_volume_or_a_training_state_given_as_the_prior_says_what_it_is(tmp_path):
    """A NIfTI given as prior.path was 'truncated or corrupt: download it again'; medrecon train's own
    checkpoints/state.pt was 'a score_sde checkpoint ... give the right config in model_card.yaml'."""
    import nibabel as nib
    import numpy as np
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), tmp_path / "t2.nii.gz")
    with pytest.raises(InputError, match="t2.nii.gz: this is an image volume, not a prior"):
        load_prior(tmp_path / "t2.nii.gz")
    (tmp_path / "IM0001").write_bytes(bytes(128) + b"DICM" + bytes(64))  # a DICOM file without a suffix
    with pytest.raises(InputError, match="IM0001: this is an image volume, not a prior"):
        load_prior(tmp_path / "IM0001")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "ema": {"shadow_params": []}, "options": {}, "unet_config": {}, "step": 3},
               tmp_path / "run" / "checkpoints" / "state.pt")
    with pytest.raises(InputError, match=r"resumable state, not a prior; give the training run's output folder "
                                         rf"\(prior.path={tmp_path / 'run'}\)"):
        load_prior(tmp_path / "run" / "checkpoints" / "state.pt")


def test_non_finite_weights(tmp_path, adm_state):
    sd = dict(adm_state)
    sd["out.2.bias"] = sd["out.2.bias"].clone()
    sd["out.2.bias"][0] = float("nan")
    f = tmp_path / "nan.pt"
    torch.save(sd, f)
    with pytest.raises(InputError, match=r"nan.pt: 1 weight tensors contain NaN or Inf \[out.2.bias\]"):
        load_prior(f, card={"image_size": 32})


def test_card_beside_the_checkpoint_and_sha256(tmp_path):
    f = tmp_path / "AAPM_tiny.pt"
    shutil.copy(ADM / "tiny_checkpoint.pt", f)
    write_model_card(tmp_path, {"architecture": "adm", "weights": "AAPM_tiny.pt", "image_size": 32,
                                "intensity": {"physical_min": -1000, "physical_max": 1000, "unit": "HU"}})
    for path in (f, tmp_path):  # the file itself, or the folder holding card + file
        p = load_prior(path)
        assert p.image_size == 32 and p.name == "AAPM_tiny"
        assert p.intensity.physical_min == -1000 and p.intensity.model_max == 1.0
        assert p.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    write_model_card(tmp_path, {"architecture": "ncsnpp", "weights": "AAPM_tiny.pt"})
    with pytest.raises(InputError, match="card says architecture 'ncsnpp' but the file is a adm checkpoint"):
        load_prior(f)
    write_model_card(tmp_path, {"architecture": "adm", "weights": "AAPM_tiny.pt", "image_size": 32,
                                "sha256": "0" * 64})  # a card stating other weights than the file's
    with pytest.raises(InputError, match=r"AAPM_tiny.pt: SHA-256 \w+\.\.\. is not the 0000000000000000\.\.\. its card"):
        load_prior(tmp_path)


def test_model_card_round_trip_and_errors(tmp_path):
    card = {"name": "x", "architecture": "adm", "config": {"channel_mult": (1, 2)}, "path": tmp_path}
    f = write_model_card(tmp_path, card)
    back = read_model_card(f)
    assert back["config"]["channel_mult"] == [1, 2] and back["path"] == str(tmp_path)
    assert back["format"].startswith("medrecon-model-card")
    f.write_text("a: [unclosed")
    with pytest.raises(InputError, match="model_card.yaml: not valid YAML"):
        read_model_card(tmp_path)
    f.write_text("architecture: transformer\n")
    with pytest.raises(InputError, match="unknown architecture 'transformer'"):
        read_model_card(f)
    with pytest.raises(InputError, match="model card not found"):
        load_prior(tmp_path / "sub" if (tmp_path / "sub").mkdir() is None else None)


def test_public_defaults_come_from_the_caller(tmp_path):
    """The core knows the formats, not their data: the AAPM CT card comes from pipelines.prior_cards."""
    from pipelines.prior_cards import PUBLIC_CARDS, load_prior_for

    bare = load_prior(ADM / "tiny_checkpoint.pt", card={"image_size": 32})
    assert bare.intensity is None and "modality" not in bare.card
    p = load_prior_for(ADM / "tiny_checkpoint.pt", "cpu", card={"image_size": 32})
    assert p.intensity.unit == "HU" and p.intensity.physical_min == -1024 and p.card["modality"] == "ct"
    assert p.card["assumptions"] == PUBLIC_CARDS["adm"]["assumptions"] and p.image_size == 32
    # a card beside the checkpoint wins key by key over the defaults
    f = tmp_path / "m.pt"
    shutil.copy(ADM / "tiny_checkpoint.pt", f)
    write_model_card(tmp_path, {"architecture": "adm", "weights": "m.pt", "image_size": 32, "modality": "mri",
                                "intensity": {"physical_min": 0, "physical_max": 1, "unit": "magnitude"}})
    q = load_prior_for(f)
    assert q.card["modality"] == "mri" and q.intensity.unit == "magnitude" and q.intensity.physical_max == 1


def test_bundled_names_load_where_a_folder_does():
    """``bundled:NAME`` is accepted wherever a prior is loaded (the benchmarks pass it straight through)."""
    from medrecon.bundled import BUNDLED_PRIORS
    from pipelines.prior_cards import load_prior_for

    by_name, by_folder = load_prior_for("bundled:mri_patch"), load_prior_for(BUNDLED_PRIORS / "mri_patch")
    assert by_name.card["modality"] == by_folder.card["modality"] == "mri"
    assert by_name.weights_path == by_folder.weights_path and by_name._sha256 == by_folder._sha256
    with pytest.raises(InputError, match="no such bundled prior; the bundled priors are bundled:ct, bundled:ct_patch"):
        load_prior_for("bundled:no_such_prior")
    with pytest.raises(InputError, match="no such bundled prior"):  # not a way out of the package's priors
        load_prior_for("bundled:../priors/ct")


def test_a_card_that_does_not_fit_its_network_or_lacks_keys_is_one_line(tmp_path):
    """A patch network under a whole-slice card failed at its first denoising call; an intensity map without
    its window or a weights entry that is no file name were tracebacks."""
    from medrecon.bundled import BUNDLED_PRIORS
    folder = tmp_path / "p"
    shutil.copytree(BUNDLED_PRIORS / "ct_patch", folder)
    card = read_model_card(folder / "model_card.yaml")
    for change, message in (({"architecture": "diffusers-unet2d"}, "takes 1 input channel, this one 3"),
                            ({"intensity": {"physical_min": -1000.0}}, "intensity needs physical_max"),
                            ({"weights": 5}, "weights: give the weights file's name"),
                            # a hand-written window: 0 / 0 divided by zero, a string was a TypeError, an inverted or
                            # NaN window or model_min == model_max loaded and mapped -1000 HU to +1 or to NaN
                            ({"intensity": {**card["intensity"], "physical_max": -1000.0}}, "physical_min < physical_max"),
                            ({"intensity": {**card["intensity"], "physical_min": 1000.0, "physical_max": -1000.0}},
                             "physical_min < physical_max"),
                            ({"intensity": {**card["intensity"], "physical_min": "-1000 HU"}}, "give numbers"),
                            ({"intensity": {**card["intensity"], "model_min": 1.0}}, "model_min < model_max"),
                            ({"intensity": {**card["intensity"], "physical_min": float("nan")}}, "give finite numbers")):
        write_model_card(folder, {**card, **change})
        with pytest.raises(InputError, match=message):
            load_prior(folder)


def test_device_names_are_resolved_with_clear_errors(monkeypatch):
    from medrecon.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu" and resolve_device(None).type == "cpu"
    for name in ("cuda", "cuda:1", "CUDA:0"):
        with pytest.raises(InputError, match=f"device '{name}': CUDA is not available"):
            resolve_device(name)
    for name in ("gpu", "cuda:x"):
        with pytest.raises(InputError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(name)
    with pytest.raises(InputError, match="CUDA is not available"):
        load_prior(ADM / "tiny_checkpoint.pt", card={"image_size": 32}, device="cuda")


def test_cuda_peak_survives_the_chunk_trial_reset_and_is_per_device(monkeypatch):
    """``auto_chunk_size`` restarts the CUDA peak counter for its trial (carry=True): the run's peak so far must
    still be reported; a plain reset (the start of a series) forgets it. Counters simulated per device index."""
    from medrecon import device as dev

    peak = {0: 0, 1: 0}
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: peak[i])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda i: peak.__setitem__(i, 0))
    monkeypatch.setattr(dev, "_carried_peak", {})
    cuda1 = torch.device("cuda", 1)
    dev.reset_cuda_peak(cuda1)
    peak[1] = 900                          # the warm start, say
    dev.reset_cuda_peak(cuda1, carry=True)  # the chunk trial
    peak[1] = 300
    peak[0] = 5000                         # another GPU's work does not count
    assert dev.cuda_peak_bytes(cuda1) == 900
    peak[1] = 1200
    assert dev.cuda_peak_bytes(cuda1) == 1200
    dev.reset_cuda_peak(cuda1)              # the next series
    assert dev.cuda_peak_bytes(cuda1) == 0


def test_free_cuda_memory_is_read_for_the_current_gpu_when_the_device_names_no_index(monkeypatch):
    """``auto_chunk_size`` given a device that names no index (``cuda``) raised ValueError on the GPU (torch 2.11):
    torch's per-process memory fraction takes a GPU index, not 'cuda'. The free memory is now read by index: the
    current GPU's for 'cuda', within the process's share of the card. Counters simulated per index, strict as
    torch's."""
    from medrecon import device as dev

    GiB = 2 ** 30
    free = {0: 70 * GiB, 1: 20 * GiB}
    reserved, allocated, share = {0: 0, 1: 6 * GiB}, {0: 0, 1: 4 * GiB}, {0: 1.0, 1: 1.0}

    def by_index(table):
        def read(i):
            if not isinstance(i, int):
                raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{i}")
            return table[i]
        return read

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", by_index({i: (f, 80 * GiB) for i, f in free.items()}))
    monkeypatch.setattr(torch.cuda, "memory_reserved", by_index(reserved))
    monkeypatch.setattr(torch.cuda, "memory_allocated", by_index(allocated))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", by_index(share), raising=False)
    assert dev.cuda_free_bytes("cuda") == 22 * GiB            # GPU 1: 20 free + 2 cached and unused
    assert dev.cuda_free_bytes(torch.device("cuda", 0)) == 70 * GiB
    share[1] = 0.25                                            # a Ray worker packed at a quarter of the card
    assert dev.cuda_free_bytes("cuda") == 16 * GiB            # 20 GiB share less the 4 it holds


def test_a_public_checkpoint_without_its_card_is_refused_by_the_pipelines():
    """medrecon.priors.load_prior gives a public checkpoint no intensity map (the AAPM card is the pipelines');
    handed to Problem.build it ran with the config's -1000..1000 HU -> [-1, 1] window, a network trained on
    [0, 1], without a word."""
    from pipelines.phantoms import ct_phantom
    from pipelines.prior_cards import load_prior_for
    from pipelines.problem import Problem
    from pipelines.tasks import prepare_config

    net = torch.load(NCSN / "tiny_golden.pt", weights_only=True)["config"]
    plain = load_prior(NCSN / "tiny_checkpoint.pth", card={"config": net})
    carded = load_prior_for(NCSN / "tiny_checkpoint.pth", card={"config": net})
    cfg = prepare_config("sparse_view_ct_8", ["solver.steps=2", "ct.image_size=32", "ct.pixel_size=1.5"])
    vol = ct_phantom((2, 32, 32), 1000, pixel_size_mm=1.5)
    with pytest.raises(InputError, match="public checkpoint without an intensity map.*load_prior_for"):
        Problem.build(cfg, vol, prior=plain, resample=True)
    assert Problem.build(cfg, vol, prior=carded, resample=True).intensity.model_min == 0.0
