"""The cross-entropy family's custom ops (public functions in `cross_entropy.py`): the fused
linear + cross-entropy, its variants (row LSE given, Sinkhorn targets), the softmax products of
stored scores and the cross-entropy from those products.

Each op has a fake kernel (torch.compile traces through it without running it); the
differentiable ones get their gradient from a backward op of their own through
`register_gradient` (the fused backends recompute the logits tile by tile there), and those
backward ops refuse a second differentiation.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._registration import (
    custom_op,
    fake_grads,
    grads_or_empty,
    or_empty,
    refuse_double_backward,
    register_gradient,
    vec,
)
from .backends import composed, get_backend
from .rules import compute_dtype


def _fused_or_composed(backend, primitive):
    """The backend's optional fused primitive, or its plain-torch composition when it has none."""
    fn = getattr(get_backend(backend), primitive)
    return fn if fn is not None else getattr(composed, primitive)


# --- fused linear + cross-entropy: logits = scale·x·cᵀ, never stored in the fused backends ---------

@custom_op("linear_cross_entropy")
def linear_cross_entropy(x: Tensor, c: Tensor, target: Tensor, scale: float, backend: str) -> Tuple[Tensor, Tensor]:
    return get_backend(backend).linear_cross_entropy_forward(x, c, target, scale)


@linear_cross_entropy.register_fake
def _(x, c, target, scale, backend):
    dt = compute_dtype(x, c)
    return vec(x, x.shape[0], dt), vec(x, x.shape[0], dt)


@custom_op("linear_cross_entropy_backward")
def linear_cross_entropy_backward(grad: Tensor, x: Tensor, c: Tensor, target: Tensor, lse: Tensor,
                                  scale: float, need_dx: bool, need_dc: bool, backend: str) -> Tuple[Tensor, Tensor]:
    dx, dc = get_backend(backend).linear_cross_entropy_backward(grad, x, c, target, lse, scale,
                                                                need_dx=need_dx, need_dc=need_dc)
    return grads_or_empty(dx, dc, x, c)


@linear_cross_entropy_backward.register_fake
def _(grad, x, c, target, lse, scale, need_dx, need_dc, backend):
    return fake_grads(x, c, need_dx, need_dc)


refuse_double_backward(linear_cross_entropy_backward, "prototype_cross_entropy")
register_gradient(linear_cross_entropy, linear_cross_entropy_backward,
                  lambda x, c, target, scale, backend, out: dict(x=x, c=c, target=target, lse=out[1], scale=scale,
                                                                 backend=backend))


@custom_op("linear_cross_entropy_given_lse")
def linear_cross_entropy_given_lse(x: Tensor, c: Tensor, target: Tensor, lse: Tensor, scale: float,
                                   backend: str) -> Tensor:
    """Rows lse_i − scale·x_i·c_{t_i} of the CE against indices, the logits' row LSE given (e.g.
    from stored scores): O(M·D) forward; the backward is the backend's fused one."""
    dt = compute_dtype(x, c)
    return lse.to(dt) - scale * (x.to(dt) * c.to(dt).index_select(0, target)).sum(dim=1)


@linear_cross_entropy_given_lse.register_fake
def _(x, c, target, lse, scale, backend):
    return vec(x, x.shape[0], compute_dtype(x, c))


register_gradient(linear_cross_entropy_given_lse, linear_cross_entropy_backward,
                  lambda x, c, target, lse, scale, backend, out: dict(x=x, c=c, target=target, lse=lse, scale=scale,
                                                                      backend=backend))


@custom_op("row_logsumexp")
def row_logsumexp(scores: Tensor, scale: float, backend: str) -> Tensor:
    return get_backend(backend).row_logsumexp(scores, scale)


@row_logsumexp.register_fake
def _(scores, scale, backend):
    return vec(scores, scores.shape[0], compute_dtype(scores))


# --- cross-entropy against Sinkhorn targets recomputed from another branch ------------------------

@custom_op("sinkhorn_target_cross_entropy")
def sinkhorn_target_cross_entropy(x: Tensor, c: Tensor, y: Tensor, cy: Tensor, v: Tensor, inv_eps: float,
                                  scale: float, soft: bool, backend: str) -> Tuple[Tensor, Tensor]:
    return get_backend(backend).sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, inv_eps, scale, soft)


@sinkhorn_target_cross_entropy.register_fake
def _(x, c, y, cy, v, inv_eps, scale, soft, backend):
    dt = compute_dtype(x, c)
    return vec(x, x.shape[0], dt), vec(x, x.shape[0], dt)


@custom_op("sinkhorn_target_cross_entropy_backward")
def sinkhorn_target_cross_entropy_backward(grad: Tensor, x: Tensor, c: Tensor, y: Tensor, cy: Tensor, v: Tensor,
                                           lse: Tensor, inv_eps: float, scale: float, soft: bool,
                                           need_dx: bool, need_dc: bool, backend: str) -> Tuple[Tensor, Tensor]:
    dx, dc = get_backend(backend).sinkhorn_target_cross_entropy_backward(grad, x, c, y, cy, v, lse, inv_eps, scale,
                                                                         soft, need_dx=need_dx, need_dc=need_dc)
    return grads_or_empty(dx, dc, x, c)


@sinkhorn_target_cross_entropy_backward.register_fake
def _(grad, x, c, y, cy, v, lse, inv_eps, scale, soft, need_dx, need_dc, backend):
    return fake_grads(x, c, need_dx, need_dc)


refuse_double_backward(sinkhorn_target_cross_entropy_backward, "prototype_cross_entropy_sinkhorn")
register_gradient(sinkhorn_target_cross_entropy, sinkhorn_target_cross_entropy_backward,
                  lambda x, c, y, cy, v, inv_eps, scale, soft, backend, out: dict(
                      x=x, c=c, y=y, cy=cy, v=v, lse=out[1], inv_eps=inv_eps, scale=scale, soft=soft, backend=backend))


# --- softmax products of stored scores, and the cross-entropy from them ---------------------------

@custom_op("scores_product")
def scores_product(x: Tensor, c: Tensor, backend: str) -> Tensor:
    """x·cᵀ (M, K) without autograd, by the backend's `scores_product` where it has one."""
    return _fused_or_composed(backend, "scores_product")(x, c)


@scores_product.register_fake
def _(x, c, backend):
    return x.new_empty((x.shape[0], c.shape[0]))


@custom_op("softmax_products")
def softmax_products(scores: Tensor, scale: float, v: Optional[Tensor], c: Tensor, x: Optional[Tensor], labels: bool,
                     backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(LSE_k(S·scale + v) (M,), P·c (M, D), Pᵀ·x (K, D) or empty, argmax labels or empty, Σ_i H(P_i·)
    or empty) for P = softmax_k(S·scale + v): one pass over the stored scores where the backend has
    it, else P materialised (M×K). Labels and entropy are those of `sinkhorn_assign_entropy`."""
    lse, pc, px, lab, ent = _fused_or_composed(backend, "softmax_products")(scores, scale, v, c, x, labels)
    return lse, pc, or_empty(px, pc), or_empty(lab, pc, torch.int64), or_empty(ent, pc)


@softmax_products.register_fake
def _(scores, scale, v, c, x, labels, backend):
    dt = compute_dtype(scores, c)
    m, k, d = scores.shape[0], scores.shape[1], c.shape[1]
    px = scores.new_empty((k, d), dtype=dt) if x is not None else scores.new_empty((0,), dtype=dt)
    lab = scores.new_empty((m,) if labels else (0,), dtype=torch.int64)
    ent = scores.new_empty(() if labels else (0,), dtype=dt)
    return vec(scores, m, dt), scores.new_empty((m, d), dtype=dt), px, lab, ent


@custom_op("swapped_softmax_products")
def swapped_softmax_products(scores: Tensor, xb: Tensor, c: Tensor, va: Tensor, vb: Tensor, inv_eps: float,
                             scale: float, xa: Optional[Tensor], grad_b: bool, labels: bool,
                             backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Two branches over the same rows, S_a = scores stored and S_b = xb·cᵀ: for term 0 (P_a
    against Q_b) and term 1 (P_b against Q_a), with P = softmax_k(S·scale) and Q = softmax_k(S·inv_eps
    + v), the rows LSE_k(S·scale) − scale·Σ_k Q'·S (2, M), (P − Q')·c (2, M, D), (P_a − Q_b)ᵀ·xa
    and (P_b − Q_a)ᵀ·xb (K, D, or empty), and Q_a's and Q_b's labels (2, M) and summed entropies
    (2,) (or empty). One pass where the backend has it; else row chunks of plain torch."""
    fn = _fused_or_composed(backend, "swapped_softmax_products")
    ce, g, ha, hb, lab, ent = fn(scores, xb, c, va, vb, inv_eps, scale, xa, grad_b, labels)
    return ce, g, or_empty(ha, g), or_empty(hb, g), or_empty(lab, g, torch.int64), or_empty(ent, g)


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


@custom_op("streaming_swapped_softmax_products")
def streaming_swapped_softmax_products(xa: Tensor, xb: Tensor, c: Tensor, va: Tensor, vb: Tensor, inv_eps: float,
                                       scale: float, grad_b: bool, labels: bool,
                                       backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`swapped_softmax_products` with S_a = xa·cᵀ recomputed too, so no M×K array is stored in the
    fused backends; (P_a − Q_b)ᵀ·xa is always computed."""
    fn = _fused_or_composed(backend, "streaming_swapped_softmax_products")
    ce, g, ha, hb, lab, ent = fn(xa, xb, c, va, vb, inv_eps, scale, grad_b, labels)
    return ce, g, ha, or_empty(hb, g), or_empty(lab, g, torch.int64), or_empty(ent, g)


@streaming_swapped_softmax_products.register_fake
def _(xa, xb, c, va, vb, inv_eps, scale, grad_b, labels, backend):
    dt = compute_dtype(xa, c)
    m, k, d = xa.shape[0], c.shape[0], c.shape[1]
    return (xa.new_empty((2, m), dtype=dt), xa.new_empty((2, m, d), dtype=dt), xa.new_empty((k, d), dtype=dt),
            xa.new_empty((k, d) if grad_b else (0,), dtype=dt),
            xa.new_empty((2, m) if labels else (0,), dtype=torch.int64),
            xa.new_empty((2,) if labels else (0,), dtype=dt))


@custom_op("cross_entropy_from_products")
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
    return vec(x, x.shape[0], compute_dtype(x, c))


@custom_op("cross_entropy_from_products_backward")
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
    return grads_or_empty(dx, dc, x, c)


@cross_entropy_from_products_backward.register_fake
def _(grad, x, c, target, pc, px, target_x, scale, need_dx, need_dc):
    return fake_grads(x, c, need_dx, need_dc)


refuse_double_backward(cross_entropy_from_products_backward, "prototype_cross_entropy_from_products")
register_gradient(cross_entropy_from_products, cross_entropy_from_products_backward,
                  lambda x, c, target, lse, pc, px, target_x, scale, out: dict(
                      x=x, c=c, target=target, pc=pc, px=px, target_x=target_x, scale=scale))
