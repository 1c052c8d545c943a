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
