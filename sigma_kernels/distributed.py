"""Sinkhorn over data-parallel ranks: the equipartition is over the global batch (docs/distributed.md).

Every rank holds its own tokens (rows of S); all ranks hold the same prototypes (columns).
The prototype-side sums — the column log-sum-exp over tokens, LSE_i(S_ik/ε + u_i) — are merged
across ranks at every iteration; the token side (u) stays local. Each rank thus gets exactly the
u rows of its own tokens and the v of a single-process solve on the concatenated batch, up to
floating-point reassociation of the LSE.

Costs per solve: one all-reduce of the token count (and one host sync to read it: the Sinkhorn
update takes log M as a number) plus one all-gather of a (K,) vector per iteration.
Without a process group of size > 1 these functions are the single-device public ops.
"""
import torch

from . import rules
from ._sinkhorn_loop import run_sinkhorn
from .backends import get_backend, resolve_backend
from .rules import compute_dtype
from .sinkhorn import SinkhornResult, normalize_rows, sinkhorn_solve, sinkhorn_streaming


def _dist():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def world_size(process_group=None):
    """Ranks in `process_group` (the default group when None); 1 when torch.distributed is off."""
    dist = _dist()
    if dist is None:
        if process_group is not None:
            raise RuntimeError("a process_group was given but torch.distributed is not initialised")
        return 1
    return dist.get_world_size(process_group)


def is_distributed(process_group=None):
    """True when Sinkhorn must be solved across ranks (world size > 1)."""
    return world_size(process_group) > 1


def global_count(n_local, device, process_group=None):
    """Σ over ranks of the local count `n_local` (an int), as an int. One all-reduce + host sync."""
    dist = _dist()
    if dist is None or dist.get_world_size(process_group) == 1:
        return int(n_local)
    t = torch.tensor([n_local], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=process_group)
    return int(t.item())


def all_reduce_logsumexp(x, process_group=None):
    """log Σ_ranks exp(x) elementwise, identical on every rank.

    All-gathers the per-rank vectors and reduces them in rank order on each rank, so every rank
    computes the same bits (the ranks must agree on v, and on early stopping).
    """
    dist = _dist()
    if dist is None or dist.get_world_size(process_group) == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(parts, x.contiguous(), group=process_group)
    return torch.logsumexp(torch.stack(parts), dim=0)


def all_reduce_sum(x, process_group=None):
    """Σ over ranks of x (returns a new tensor; x is left untouched)."""
    dist = _dist()
    if dist is None or dist.get_world_size(process_group) == 1:
        return x
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=process_group)
    return out


@torch.no_grad()
def sinkhorn_solve_distributed(scores, epsilon=0.05, n_iters=3, *, tol=None, check_every=5, backend="auto",
                               process_group=None, global_rows=None):
    """`sinkhorn_solve` on the row-concatenation of every rank's `scores` (M_r, K).

    global_rows: Σ_r M_r if the caller already knows it (saves an all-reduce and a host sync).
    Returns this rank's SinkhornResult: u (M_r,), the global v (K,) and the global column
    marginal error, all equal on every rank except u.
    """
    if not is_distributed(process_group):
        return sinkhorn_solve(scores, epsilon, n_iters, tol=tol, check_every=check_every, backend=backend)
    rules.check_matrix("scores", scores)
    inv_eps, n_iters, tol, check_every = rules.check_sinkhorn_args(epsilon, n_iters, tol, check_every)
    name = resolve_backend(backend, scores.device, scores.dtype)
    b = get_backend(name)
    s = scores.detach()
    m = global_rows if global_rows is not None else global_count(s.shape[0], s.device, process_group)
    return SinkhornResult(*run_sinkhorn(
        b.sinkhorn_col_lse, b.sinkhorn_row_step, (s,), m, s.shape[1], inv_eps, n_iters, tol=tol,
        check_every=check_every, reduce_col_lse=lambda c: all_reduce_logsumexp(c, process_group),
        dtype=compute_dtype(s)))


@torch.no_grad()
def sinkhorn_streaming_distributed(z, prototypes, epsilon=0.05, n_iters=3, *, normalize=True, tol=None,
                                   check_every=5, backend="auto", process_group=None, global_rows=None):
    """`sinkhorn_streaming` (S = normalize(z)·prototypesᵀ, never stored by the fused backends) on
    the concatenation of every rank's z (M_r, D). prototypes (K, D) must be equal on all ranks;
    global_rows as in `sinkhorn_solve_distributed`."""
    if not is_distributed(process_group):
        return sinkhorn_streaming(z, prototypes, epsilon, n_iters, normalize=normalize, tol=tol,
                                  check_every=check_every, backend=backend)
    inv_eps, n_iters, tol, check_every = rules.check_sinkhorn_args(epsilon, n_iters, tol, check_every)
    rules.check_features("z", z, "prototypes", prototypes)
    dt = compute_dtype(z, prototypes)
    x = normalize_rows(z.detach()) if normalize else z.detach().to(dt)
    c = prototypes.detach().to(dt)
    b = get_backend(resolve_backend(backend, z.device, dt))
    m = global_rows if global_rows is not None else global_count(x.shape[0], x.device, process_group)
    return SinkhornResult(*run_sinkhorn(
        b.streaming_col_lse, b.streaming_row_step, (x, c), m, c.shape[0], inv_eps, n_iters, tol=tol,
        check_every=check_every, reduce_col_lse=lambda col: all_reduce_logsumexp(col, process_group),
        dtype=dt))
