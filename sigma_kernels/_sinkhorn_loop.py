"""The log-domain Sinkhorn-Knopp iteration, written once over any backend's primitives.

See docs/sinkhorn.md. Potentials u (M,), v (K,) start at 0; each of the n_iters iterations is
    v_k = -log K - LSE_i(S_ik/ε + u_i)        (prototype marginal M/K)
    u_i = -log M - LSE_k(S_ik/ε + v_k)        (token marginal 1)
and Q_ik = M·exp(S_ik/ε + u_i + v_k). The backends fuse each u-update with the prototype
sums for the next v (`row_step`), so each iteration reads S once.
"""
import math

import torch

from .rules import POTENTIAL_LIMIT


def column_marginal_error(v, col, log_k):
    """Σ_k |Σ_i P_ik - 1/K| for the transport plan P = Q/M (0 when balanced, at most 2).

    `col` is LSE_i(S_ik/ε + u_i) for the current u, so Σ_i P_ik = exp(v_k + col_k).
    """
    return (torch.exp(v + col) - math.exp(-log_k)).abs().sum()


def run_sinkhorn(col_lse, row_step, operands, m, k, inv_eps, n_iters, *, tol=0.0, check_every=5,
                 reduce_col_lse=None, dtype=torch.float32, device=None):
    """Iterate Sinkhorn over primitives `col_lse(*operands, u, inv_eps)` and
    `row_step(*operands, v, inv_eps, log_m)`.

    m is the global token count (the sum over ranks under data parallelism) and
    `reduce_col_lse` merges per-rank column LSEs into global ones (identity on one device).
    With tol > 0 the loop stops early once the column marginal error is <= tol, checked every
    `check_every` iterations (each check is one host sync).
    Returns (u (M_local,), v (K,), marginal_error ()), all in `dtype`.
    """
    reduce = reduce_col_lse if reduce_col_lse is not None else (lambda c: c)
    log_m, log_k = math.log(m), math.log(k)
    m_local = operands[0].shape[0]
    u = torch.zeros(m_local, dtype=dtype, device=device if device is not None else operands[0].device)
    col = reduce(col_lse(*operands, u, inv_eps))
    v = None
    for it in range(1, n_iters + 1):
        v = -log_k - col
        u, col = row_step(*operands, v, inv_eps, log_m)
        col = reduce(col)
        if tol > 0 and it % check_every == 0 and it < n_iters:
            if column_marginal_error(v, col, log_k).item() <= tol:
                break
    return finish_potentials(u, v, column_marginal_error(v, col, log_k), inv_eps)


def finish_potentials(u, v, err, inv_eps):
    """The non-finite policy and the range guard on solved potentials (O(M + K), no M×K pass).

    Non-finite in -> NaN out: if any potential is non-finite (a NaN or +inf score, a row or
    column without a finite score, or S/ε overflowing), u, v and the error all become NaN, on
    every backend. Finite potentials too large for the compute dtype to resolve the logits
    (|S|/ε too large: ε too small or scores too wide) raise a ValueError naming ε (on CPU; on
    accelerators a device-side assert, no host sync).
    """
    finite = torch.isfinite(u).all() & torch.isfinite(v).all()
    nan = torch.full((), float("nan"), dtype=u.dtype, device=u.device)
    u, v, err = torch.where(finite, u, nan), torch.where(finite, v, nan), torch.where(finite, err, nan)
    limit = POTENTIAL_LIMIT.get(u.dtype, POTENTIAL_LIMIT[torch.float32])
    reach = v.abs().amax() + (u.abs().amax() if u.numel() else 0.0)
    reach = torch.where(finite, reach, torch.zeros((), dtype=u.dtype, device=u.device))
    eps = 1.0 / inv_eps
    hint = (f"Sinkhorn with epsilon={eps:g} is beyond what {str(u.dtype).replace('torch.', '')} resolves: the "
            f"potentials reach max|u| + max|v| = {{}} > {limit:g} (roughly |S|/epsilon > {limit / 3:.0f}), so the "
            f"plan would be wrong; use a larger epsilon, scores of a smaller range, or float64 scores")
    if u.device.type == "cpu":
        if reach.item() > limit:
            raise ValueError(hint.format(f"{reach.item():.3g}"))
    else:
        torch._assert_async(reach <= limit, hint.format("too much"))
    return u, v, err
