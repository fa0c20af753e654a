"""Health metrics of a Sinkhorn clustering step, as tensors (no host syncs).

For one branch with scores S (M, K) and Sinkhorn prototype potentials v (K,), the assignment of
token i is Q_i· = softmax_k(S_ik/ε + v_k) (the rows of the plan after the final token step, see
docs/performance.md) and its hard label argmax_k Q_ik. Reported:
  entropy            mean_i H(Q_i·) in nats (0 = one-hot targets, ln K = uniform)
  usage_perplexity   exp H(p), p_k = fraction of tokens whose hard label is k (K when all are used
                     equally, 1 when every token has the same label)
  unused_prototypes  number of prototypes that are no token's hard label (int64)
Under data parallelism the sums are all-reduced, so the numbers describe the global batch.

The inputs come from what the loss computes anyway: the hard labels and the summed row
entropies are produced by the same pass over the scores that labels the tokens
(`sinkhorn_assign_from_potentials(..., return_entropy=True)`), so the metrics cost O(M + K) here
and no extra pass over an M×K matrix.
"""
import torch

from sigma_kernels.distributed import all_reduce_sum


@torch.no_grad()
def assignment_stats(labels, entropy_sum, num_prototypes, *, m_global=None, process_group=None):
    """Metrics from hard labels (M,) int64 and Σ_i H(Q_i·) (0-d float) of this rank's tokens.

    m_global: total token count over ranks (defaults to the local M). Returns a dict of 0-d
    tensors: entropy, usage_perplexity (dtype of entropy_sum) and unused_prototypes (int64).
    """
    dt = entropy_sum.dtype
    # index_add_ rather than bincount: bincount's length depends on the data, which torch.compile
    # (fullgraph) cannot trace; the int64 counts are the same
    counts = torch.zeros(num_prototypes, dtype=torch.int64, device=labels.device)
    counts = counts.index_add_(0, labels, torch.ones_like(labels)).to(dt)
    counts = all_reduce_sum(counts, process_group)
    entropy_sum = all_reduce_sum(entropy_sum, process_group)
    m = m_global if m_global is not None else labels.shape[0]
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
    Non-finite features give NaN (never an exception: LAPACK's SVD fails on NaN/inf input).
    """
    x = features.detach().reshape(-1, features.shape[-1])[:max_rows].float()
    if x.shape[0] < 2:
        nan = torch.full((), float("nan"), device=x.device)
        return {"std": nan, "erank": nan}
    z = torch.nn.functional.normalize(x, dim=1)
    std = z.std(dim=0).mean()
    centred = x - x.mean(dim=0, keepdim=True)
    # decided on the device (no host sync): the SVD sees zeros in place of non-finite entries, and
    # the result is replaced by NaN when there were any
    finite = torch.isfinite(centred)
    s = torch.linalg.svdvals(torch.where(finite, centred, torch.zeros((), device=x.device)))
    p = s / s.sum().clamp_min(torch.finfo(s.dtype).tiny)
    erank = torch.exp(-torch.special.xlogy(p, p).sum())
    erank = torch.where(finite.all(), erank, torch.full_like(erank, float("nan")))
    return {"std": std, "erank": erank}
