"""torch.library custom ops: one per public operation, each taking the concrete backend name.

Each op has a fake (meta) implementation, so torch.compile can trace through it without
running it, and the cross-entropy ops have autograd formulas whose backward is itself a
custom op (the backward recomputes logits tile by tile in the fused backends).
Validation and backend choice happen in the public functions, before these are called.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._sinkhorn_loop import finish_potentials, run_sinkhorn
from .backends import get_backend
from .rules import compute_dtype

_NS = "sigma_kernels"


def _vec(t, n, dtype):
    return t.new_empty((n,), dtype=dtype)


# --- Sinkhorn -----------------------------------------------------------------------------

@torch.library.custom_op(f"{_NS}::sinkhorn_solve", mutates_args=())
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
    return _vec(scores, scores.shape[0], dt), _vec(scores, scores.shape[1], dt), scores.new_empty((), dtype=dt)


@torch.library.custom_op(f"{_NS}::sinkhorn_solve_streaming", mutates_args=())
def sinkhorn_solve_streaming(x: Tensor, c: Tensor, inv_eps: float, n_iters: int, tol: float,
                             check_every: int, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    b = get_backend(backend)
    return run_sinkhorn(b.streaming_col_lse, b.streaming_row_step, (x, c), x.shape[0], c.shape[0],
                        inv_eps, n_iters, tol=tol, check_every=check_every, dtype=compute_dtype(x, c))


@sinkhorn_solve_streaming.register_fake
def _(x, c, inv_eps, n_iters, tol, check_every, backend):
    dt = compute_dtype(x, c)
    return _vec(x, x.shape[0], dt), _vec(x, c.shape[0], dt), x.new_empty((), dtype=dt)


@torch.library.custom_op(f"{_NS}::sinkhorn_plan", mutates_args=())
def sinkhorn_plan(scores: Tensor, u: Tensor, v: Tensor, inv_eps: float, log_m: float, backend: str) -> Tensor:
    return get_backend(backend).sinkhorn_plan(scores, u, v, inv_eps, log_m)


@sinkhorn_plan.register_fake
def _(scores, u, v, inv_eps, log_m, backend):
    return scores.new_empty(scores.shape, dtype=compute_dtype(scores))


@torch.library.custom_op(f"{_NS}::sinkhorn_transport", mutates_args=())
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


@torch.library.custom_op(f"{_NS}::sinkhorn_assign_entropy", mutates_args=())
def sinkhorn_assign_entropy(scores: Tensor, v: Tensor, inv_eps: float, backend: str) -> Tuple[Tensor, Tensor]:
    return tuple(get_backend(backend).sinkhorn_assign_entropy(scores, v, inv_eps))


@sinkhorn_assign_entropy.register_fake
def _(scores, v, inv_eps, backend):
    return _vec(scores, scores.shape[0], torch.int64), scores.new_empty((), dtype=compute_dtype(scores))


@torch.library.custom_op(f"{_NS}::sinkhorn_assign_entropy_streaming", mutates_args=())
def sinkhorn_assign_entropy_streaming(x: Tensor, c: Tensor, v: Tensor, inv_eps: float,
                                      backend: str) -> Tuple[Tensor, Tensor]:
    return tuple(get_backend(backend).streaming_assign_entropy(x, c, v, inv_eps))


@sinkhorn_assign_entropy_streaming.register_fake
def _(x, c, v, inv_eps, backend):
    return _vec(x, x.shape[0], torch.int64), x.new_empty((), dtype=compute_dtype(x, c))


@torch.library.custom_op(f"{_NS}::sinkhorn_assign", mutates_args=())
def sinkhorn_assign(scores: Tensor, v: Tensor, inv_eps: float, backend: str) -> Tensor:
    return get_backend(backend).sinkhorn_assign(scores, v, inv_eps)


@sinkhorn_assign.register_fake
def _(scores, v, inv_eps, backend):
    return _vec(scores, scores.shape[0], torch.int64)


@torch.library.custom_op(f"{_NS}::sinkhorn_assign_streaming", mutates_args=())
def sinkhorn_assign_streaming(x: Tensor, c: Tensor, v: Tensor, inv_eps: float, backend: str) -> Tensor:
    return get_backend(backend).streaming_assign(x, c, v, inv_eps)


@sinkhorn_assign_streaming.register_fake
def _(x, c, v, inv_eps, backend):
    return _vec(x, x.shape[0], torch.int64)


# --- Linear + cross-entropy ---------------------------------------------------------------

@torch.library.custom_op(f"{_NS}::linear_cross_entropy", mutates_args=())
def linear_cross_entropy(x: Tensor, c: Tensor, target: Tensor, scale: float, backend: str) -> Tuple[Tensor, Tensor]:
    return get_backend(backend).linear_cross_entropy_forward(x, c, target, scale)


@linear_cross_entropy.register_fake
def _(x, c, target, scale, backend):
    dt = compute_dtype(x, c)
    return _vec(x, x.shape[0], dt), _vec(x, x.shape[0], dt)


def _grads_or_empty(dx, dc, x, c):
    """Custom ops cannot return None: a gradient not asked for travels as an empty (0,) tensor."""
    return (x.new_empty((0,)) if dx is None else dx), (c.new_empty((0,)) if dc is None else dc)


def _fake_grads(x, c, need_dx, need_dc):
    return _grads_or_empty(torch.empty_like(x) if need_dx else None, torch.empty_like(c) if need_dc else None, x, c)


@torch.library.custom_op(f"{_NS}::linear_cross_entropy_backward", mutates_args=())
def linear_cross_entropy_backward(grad: Tensor, x: Tensor, c: Tensor, target: Tensor, lse: Tensor,
                                  scale: float, need_dx: bool, need_dc: bool, backend: str) -> Tuple[Tensor, Tensor]:
    dx, dc = get_backend(backend).linear_cross_entropy_backward(grad, x, c, target, lse, scale,
                                                                need_dx=need_dx, need_dc=need_dc)
    return _grads_or_empty(dx, dc, x, c)


@linear_cross_entropy_backward.register_fake
def _(grad, x, c, target, lse, scale, need_dx, need_dc, backend):
    return _fake_grads(x, c, need_dx, need_dc)


def _lce_setup(ctx, inputs, output):
    x, c, target, scale, backend = inputs
    ctx.save_for_backward(x, c, target, output[1])
    ctx.scale, ctx.backend = scale, backend


def _lce_backward(ctx, grad_loss, grad_lse):
    x, c, target, lse = ctx.saved_tensors
    need_dx, need_dc = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dc = linear_cross_entropy_backward(grad_loss, x, c, target, lse, ctx.scale, need_dx, need_dc, ctx.backend)
    return (dx if need_dx else None), (dc if need_dc else None), None, None, None


linear_cross_entropy.register_autograd(_lce_backward, setup_context=_lce_setup)


@torch.library.custom_op(f"{_NS}::scores_product", mutates_args=())
def scores_product(x: Tensor, c: Tensor, backend: str) -> Tensor:
    """x·cᵀ (M, K) without autograd, by the backend's `scores_product` where it has one."""
    b = get_backend(backend)
    return b.scores_product(x, c) if b.scores_product is not None else x @ c.T


@scores_product.register_fake
def _(x, c, backend):
    return x.new_empty((x.shape[0], c.shape[0]))


@torch.library.custom_op(f"{_NS}::row_logsumexp", mutates_args=())
def row_logsumexp(scores: Tensor, scale: float, backend: str) -> Tensor:
    return get_backend(backend).row_logsumexp(scores, scale)


@row_logsumexp.register_fake
def _(scores, scale, backend):
    return _vec(scores, scores.shape[0], compute_dtype(scores))


@torch.library.custom_op(f"{_NS}::linear_cross_entropy_backward_stored", mutates_args=())
def linear_cross_entropy_backward_stored(grad: Tensor, scores: Tensor, x: Tensor, c: Tensor, target: Tensor,
                                         lse: Tensor, scale: float, need_dx: bool, need_dc: bool,
                                         backend: str) -> Tuple[Tensor, Tensor]:
    """`linear_cross_entropy_backward` reading the stored scores x·cᵀ where the backend can (no
    M×K×D recomputation), else recomputing them."""
    b = get_backend(backend)
    if b.linear_cross_entropy_backward_stored is not None:
        dx, dc = b.linear_cross_entropy_backward_stored(grad, scores, x, c, target, lse, scale, need_dx=need_dx,
                                                        need_dc=need_dc)
    else:
        dx, dc = b.linear_cross_entropy_backward(grad, x, c, target, lse, scale, need_dx=need_dx, need_dc=need_dc)
    return _grads_or_empty(dx, dc, x, c)


@linear_cross_entropy_backward_stored.register_fake
def _(grad, scores, x, c, target, lse, scale, need_dx, need_dc, backend):
    return _fake_grads(x, c, need_dx, need_dc)


@torch.library.custom_op(f"{_NS}::linear_cross_entropy_given_lse", mutates_args=())
def linear_cross_entropy_given_lse(x: Tensor, c: Tensor, target: Tensor, lse: Tensor, scale: float, backend: str,
                                   scores: Optional[Tensor] = None) -> Tensor:
    """Rows lse_i − scale·x_i·c_{t_i} of the CE against indices, the logits' row LSE given (e.g.
    from stored scores): O(M·D) forward; the backward is the backend's fused one, reading `scores`
    (x·cᵀ, kept until then) instead of recomputing them when given."""
    dt = compute_dtype(x, c)
    return lse.to(dt) - scale * (x.to(dt) * c.to(dt).index_select(0, target)).sum(dim=1)


@linear_cross_entropy_given_lse.register_fake
def _(x, c, target, lse, scale, backend, scores=None):
    return _vec(x, x.shape[0], compute_dtype(x, c))


def _lce_lse_setup(ctx, inputs, output):
    x, c, target, lse, scale, backend, scores = inputs
    ctx.save_for_backward(x, c, target, lse, scores)
    ctx.scale, ctx.backend = scale, backend


def _lce_lse_backward(ctx, grad_rows):
    x, c, target, lse, scores = ctx.saved_tensors
    need_dx, need_dc = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    lse = lse.to(grad_rows.dtype)
    if scores is None:
        dx, dc = linear_cross_entropy_backward(grad_rows, x, c, target, lse, ctx.scale, need_dx, need_dc, ctx.backend)
    else:
        dx, dc = linear_cross_entropy_backward_stored(grad_rows, scores, x, c, target, lse, ctx.scale, need_dx,
                                                      need_dc, ctx.backend)
    return (dx if need_dx else None), (dc if need_dc else None), None, None, None, None, None


linear_cross_entropy_given_lse.register_autograd(_lce_lse_backward, setup_context=_lce_lse_setup)


def _no_double_backward(public_name):
    """An autograd formula for a backward op that refuses, so create_graph=True works and only
    differentiating the gradient again fails, with a message naming the public op."""
    def backward(ctx, *grads):
        raise RuntimeError(f"double backward is not supported by sigma_kernels.{public_name} "
                           f"(its gradient is computed by a fused kernel without an autograd formula)")
    return backward


def _no_setup(ctx, inputs, output):
    pass


linear_cross_entropy_backward.register_autograd(_no_double_backward("prototype_cross_entropy"),
                                                setup_context=_no_setup)
linear_cross_entropy_backward_stored.register_autograd(_no_double_backward("prototype_cross_entropy"),
                                                       setup_context=_no_setup)


@torch.library.custom_op(f"{_NS}::sinkhorn_target_cross_entropy", mutates_args=())
def sinkhorn_target_cross_entropy(x: Tensor, c: Tensor, y: Tensor, cy: Tensor, v: Tensor, inv_eps: float,
                                  scale: float, soft: bool, backend: str) -> Tuple[Tensor, Tensor]:
    return get_backend(backend).sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, inv_eps, scale, soft)


@sinkhorn_target_cross_entropy.register_fake
def _(x, c, y, cy, v, inv_eps, scale, soft, backend):
    dt = compute_dtype(x, c)
    return _vec(x, x.shape[0], dt), _vec(x, x.shape[0], dt)


@torch.library.custom_op(f"{_NS}::sinkhorn_target_cross_entropy_backward", mutates_args=())
def sinkhorn_target_cross_entropy_backward(grad: Tensor, x: Tensor, c: Tensor, y: Tensor, cy: Tensor, v: Tensor,
                                           lse: Tensor, inv_eps: float, scale: float, soft: bool,
                                           need_dx: bool, need_dc: bool, backend: str) -> Tuple[Tensor, Tensor]:
    dx, dc = get_backend(backend).sinkhorn_target_cross_entropy_backward(grad, x, c, y, cy, v, lse, inv_eps, scale,
                                                                         soft, need_dx=need_dx, need_dc=need_dc)
    return _grads_or_empty(dx, dc, x, c)


@sinkhorn_target_cross_entropy_backward.register_fake
def _(grad, x, c, y, cy, v, lse, inv_eps, scale, soft, need_dx, need_dc, backend):
    return _fake_grads(x, c, need_dx, need_dc)


def _stce_setup(ctx, inputs, output):
    x, c, y, cy, v, inv_eps, scale, soft, backend = inputs
    ctx.save_for_backward(x, c, y, cy, v, output[1])
    ctx.args = (inv_eps, scale, soft, backend)


def _stce_backward(ctx, grad_loss, grad_lse):
    x, c, y, cy, v, lse = ctx.saved_tensors
    inv_eps, scale, soft, backend = ctx.args
    need_dx, need_dc = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dc = sinkhorn_target_cross_entropy_backward(grad_loss, x, c, y, cy, v, lse, inv_eps, scale, soft,
                                                    need_dx, need_dc, backend)
    return (dx if need_dx else None), (dc if need_dc else None), None, None, None, None, None, None, None


sinkhorn_target_cross_entropy.register_autograd(_stce_backward, setup_context=_stce_setup)
sinkhorn_target_cross_entropy_backward.register_autograd(_no_double_backward("prototype_cross_entropy_sinkhorn"),
                                                         setup_context=_no_setup)
