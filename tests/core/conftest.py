import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks run fastest on one thread; on a shared, busy machine more threads only wait on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
