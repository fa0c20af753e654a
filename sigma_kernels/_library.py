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


def _or_empty(t, like, dtype=None):
    """Custom ops cannot return None: an output not asked for travels as an empty (0,) tensor, a new
    one each time (outputs must not alias)."""
    return t if t is not None else like.new_empty((0,), dtype=dtype)


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


@torch.library.custom_op(f"{_NS}::softmax_products", mutates_args=())
def softmax_products(scores: Tensor, scale: float, v: Optional[Tensor], c: Tensor, x: Optional[Tensor], labels: bool,
                     backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(LSE_k(S·scale + v) (M,), P·c (M, D), Pᵀ·x (K, D) or empty, argmax labels or empty, Σ_i H(P_i·)
    or empty) for P = softmax_k(S·scale + v): one pass over the stored scores where the backend has
    it, else P materialised (M×K). Labels and entropy are those of `sinkhorn_assign_entropy`."""
    b = get_backend(backend)
    dt = compute_dtype(scores, c)
    if b.softmax_products is not None:
        lse, pc, px, lab, ent = b.softmax_products(scores, scale, v, c, x, labels)
    else:
        logits = scores.to(dt) * scale
        if v is not None:
            logits = logits + v.to(dt)
        lse = torch.logsumexp(logits, dim=1)
        p = torch.softmax(logits, dim=1)
        pc = p @ c.to(dt)
        px = p.T @ x.to(dt) if x is not None else None
        lab = ent = None
        if labels:
            vv = v if v is not None else scores.new_zeros(scores.shape[1], dtype=dt)
            lab, ent = get_backend("reference").sinkhorn_assign_entropy(scores, vv.to(dt), scale)
    return lse, pc, _or_empty(px, pc), _or_empty(lab, pc, torch.int64), _or_empty(ent, pc)


@softmax_products.register_fake
def _(scores, scale, v, c, x, labels, backend):
    dt = compute_dtype(scores, c)
    m, k, d = scores.shape[0], scores.shape[1], c.shape[1]
    px = scores.new_empty((k, d), dtype=dt) if x is not None else scores.new_empty((0,), dtype=dt)
    lab = scores.new_empty((m,) if labels else (0,), dtype=torch.int64)
    ent = scores.new_empty(() if labels else (0,), dtype=dt)
    return _vec(scores, m, dt), scores.new_empty((m, d), dtype=dt), px, lab, ent


# Rows per chunk of the generic swapped products: about 4M scores per temporary.
_SWAPPED_CHUNK_SCORES = 1 << 22


@torch.library.custom_op(f"{_NS}::swapped_softmax_products", mutates_args=())
def swapped_softmax_products(scores: Tensor, xb: Tensor, c: Tensor, va: Tensor, vb: Tensor, inv_eps: float,
                             scale: float, xa: Optional[Tensor], grad_b: bool, labels: bool,
                             backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Two branches over the same rows, S_a = scores stored and S_b = xb·cᵀ: for term 0 (P_a
    against Q_b) and term 1 (P_b against Q_a), with P = softmax_k(S·scale) and Q = softmax_k(S·inv_eps
    + v), the rows LSE_k(S·scale) − scale·Σ_k Q'·S (2, M), (P − Q')·c (2, M, D), (P_a − Q_b)ᵀ·xa
    and (P_b − Q_a)ᵀ·xb (K, D, or empty), and Q_a's and Q_b's labels (2, M) and summed entropies
    (2,) (or empty). One pass where the backend has it; else row chunks of plain torch."""
    b = get_backend(backend)
    if b.swapped_softmax_products is not None:
        ce, g, ha, hb, lab, ent = b.swapped_softmax_products(scores, xb, c, va, vb, inv_eps, scale, xa, grad_b,
                                                             labels)
    else:
        ce, g, ha, hb, lab, ent = _swapped_products_by_chunks(scores, xb, c, va, vb, inv_eps, scale, xa, grad_b,
                                                              labels)
    return ce, g, _or_empty(ha, g), _or_empty(hb, g), _or_empty(lab, g, torch.int64), _or_empty(ent, g)


def _swapped_products_by_chunks(scores, xb, c, va, vb, inv_eps, scale, xa, grad_b, labels):
    dt = compute_dtype(scores, c)
    m, k, d = scores.shape[0], scores.shape[1], c.shape[1]
    cd = c.to(dt)
    ce = scores.new_empty((2, m), dtype=dt)
    g = scores.new_empty((2, m, d), dtype=dt)
    feats = (xa, xb if grad_b else None)
    h = [cd.new_zeros((k, d)) if x is not None else None for x in feats]
    lab = scores.new_empty((2, m), dtype=torch.int64) if labels else None
    ent = [cd.new_zeros(()), cd.new_zeros(())] if labels else None
    ref = get_backend("reference")
    step = max(1, _SWAPPED_CHUNK_SCORES // max(k, 1))
    for r0 in range(0, m, step):
        rows = slice(r0, min(r0 + step, m))
        s = (scores[rows].to(dt), xb[rows].to(dt) @ cd.T)
        v = (va.to(dt), vb.to(dt))
        q = [torch.softmax(s[i] * inv_eps + v[i], dim=1) for i in range(2)]
        for side in range(2):
            other = q[1 - side]
            logits = s[side] * scale
            ce[side, rows] = torch.logsumexp(logits, dim=1) - scale * (other * s[side]).sum(dim=1)
            diff = torch.softmax(logits, dim=1) - other
            g[side, rows] = diff @ cd
            if h[side] is not None:
                h[side] += diff.T @ feats[side][rows].to(dt)
            if labels:
                lab[side, rows], e = ref.sinkhorn_assign_entropy(s[side], v[side], inv_eps)
                ent[side] = ent[side] + e
    return ce, g, h[0], h[1], lab, (torch.stack(ent) if labels else None)


@swapped_softmax_products.register_fake
def _(scores, xb, c, va, vb, inv_eps, scale, xa, grad_b, labels, backend):
    dt = compute_dtype(scores, c)
    m, k, d = scores.shape[0], scores.shape[1], c.shape[1]
    h = scores.new_empty((k, d), dtype=dt)
    empty = scores.new_empty((0,), dtype=dt)
    return (scores.new_empty((2, m), dtype=dt), scores.new_empty((2, m, d), dtype=dt),
            h if xa is not None else empty, h.clone() if grad_b else empty.clone(),
            scores.new_empty((2, m) if labels else (0,), dtype=torch.int64),
            scores.new_empty((2,) if labels else (0,), dtype=dt))


@torch.library.custom_op(f"{_NS}::cross_entropy_from_products", mutates_args=())
def cross_entropy_from_products(x: Tensor, c: Tensor, target: Optional[Tensor], lse: Tensor, pc: Tensor,
                                px: Optional[Tensor], target_x: Optional[Tensor], scale: float) -> Tensor:
    """Rows lse_i − scale·x_i·t_i of a cross-entropy whose softmax products were computed from
    stored scores (`softmax_products`): t_i = c[target_i] (int64 labels) or target_i (the target
    rows' product T·c, (M, D)). The backward needs no M×K work: dx = scale·g·(P·c − t), and
    dc = scale·(g·Pᵀ·x − Tᵀ·(g·x)) with Pᵀ·x = px (computed with unit row weights, so g must be
    the same on every row, as for a mean or sum) and Tᵀ·x = target_x for product targets.
    target None: the targets are already folded in (`swapped_softmax_products`): lse holds the
    rows, pc = (P − T)·c and px = (P − T)ᵀ·x."""
    dt = compute_dtype(x, c)
    if target is None:
        return lse.to(dt).clone()
    t = c.to(dt).index_select(0, target) if not target.is_floating_point() else target.to(dt)
    return lse.to(dt) - scale * (x.to(dt) * t).sum(dim=1)


@cross_entropy_from_products.register_fake
def _(x, c, target, lse, pc, px, target_x, scale):
    return _vec(x, x.shape[0], compute_dtype(x, c))


@torch.library.custom_op(f"{_NS}::cross_entropy_from_products_backward", mutates_args=())
def cross_entropy_from_products_backward(grad: Tensor, x: Tensor, c: Tensor, target: Optional[Tensor], pc: Tensor,
                                         px: Optional[Tensor], target_x: Optional[Tensor], scale: float,
                                         need_dx: bool, need_dc: bool) -> Tuple[Tensor, Tensor]:
    dt = compute_dtype(x, c)
    g = grad.to(dt)
    folded = target is None  # pc, px are (P − T)·c and (P − T)ᵀ·x
    hard = not folded and not target.is_floating_point()
    dx = dc = None
    if need_dx:
        diff = pc.to(dt)
        if not folded:
            diff = diff - (c.to(dt).index_select(0, target) if hard else target.to(dt))
        dx = ((scale * g)[:, None] * diff).to(x.dtype)
    if need_dc:
        if px is None:
            raise RuntimeError("the prototypes' gradient of cross_entropy_from_products needs Pᵀ·x: compute the "
                               "softmax products with z given")
        if not hard and not folded and target_x is None:
            raise RuntimeError("the prototypes' gradient of cross_entropy_from_products with product targets needs "
                               "target_x (Tᵀ·x): compute the target products with z given")
        g0 = g[0] if g.numel() else g.new_zeros(())
        nan = torch.isnan(g).any()  # a NaN upstream gradient gives a NaN gradient, not an error
        uniform = (g == g0).all() | nan
        msg = ("the prototypes' gradient of cross_entropy_from_products needs the same upstream gradient on every "
               "row (a mean or sum of the rows), as Pᵀ·x was computed with unit weights")
        if g.device.type == "cpu":
            if not bool(uniform):
                raise RuntimeError(msg)
        else:
            torch._assert_async(uniform, msg)
        xd = x.to(dt)
        if folded:
            tx = torch.zeros((), dtype=dt, device=g.device)
        elif hard:  # Tᵀ·(g·x) with one-hot T: a scatter of the weighted rows
            tx = torch.zeros_like(px, dtype=dt).index_add_(0, target, g[:, None] * xd)
        else:
            tx = g0 * target_x.to(dt)
        dc = torch.where(nan, torch.full((), float("nan"), dtype=dt, device=g.device),
                         scale * (g0 * px.to(dt) - tx)).to(c.dtype)
    return _grads_or_empty(dx, dc, x, c)


@cross_entropy_from_products_backward.register_fake
def _(grad, x, c, target, pc, px, target_x, scale, need_dx, need_dc):
    return _fake_grads(x, c, need_dx, need_dc)


def _cefp_setup(ctx, inputs, output):
    x, c, target, lse, pc, px, target_x, scale = inputs
    ctx.save_for_backward(x, c, target, pc, px, target_x)
    ctx.scale = scale


def _cefp_backward(ctx, grad_rows):
    x, c, target, pc, px, target_x = ctx.saved_tensors
    need_dx, need_dc = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dc = cross_entropy_from_products_backward(grad_rows, x, c, target, pc, px, target_x, ctx.scale, need_dx,
                                                  need_dc)
    return (dx if need_dx else None), (dc if need_dc else None), None, None, None, None, None, None


cross_entropy_from_products.register_autograd(_cefp_backward, setup_context=_cefp_setup)


@torch.library.custom_op(f"{_NS}::row_logsumexp", mutates_args=())
def row_logsumexp(scores: Tensor, scale: float, backend: str) -> Tensor:
    return get_backend(backend).row_logsumexp(scores, scale)


@row_logsumexp.register_fake
def _(scores, scale, backend):
    return _vec(scores, scores.shape[0], compute_dtype(scores))


@torch.library.custom_op(f"{_NS}::linear_cross_entropy_given_lse", mutates_args=())
def linear_cross_entropy_given_lse(x: Tensor, c: Tensor, target: Tensor, lse: Tensor, scale: float,
                                   backend: str) -> Tensor:
    """Rows lse_i − scale·x_i·c_{t_i} of the CE against indices, the logits' row LSE given (e.g.
    from stored scores): O(M·D) forward; the backward is the backend's fused one."""
    dt = compute_dtype(x, c)
    return lse.to(dt) - scale * (x.to(dt) * c.to(dt).index_select(0, target)).sum(dim=1)


@linear_cross_entropy_given_lse.register_fake
def _(x, c, target, lse, scale, backend):
    return _vec(x, x.shape[0], compute_dtype(x, c))


def _lce_lse_setup(ctx, inputs, output):
    x, c, target, lse, scale, backend = inputs
    ctx.save_for_backward(x, c, target, lse)
    ctx.scale, ctx.backend = scale, backend


def _lce_lse_backward(ctx, grad_rows):
    x, c, target, lse = ctx.saved_tensors
    need_dx, need_dc = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dc = linear_cross_entropy_backward(grad_rows, x, c, target, lse.to(grad_rows.dtype), ctx.scale, need_dx,
                                           need_dc, ctx.backend)
    return (dx if need_dx else None), (dc if need_dc else None), None, None, None, None


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
cross_entropy_from_products_backward.register_autograd(
    _no_double_backward("prototype_cross_entropy_from_products"), setup_context=_no_setup)


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
