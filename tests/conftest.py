"""Test-session setup. Without a CUDA device the Triton kernels run under the interpreter on
CPU tensors; TRITON_INTERPRET must be set before triton decorates any kernel."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

# Interpreted kernels are slow per call: no deadlines, few examples by default.
settings.register_profile("default", deadline=None, max_examples=25, print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=300, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def threads():
    """Restores the thread count a test changes (torch.set_num_threads is process-wide)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread(threads):
    """One torch thread for the test (restored after it): the pipeline tests' tiny models are
    dominated by threading overhead on a shared 2-core machine."""
    torch.set_num_threads(1)


@pytest.fixture
def tree_bytes():
    """root -> {path relative to root: bytes} of every file under root (generated sets compared byte for byte)."""
    def read(root):
        out = {}
        for d, _, names in os.walk(root):
            for n in names:
                with open(os.path.join(d, n), "rb") as f:
                    out[os.path.relpath(os.path.join(d, n), root)] = f.read()
        return out
    return read
