"""CUDA backend: the compiled extension's plain CUDA kernels (sources in csrc/cuda).

Only `sinkhorn_col_lse` and `sinkhorn_row_step` have CUDA kernels (a block per row for the row
LSE, split-M column partials merged per column; two reads of S per row step); every other
primitive falls back to the reference backend, as the registry does for any backend, and
`backend_info()["cuda"]["fallbacks"]` lists them. It is reachable only by name
(`backend="cuda"`): "auto" picks Triton on CUDA tensors, the faster path there, and would pick
this one only once it is measured faster on a GPU. Fp32 accumulation, fp32 results.
"""
import torch

# The extension's ops dispatch on the tensors' device: the cpu backend's wrappers serve CUDA tensors too.
from .cpu import sinkhorn_col_lse, sinkhorn_row_step  # noqa: F401

DEVICE_TYPES = ("cuda",)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def unavailable_reason():
    try:
        from sigma_kernels import _C
    except ImportError as exc:
        return f"the compiled extension is not built ({exc}); reinstall with `pip install --no-build-isolation -e .`"
    if not getattr(_C, "with_cuda", False):
        return ("the compiled extension was built without its CUDA part (no nvcc / CUDA_HOME at build time, "
                "or SIGMA_NO_CUDA=1)")
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    return None
