"""Primitives built from this backend's kernels plus a few plain torch ops (no kernel of their own).

- row_logsumexp: the fused row step with v = 0 and log_m = 0 gives u_i = −LSE_k(S_ik·scale).
- *_assign_entropy: the labels from the assign kernels; the row entropies in row blocks of torch
  ops (for the streaming form, each block's scores from one matmul), so the extra memory stays
  O(block·K). A fused entropy kernel is a GPU follow-up (docs/performance.md).
"""
import torch

from .sinkhorn import sinkhorn_assign, sinkhorn_row_step
from .streaming import streaming_assign

_ENTROPY_ROWS = 4096


def row_logsumexp(scores, scale):
    zeros = torch.zeros(scores.shape[1], dtype=torch.float32, device=scores.device)
    return -sinkhorn_row_step(scores, zeros, scale, 0.0)[0]


def _entropy_sum(blocks, v, inv_eps):
    total = torch.zeros((), dtype=torch.float32, device=v.device)
    for s in blocks:
        log_q = torch.log_softmax(s.float() * inv_eps + v.float(), dim=1)
        total = total - torch.special.xlogy(log_q.exp(), log_q.exp()).sum()
    return total


def sinkhorn_assign_entropy(scores, v, inv_eps):
    m = scores.shape[0]
    blocks = (scores[i:i + _ENTROPY_ROWS] for i in range(0, m, _ENTROPY_ROWS))
    return sinkhorn_assign(scores, v, inv_eps), _entropy_sum(blocks, v, inv_eps)


def streaming_assign_entropy(x, c, v, inv_eps):
    m = x.shape[0]
    cf = c.float()
    blocks = (x[i:i + _ENTROPY_ROWS].float() @ cf.T for i in range(0, m, _ENTROPY_ROWS))
    return streaming_assign(x, c, v, inv_eps), _entropy_sum(blocks, v, inv_eps)
