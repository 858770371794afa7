import os

import pytest
import torch

from edge.arch import ARCHS

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2` on 2 cores: one thread per worker, in it and in the
    os.environ["OMP_NUM_THREADS"] = "1"      # processes it starts (the CLI, the profiler's measuring side), instead
    torch.set_num_threads(1)                 # of two workers' thread pools of 2 each spinning against each other

# every registered (adapter, model_type): a new architecture is tested by being registered
CASES = [(name, mt) for name, arch in ARCHS.items() for mt in arch.model_types]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
