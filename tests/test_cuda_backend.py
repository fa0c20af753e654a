"""The explicit `cuda` backend (the extension's CUDA kernels): reachable by name only, never by
"auto"; its primitives against the reference on CUDA tensors (skipped without a GPU and an
extension built with its CUDA part)."""
import math

import pytest
import torch

import sigma_kernels as sk
from sigma_kernels.backends import (
    BACKENDS,
    BackendUnavailableError,
    backend_info,
    get_backend,
    is_available,
    resolve_backend,
)


def test_cuda_is_a_named_backend_that_auto_never_picks(monkeypatch):
    assert "cuda" in BACKENDS
    info = backend_info()["cuda"]
    if not info["available"]:
        assert info["reason"]
        with pytest.raises(BackendUnavailableError, match="cuda"):
            get_backend("cuda")
    # even when every backend claims to be available, "auto" maps CUDA tensors to triton (or reference)
    import sigma_kernels.backends as registry
    monkeypatch.setattr(registry, "is_available", lambda name: True)
    for dtype in (torch.float32, torch.float16):
        assert registry._resolve_backend_cached("auto", "cuda:0", dtype, "") == "triton"


needs_cuda = pytest.mark.skipif(not is_available("cuda"),
                                reason=f"cuda backend unavailable: {backend_info()['cuda']['reason']}")


@needs_cuda
@pytest.mark.gpu
def test_cuda_backend_fallbacks_are_listed():
    b = get_backend("cuda")
    assert "sinkhorn_col_lse" not in b.fallbacks and "sinkhorn_row_step" not in b.fallbacks
    assert "sinkhorn_plan" in b.fallbacks


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,k", [(1, 1), (37, 29), (1100, 300)])
def test_cuda_primitives_match_reference(m, k, dtype):
    g = torch.Generator().manual_seed(m + k)
    s = ((torch.rand(m, k, generator=g) * 2 - 1)).to(dtype).cuda()
    u, v = torch.randn(m, generator=g).cuda(), torch.randn(k, generator=g).cuda()
    cuda, ref = get_backend("cuda"), get_backend("reference")
    torch.testing.assert_close(cuda.sinkhorn_col_lse(s, u, 20.0), ref.sinkhorn_col_lse(s, u, 20.0),
                               rtol=2e-6, atol=2e-5)
    for a, b in zip(cuda.sinkhorn_row_step(s, v, 20.0, math.log(m)), ref.sinkhorn_row_step(s, v, 20.0, math.log(m))):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-5)


@needs_cuda
@pytest.mark.gpu
def test_public_sinkhorn_on_the_cuda_backend():
    s = (torch.rand(300, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1).cuda()
    assert resolve_backend("cuda", s.device, s.dtype) == "cuda"
    torch.testing.assert_close(sk.sinkhorn(s, 0.05, 10, backend="cuda"), sk.sinkhorn(s, 0.05, 10, backend="reference"),
                               rtol=1e-5, atol=1e-6)
