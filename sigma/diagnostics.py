"""Health metrics of a Sinkhorn clustering step, as tensors (no host syncs).

For one branch with scores S (M, K) and Sinkhorn prototype potentials v (K,), the assignment of
token i is Q_i· = softmax_k(S_ik/ε + v_k) (after the final token step, see docs/sinkhorn.md) and its hard
label argmax_k Q_ik. Reported:
  entropy            mean_i H(Q_i·) in nats (0 = one-hot targets, ln K = uniform)
  usage_perplexity   exp H(p), p_k = fraction of tokens whose hard label is k (K when all are used
                     equally, 1 when every token has the same label)
  unused_prototypes  number of prototypes that are no token's hard label (int64)
Under data parallelism the sums are all-reduced, so the numbers describe the global batch.
"""
import torch

from sigma_kernels.distributed import all_reduce_sum

# Rows per chunk: bounds the temporaries to a few CHUNK_ROWS × K floats, whether the scores are
# stored or recomputed from factors (the streaming loss promises O(M + K) extra memory).
CHUNK_ROWS = 4096


def _accumulate(logits, counts):
    """Σ_i H(softmax(logits_i)) over the rows; adds the rows' argmax histogram into counts."""
    log_q = torch.log_softmax(logits, dim=1)
    entropy_sum = -(log_q.exp() * log_q).sum()
    labels = torch.argmax(logits, dim=1)
    counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))
    return entropy_sum


@torch.no_grad()
def assignment_stats(v, inv_eps, *, scores=None, x=None, prototypes=None, m_global=None, process_group=None):
    """Metrics of Q = softmax_k(S/ε + v) for scores given as `scores` (M, K) or as normalised
    factors `x` (M, D) and `prototypes` (K, D) (S = x·prototypesᵀ, recomputed in row chunks).

    m_global: total token count over ranks (defaults to the local M). Returns a dict of 0-d
    tensors: entropy, usage_perplexity (float32/64) and unused_prototypes (int64).
    """
    k = v.shape[0]
    dt = v.dtype
    counts = torch.zeros(k, dtype=dt, device=v.device)
    entropy_sum = torch.zeros((), dtype=dt, device=v.device)
    m_local = scores.shape[0] if scores is not None else x.shape[0]
    c = prototypes.to(dt) if scores is None else None
    for start in range(0, m_local, CHUNK_ROWS):
        if scores is not None:
            logits = scores[start:start + CHUNK_ROWS].to(dt) * inv_eps + v
        else:
            logits = x[start:start + CHUNK_ROWS].to(dt) @ c.T * inv_eps + v
        entropy_sum = entropy_sum + _accumulate(logits, counts)
    counts = all_reduce_sum(counts, process_group)
    entropy_sum = all_reduce_sum(entropy_sum, process_group)
    m = m_global if m_global is not None else m_local
    p = counts / m
    return {
        "entropy": entropy_sum / m,
        "usage_perplexity": torch.exp(-torch.special.xlogy(p, p).sum()),
        "unused_prototypes": (counts == 0).sum(),
    }


@torch.no_grad()
def feature_collapse_stats(features, max_rows=4096):
    """Collapse measures of a set of features (..., D) (flattened to rows; at most `max_rows`
    first rows are used, to bound the SVD). Returns 0-d float32 tensors:
      std    mean over dimensions of the per-dimension standard deviation across rows of the
             L2-normalised features (0 when every row is the same direction)
      erank  effective rank of the centred rows: exp of the entropy of their singular values
             normalised to sum 1 (Roy & Vetterli, 2007); 1 = one direction, D = isotropic.
    """
    x = features.detach().reshape(-1, features.shape[-1])[:max_rows].float()
    if x.shape[0] < 2:
        nan = torch.full((), float("nan"), device=x.device)
        return {"std": nan, "erank": nan}
    z = torch.nn.functional.normalize(x, dim=1)
    std = z.std(dim=0).mean()
    s = torch.linalg.svdvals(x - x.mean(dim=0, keepdim=True))
    p = s / s.sum().clamp_min(torch.finfo(s.dtype).tiny)
    erank = torch.exp(-torch.special.xlogy(p, p).sum())
    return {"std": std, "erank": erank}
