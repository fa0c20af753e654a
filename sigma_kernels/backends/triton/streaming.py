"""Streaming ("flash") Sinkhorn: S = x·cᵀ is recomputed tile by tile with tl.dot (fp32
accumulation) and never stored; extra memory is O(M + K) plus the (programs, K) split-M partials.

Each iteration is two sweeps over the score tiles: a row sweep (one program per row block, online
LSE over the K tiles -> new u) and a split-M column sweep with that u (the same kernels as the
materialised path in sinkhorn.py, with STREAMING=True). Fusing them into one sweep would need every
row's final LSE before its column contribution is known, i.e. keeping the BLOCK_M x K score strip
on chip; recomputing it costs M·K·D·2 tensor-core FLOP instead, which is the cheaper side here.
"""
from ._common import on_tensor_device
from .sinkhorn import col_lse, row_reduce


@on_tensor_device
def streaming_col_lse(x, c, u, inv_eps):
    """LSE_i(x_i·c_k·inv_eps + u_i) -> (K,) fp32; x (M, D), c (K, D) any of fp32/fp16/bf16."""
    return col_lse((x, c), u, inv_eps)


@on_tensor_device
def streaming_row_step(x, c, v, inv_eps, log_m):
    """(u (M,), col (K,)) fp32: u_i = -log_m - LSE_k(x_i·c_k·inv_eps + v_k), col for that u."""
    u = row_reduce((x, c), v, inv_eps, log_m, assign=False)
    return u, col_lse((x, c), u, inv_eps)


@on_tensor_device
def streaming_assign(x, c, v, inv_eps):
    """Hard labels of x_i·c_k·inv_eps + v_k -> int64 (M,) (near-ties to the lowest index)."""
    return row_reduce((x, c), v, inv_eps, 0.0, assign=True)
