import pytest
import torch

# One torch thread for the whole suite: on small CI machines (2 cores) torch's intra-op threads fight
# ASTRA's and numpy's and can be many times slower than one thread; results do not depend on it.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _config_home(tmp_path_factory):
    """The suite's own configuration folder: de-identification makes its key there, not in the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
    mp.delenv("MEDRECON_DEID_KEY", raising=False)
    yield
    mp.undo()
