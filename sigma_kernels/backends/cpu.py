"""CPU backend: the compiled extension `sigma_kernels._C` (sources in csrc/)."""
import torch

DEVICE_TYPES = ("cpu",)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def unavailable_reason():
    try:
        from sigma_kernels import _C  # noqa: F401  (registers torch.ops.sigma_kernels_ext)
    except ImportError as exc:
        return f"the compiled extension is not built ({exc}); reinstall with `pip install --no-build-isolation -e .`"
    return None
