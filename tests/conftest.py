import pytest
import torch

from edge.arch import ARCHS

# every registered (adapter, model_type): a new architecture is tested by being registered
CASES = [(name, mt) for name, arch in ARCHS.items() for mt in arch.model_types]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
