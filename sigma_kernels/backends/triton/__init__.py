"""Triton backend (CUDA tensors; CPU tensors under TRITON_INTERPRET=1).

    sinkhorn.py       Sinkhorn on a materialised S: one-read fused row step with split-M column
                      partials, column LSE, hard assignment (Q never written), the plan Q
    streaming.py      the same with S = x·cᵀ recomputed tile by tile by tl.dot (O(M + K) memory)
    cross_entropy.py  fused linear + cross-entropy, hard / soft / on-the-fly Sinkhorn targets,
                      deterministic recomputing backward
    swapped.py        the swapped soft-target products of two branches (stored or recomputed S_a,
                      recomputed S_b): both P − Q' from the same tiles, times c and transposed times x
    _common.py        block sizes, the score-tile loader, argument checks

tools/triton_compile_check.py (repository root) compiles every launch configuration for a GPU
target without a GPU.

Everything accumulates in fp32; inputs may be fp32, fp16 or bf16. Triton 3.6-3.8, no block
pointers, no libdevice.
"""
import os

import torch

DEVICE_TYPES = ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def unavailable_reason():
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)"
    return None


if unavailable_reason() is None:
    from .cross_entropy import (  # noqa: E402,F401
        linear_cross_entropy_backward,
        linear_cross_entropy_forward,
        sinkhorn_target_cross_entropy_backward,
        sinkhorn_target_cross_entropy_forward,
    )
    from .derived import row_logsumexp, sinkhorn_assign_entropy, streaming_assign_entropy  # noqa: E402,F401
    from .sinkhorn import sinkhorn_assign, sinkhorn_col_lse, sinkhorn_plan, sinkhorn_row_step  # noqa: E402,F401
    from .streaming import streaming_assign, streaming_col_lse, streaming_row_step  # noqa: E402,F401
    from .swapped import streaming_swapped_softmax_products, swapped_softmax_products  # noqa: E402,F401
