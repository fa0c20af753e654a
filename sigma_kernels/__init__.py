"""sigma_kernels: fused Sinkhorn and prototype cross-entropy ops (nothing SIGMA-specific).

Backends: "reference" (pure PyTorch, always there), "cpu" (compiled extension from csrc/),
"triton" (CUDA, or CPU under TRITON_INTERPRET=1), "cuda" (the extension's CUDA kernels, by name
only). Pick with `backend=`, with the environment variable SIGMA_KERNELS_BACKEND, or let "auto"
choose by device.
"""
from . import cross_entropy as _cross_entropy
from . import rules
from . import sinkhorn as _sinkhorn
from .backends import BackendUnavailableError, available_backends, backend_info, get_backend, resolve_backend

# The public functions are listed once, in each module's __all__.
from .cross_entropy import *  # noqa: E402,F403
from .sinkhorn import *  # noqa: E402,F403

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "available_backends", "backend_info", "get_backend", "resolve_backend",
           "rules", *_sinkhorn.__all__, *_cross_entropy.__all__]
