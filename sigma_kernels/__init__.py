"""sigma_kernels: fused Sinkhorn and prototype cross-entropy ops (nothing SIGMA-specific).

Backends: "reference" (pure PyTorch, always there), "cpu" (compiled extension from csrc/),
"triton" (CUDA, or CPU under TRITON_INTERPRET=1), "cuda" (the extension's CUDA kernels, by name
only). Pick with `backend=`, with the environment variable SIGMA_KERNELS_BACKEND, or let "auto"
choose by device.
"""
from .backends import BackendUnavailableError, available_backends, backend_info, get_backend, resolve_backend
from .cross_entropy import (
    SoftmaxProducts,
    SwappedProducts,
    TargetedProducts,
    prototype_cross_entropy,
    prototype_cross_entropy_from_products,
    prototype_cross_entropy_sinkhorn,
    prototype_log_softmax,
    prototype_logsumexp,
    prototype_scores,
    prototype_softmax,
    prototype_softmax_products,
    prototype_swapped_products,
)
from .sinkhorn import (
    SinkhornResult,
    normalize_rows,
    sinkhorn,
    sinkhorn_assign,
    sinkhorn_assign_from_potentials,
    sinkhorn_assign_from_potentials_streaming,
    sinkhorn_assign_streaming,
    sinkhorn_potentials,
    sinkhorn_solve,
    sinkhorn_streaming,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "SinkhornResult", "available_backends", "backend_info",
    "get_backend", "normalize_rows", "prototype_log_softmax", "prototype_logsumexp", "prototype_scores",
    "prototype_softmax",
    "resolve_backend", "sinkhorn", "sinkhorn_assign", "sinkhorn_assign_from_potentials",
    "sinkhorn_assign_from_potentials_streaming", "sinkhorn_assign_streaming",
    "sinkhorn_potentials", "sinkhorn_solve", "sinkhorn_streaming", "prototype_cross_entropy",
    "prototype_cross_entropy_sinkhorn", "SoftmaxProducts", "prototype_softmax_products",
    "prototype_cross_entropy_from_products", "SwappedProducts", "TargetedProducts", "prototype_swapped_products",
]
