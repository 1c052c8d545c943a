"""medrecon's own prior format (diffusers UNet2DModel + safetensors + model card, EDM preconditioning)."""
import re

import pytest
import torch

from medrecon.errors import InputError
from medrecon.priors import EDMPrior, IntensityMap, load_prior, schedule_from_dict
from medrecon.priors.network import edm_coefficients
from medrecon.priors.unet import EDM_SCHEDULE
from medrecon.priors.unet import WEIGHTS_NAME, build_unet, save_unet_prior, unet_config




CARD = {"name": "tiny", "parameterization": "edm", "config": {"sigma_data": 0.5}, "schedule": EDM_SCHEDULE,
        "image_size": 16, "modality": "ct",
        "intensity": {"physical_min": -1000, "physical_max": 1000, "model_min": -1, "model_max": 1, "unit": "HU"}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    net = build_unet(unet_config(16, (16, 32)))
    with torch.no_grad():  # diffusers zero-initialises nothing important, but make every output weight matter
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = save_unet_prior(tmp_path_factory.mktemp("prior"), net, CARD)
    direct = EDMPrior(net, CARD, schedule_from_dict(EDM_SCHEDULE), IntensityMap.from_dict(CARD["intensity"]), 16)
    return folder, direct


def test_save_load_identical_outputs(saved):
    folder, direct = saved
    loaded = load_prior(folder)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.01, 0.3, 2.0, 60.0])
    assert torch.equal(loaded.denoise(x, sigma), direct.denoise(x, sigma))
    assert loaded.card["architecture"] == "diffusers-unet2d" and loaded.image_size == 16
    assert loaded.intensity.to_model(1000.0) == 1.0 and loaded.schedule.sigma_max == 80.0


def test_edm_denoiser_limits(saved):
    """c_skip -> 1, c_out -> 0 as sigma -> 0: D(x, tiny sigma) ~ x whatever the network says."""
    _, direct = saved
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert (direct.denoise(x, torch.full((2,), 1e-4)) - x).abs().max() < 1e-3
    c_skip, c_out, c_in, _ = edm_coefficients(torch.tensor([0.5]), 0.5)  # sigma = sigma_data
    assert torch.allclose(c_skip, torch.tensor([0.5])) and torch.allclose(c_in, torch.tensor([2 ** 0.5]))


def test_corrupt_and_missing_files(saved, tmp_path):
    folder, _ = saved
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    w = bad / WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(InputError, match=r"diffusion_pytorch_model.safetensors: cannot read the weights.*truncated"):
        load_prior(bad)
    (bad / "config.json").unlink()
    with pytest.raises(InputError, match=r"config.json: missing"):
        load_prior(bad)


def test_wrong_size_network_config_is_reported_naming_config_json(saved, tmp_path):
    """#13.19: the shapes come from config.json, so the message points there, not at model_card.yaml."""
    folder, _ = saved
    other = save_unet_prior(tmp_path / "other", build_unet(unet_config(16, (16, 48))), CARD)
    (other / WEIGHTS_NAME).write_bytes((folder / WEIGHTS_NAME).read_bytes())
    with pytest.raises(InputError, match=r"tensors have other shapes than the UNet2DModel") as e:
        load_prior(other)
    assert re.search(r"Fix the config in .*config\.json", str(e.value))


def test_image_size_checks(saved):
    _, direct = saved
    with pytest.raises(ValueError, match="trained at 16x16"):
        direct.denoise(torch.zeros(1, 1, 32, 32), torch.ones(1))
    with pytest.raises(ValueError, match="divisible by 2"):
        unet_config(30, (16, 32, 32))


class Foreign:  # a harmless class: still needs code to load
    pass


class Malicious:
    def __reduce__(self):
        import os
        return (os.system, ("echo never run",))


@pytest.mark.parametrize("obj,name", [({"w": Foreign()}, "Foreign"), (Malicious(), "system")])
def test_pickled_objects_are_refused_with_the_right_diagnosis(tmp_path, obj, name):
    """#13.11: not called truncated or corrupt; no --allow-unsafe-pickle option is recommended (there is none)."""
    torch.save(obj, f := tmp_path / "model.pt")
    with pytest.raises(InputError) as e:
        load_prior(f)
    msg = str(e.value)
    assert "needs code to load" in msg and name in msg and "allow_unsafe_pickle=True" in msg
    assert "truncated" not in msg and "--allow-unsafe-pickle" not in msg
