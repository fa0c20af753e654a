"""The Sinkhorn family's custom ops (public functions in `sinkhorn.py`): solves, plan, labels.

No autograd: Sinkhorn targets are constants of the loss. Each op has a fake kernel, so
torch.compile traces through it without running it.
"""
import math
from typing import Tuple

import torch
from torch import Tensor

from ._registration import custom_op, vec
from ._sinkhorn_loop import finish_potentials, run_sinkhorn
from .backends import get_backend
from .rules import compute_dtype


@custom_op("sinkhorn_solve")
def sinkhorn_solve(scores: Tensor, inv_eps: float, n_iters: int, tol: float, check_every: int,
                   backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    b = get_backend(backend)
    if b.sinkhorn_solve_dense is not None:
        u, v, err, _ = b.sinkhorn_solve_dense(scores, inv_eps, n_iters, tol, check_every, False)
        return finish_potentials(u, v, err, inv_eps)
    m, k = scores.shape
    return run_sinkhorn(b.sinkhorn_col_lse, b.sinkhorn_row_step, (scores,), m, k, inv_eps, n_iters,
                        tol=tol, check_every=check_every, dtype=compute_dtype(scores))


@sinkhorn_solve.register_fake
def _(scores, inv_eps, n_iters, tol, check_every, backend):
    dt = compute_dtype(scores)
    return vec(scores, scores.shape[0], dt), vec(scores, scores.shape[1], dt), scores.new_empty((), dtype=dt)


@custom_op("sinkhorn_solve_streaming")
def sinkhorn_solve_streaming(x: Tensor, c: Tensor, inv_eps: float, n_iters: int, tol: float,
                             check_every: int, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    b = get_backend(backend)
    return run_sinkhorn(b.streaming_col_lse, b.streaming_row_step, (x, c), x.shape[0], c.shape[0],
                        inv_eps, n_iters, tol=tol, check_every=check_every, dtype=compute_dtype(x, c))


@sinkhorn_solve_streaming.register_fake
def _(x, c, inv_eps, n_iters, tol, check_every, backend):
    dt = compute_dtype(x, c)
    return vec(x, x.shape[0], dt), vec(x, c.shape[0], dt), x.new_empty((), dtype=dt)


@custom_op("sinkhorn_plan")
def sinkhorn_plan(scores: Tensor, u: Tensor, v: Tensor, inv_eps: float, log_m: float, backend: str) -> Tensor:
    return get_backend(backend).sinkhorn_plan(scores, u, v, inv_eps, log_m)


@sinkhorn_plan.register_fake
def _(scores, u, v, inv_eps, log_m, backend):
    return scores.new_empty(scores.shape, dtype=compute_dtype(scores))


@custom_op("sinkhorn_transport")
def sinkhorn_transport(scores: Tensor, inv_eps: float, n_iters: int, tol: float, check_every: int,
                       backend: str) -> Tensor:
    """The plan Q (M, K) of a solve: one fused call where the backend has one, else solve + plan."""
    b = get_backend(backend)
    if b.sinkhorn_solve_dense is not None:
        u, v, err, plan = b.sinkhorn_solve_dense(scores, inv_eps, n_iters, tol, check_every, True)
        # the same policy as the potentials (docs/numerics.md): non-finite -> a NaN plan, O(K) check
        _, v, _ = finish_potentials(u, v, err, inv_eps)
        # In place on the fresh plan: a torch.where here would allocate (and page-fault) a second M×K
        # tensor, which cost a quarter of the whole solve on the CPU.
        bad = ~torch.isfinite(v).all()
        if plan.device.type == "cpu":
            if bool(bad):  # a host read is free on the CPU
                plan.fill_(float("nan"))
        else:
            plan.masked_fill_(bad, float("nan"))
        return plan
    u, v, _ = sinkhorn_solve(scores, inv_eps, n_iters, tol, check_every, backend)
    return b.sinkhorn_plan(scores, u, v, inv_eps, math.log(scores.shape[0]))


@sinkhorn_transport.register_fake
def _(scores, inv_eps, n_iters, tol, check_every, backend):
    return scores.new_empty(scores.shape, dtype=compute_dtype(scores))


@custom_op("sinkhorn_assign_entropy")
def sinkhorn_assign_entropy(scores: Tensor, v: Tensor, inv_eps: float, backend: str) -> Tuple[Tensor, Tensor]:
    return tuple(get_backend(backend).sinkhorn_assign_entropy(scores, v, inv_eps))


@sinkhorn_assign_entropy.register_fake
def _(scores, v, inv_eps, backend):
    return vec(scores, scores.shape[0], torch.int64), scores.new_empty((), dtype=compute_dtype(scores))


@custom_op("sinkhorn_assign_entropy_streaming")
def sinkhorn_assign_entropy_streaming(x: Tensor, c: Tensor, v: Tensor, inv_eps: float,
                                      backend: str) -> Tuple[Tensor, Tensor]:
    return tuple(get_backend(backend).streaming_assign_entropy(x, c, v, inv_eps))


@sinkhorn_assign_entropy_streaming.register_fake
def _(x, c, v, inv_eps, backend):
    return vec(x, x.shape[0], torch.int64), x.new_empty((), dtype=compute_dtype(x, c))


@custom_op("sinkhorn_assign")
def sinkhorn_assign(scores: Tensor, v: Tensor, inv_eps: float, backend: str) -> Tensor:
    return get_backend(backend).sinkhorn_assign(scores, v, inv_eps)


@sinkhorn_assign.register_fake
def _(scores, v, inv_eps, backend):
    return vec(scores, scores.shape[0], torch.int64)


@custom_op("sinkhorn_assign_streaming")
def sinkhorn_assign_streaming(x: Tensor, c: Tensor, v: Tensor, inv_eps: float, backend: str) -> Tensor:
    return get_backend(backend).streaming_assign(x, c, v, inv_eps)


@sinkhorn_assign_streaming.register_fake
def _(x, c, v, inv_eps, backend):
    return vec(x, x.shape[0], torch.int64)
