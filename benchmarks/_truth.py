"""The benchmarks' float64 Sinkhorn truth (row-blocked for large M) and the error measure.

Independent of sigma_kernels on purpose; tests/test_benchmarks.py checks it against the NumPy
truth of tests/truth.py.
"""
import math

import torch


def float64_sinkhorn(row_scores, m, k, epsilon, n_iters, chunk=2048):
    """Log-domain Sinkhorn (docs/sinkhorn.md) in float64, row block by row block (memory O(chunk·K)).

    row_scores(i0, i1) -> float64 (i1-i0, K) scores of those rows. Returns (u (M,), v (K,)),
    Q_ik = M·exp(S_ik/ε + u_i + v_k). Independent of sigma_kernels on purpose: it is the truth.
    """
    inv_eps = 1.0 / epsilon
    log_m, log_k = math.log(m), math.log(k)
    blocks = [(i0, min(i0 + chunk, m)) for i0 in range(0, m, chunk)]
    u = None
    v = None
    for _ in range(n_iters):
        parts = []
        for i0, i1 in blocks:
            s = row_scores(i0, i1) * inv_eps
            if u is not None:
                s += u[i0:i1, None]
            parts.append(torch.logsumexp(s, dim=0))
        v = -log_k - torch.logsumexp(torch.stack(parts), dim=0)
        u_parts = [-log_m - torch.logsumexp(row_scores(i0, i1) * inv_eps + v, dim=1) for i0, i1 in blocks]
        u = torch.cat(u_parts)
    return u, v


def float64_sinkhorn_stored(s64, epsilon, n_iters):
    """`float64_sinkhorn` for a stored float64 S (M, K): the same (u, v), faster.

    When the exponents span at most 200 ((max S − min S)/ε ≤ 200), it iterates in the exp
    domain on the shifted kernel G = exp((S − max S)/ε), two float64 mat-vecs per iteration,
    with scalings that stay within about e^±200 (no over/underflow in float64); otherwise it runs
    the log-domain loop.
    """
    m, k = s64.shape
    smin, smax = float(s64.min()), float(s64.max())
    if (smax - smin) / epsilon > 200:
        return float64_sinkhorn(lambda i0, i1: s64[i0:i1], m, k, epsilon, n_iters)
    kernel = (s64 - smax).div_(epsilon).exp_()  # G, entries in [exp(-200), 1]
    # a_i = exp(u_i), b_k = exp(v_k + max S/ε):  b = 1/(K·Gᵀa),  a = 1/(M·G b);  u = 0 at the start
    a = torch.ones(m, dtype=torch.float64, device=s64.device)
    b = None
    for _ in range(n_iters):
        b = 1.0 / (k * (kernel.T @ a))
        a = 1.0 / (m * (kernel @ b))
    return torch.log(a), torch.log(b) - smax / epsilon


def max_abs_error(blocks):
    """Max |a - b| over an iterable of (a, b) pairs; NaN if any entry is not finite."""
    worst = 0.0
    for a, b in blocks:
        d = (a.double() - b.double()).abs()
        if not bool(torch.isfinite(d).all()):
            return float("nan")
        worst = max(worst, float(d.max()))
    return worst
