"""Prototype scoring and the (swapped) cross-entropy between prototype softmaxes and targets.

z is L2-normalised inside (gradients flow through the normalisation); prototypes are used as
given (the caller renormalises them, without grad: docs/method.md). Logits are
normalize(z)·prototypesᵀ/τ, accumulated in float32.
"""
from typing import NamedTuple, Optional

import torch

from . import _cross_entropy_ops as ops
from . import rules
from .backends import provides, resolve_backend
from .rules import compute_dtype
from .sinkhorn import _normalize_rows_flagged, normalize_rows

__all__ = ["SoftmaxProducts", "SwappedProducts", "TargetedProducts", "has_fused_swapped_products",
           "prototype_cross_entropy",
           "prototype_cross_entropy_from_products", "prototype_cross_entropy_sinkhorn", "prototype_log_softmax",
           "prototype_logsumexp", "prototype_scores", "prototype_softmax", "prototype_softmax_products",
           "prototype_swapped_products"]

_REDUCTIONS = ("mean", "sum", "none")


def prototype_scores(z, prototypes, temperature=1.0):
    """normalize(z)·prototypesᵀ / temperature -> (M, K) float32 (float64 for float64 input).

    A plain matmul: it materialises M×K, so use it for inspection, not in the fused loss.
    """
    rules.check_features("z", z, "prototypes", prototypes)
    tau = rules.check_positive("temperature", temperature)
    dt = compute_dtype(z, prototypes)
    x, c = normalize_rows(z).to(dt), prototypes.to(dt)
    if torch.is_grad_enabled() and (x.requires_grad or c.requires_grad):
        scores = x @ c.T
    else:  # no autograd (e.g. the Sinkhorn scores of the loss): the backend's product, if it has one
        scores = ops.scores_product(x, c, resolve_backend("auto", x.device, x.dtype))
    # τ = 1 (the Sinkhorn scores) skips a division that would allocate a second M×K matrix
    return scores if tau == 1.0 else scores / tau


def prototype_softmax(z, prototypes, temperature=1.0):
    """softmax over prototypes of `prototype_scores` -> (M, K)."""
    return torch.softmax(prototype_scores(z, prototypes, temperature), dim=1)


def prototype_log_softmax(z, prototypes, temperature=1.0):
    """log_softmax over prototypes of `prototype_scores` -> (M, K)."""
    return torch.log_softmax(prototype_scores(z, prototypes, temperature), dim=1)


def _reduce(rows, reduction):
    if reduction == "mean":
        return rows.mean()
    if reduction == "sum":
        return rows.sum()
    return rows


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def prototype_logsumexp(scores, temperature=0.1, *, backend="auto"):
    """LSE_k(scores_ik/τ) (M,) float32 of stored scores normalize(z)·prototypesᵀ (no autograd):
    the `lse=` of `prototype_cross_entropy`, one pass over scores already in memory."""
    rules.check_matrix("scores", scores)
    tau = rules.check_positive("temperature", temperature)
    name = resolve_backend(backend, scores.device, scores.dtype)
    return ops.row_logsumexp(scores.detach(), 1.0 / tau, name)


def prototype_cross_entropy(z, prototypes, target, temperature=0.1, *, reduction="mean", lse=None,
                            backend="auto"):
    """Cross-entropy of softmax(normalize(z)·prototypesᵀ/τ) against `target`.

    z: (M, D); prototypes: (K, D); target: int64 class indices (M,) (hard) or probabilities
    (M, K) (soft; treated as constants). reduction: "mean" (over the M rows; default), "sum",
    or "none" (per-row (M,)). Differentiable w.r.t. z and prototypes; float32 result.
    lse: optional (M,) row LSE of the logits when already known (`prototype_logsumexp` of
    stored scores; index targets only): the forward then needs no pass over the logits.
    """
    rules.check_features("z", z, "prototypes", prototypes)
    tau = rules.check_positive("temperature", temperature)
    _check_reduction(reduction)
    m, k = z.shape[0], prototypes.shape[0]
    kind = rules.check_target(target, m, k, z.device)
    dt = compute_dtype(z, prototypes)
    name = resolve_backend(backend, z.device, dt)
    x = normalize_rows(z)
    c = prototypes.to(dt)
    t = target.detach().to(torch.int64) if kind == "hard" else target.detach()
    if lse is not None:
        if kind != "hard":
            raise ValueError("lse= needs index (hard) targets")
        rules.check_vector("lse", lse, m)
        rows = ops.linear_cross_entropy_given_lse(x, c, t, lse.detach().to(dt), 1.0 / tau, name)
        return _reduce(rows, reduction)
    rows, _ = ops.linear_cross_entropy(x, c, t, 1.0 / tau, name)
    return _reduce(rows, reduction)


def prototype_cross_entropy_sinkhorn(z, prototypes, z_target, prototypes_target, v_target, epsilon,
                                temperature=0.1, *, targets="hard", reduction="mean", backend="auto"):
    """`prototype_cross_entropy` with targets from another branch's Sinkhorn, computed on the fly.

    The target of row i is Q_i· = softmax_k(normalize(z_target_i)·prototypes_targetᵀ/ε + v_target)
    ("soft") or its argmax ("hard"), where v_target (K,) are that branch's Sinkhorn prototype
    potentials (see `sinkhorn_streaming`). No M×K array is stored by the fused backends.
    Gradients flow to z and prototypes only.
    """
    rules.check_features("z", z, "prototypes", prototypes)
    rules.check_features("z_target", z_target, "prototypes_target", prototypes_target)
    m, k = z.shape[0], prototypes.shape[0]
    if tuple(z_target.shape[:1]) != (m,) or prototypes_target.shape[0] != k:
        raise ValueError(f"z_target must have M={m} rows and prototypes_target K={k} rows, got "
                         f"{tuple(z_target.shape)} and {tuple(prototypes_target.shape)}")
    rules.check_vector("v_target", v_target, k)
    rules.check_same_device(z=z, z_target=z_target, v_target=v_target)
    tau = rules.check_positive("temperature", temperature)
    inv_eps = rules.check_epsilon(epsilon)
    if targets not in ("hard", "soft"):
        raise ValueError(f"targets must be 'hard' or 'soft', got {targets!r}")
    _check_reduction(reduction)
    dt = compute_dtype(z, prototypes)
    name = resolve_backend(backend, z.device, dt)
    x, c = normalize_rows(z), prototypes.to(dt)
    (y, y_finite), cy = _normalize_rows_flagged(z_target.detach()), prototypes_target.detach().to(dt)
    v = v_target.detach().to(dt)
    rows, _ = ops.sinkhorn_target_cross_entropy(x, c, y, cy, v, inv_eps, 1.0 / tau, targets == "soft", name)
    # Non-finite target side -> NaN rows (docs/numerics.md): a hard label taken from NaN logits would
    # otherwise give a finite, wrong loss. O(M + K·D) checks, no M×K pass, no host sync.
    target_ok = y_finite & torch.isfinite(v).all() & torch.isfinite(cy).all()
    rows = torch.where(target_ok, rows, torch.full((), float("nan"), dtype=rows.dtype, device=rows.device))
    return _reduce(rows, reduction)


class SoftmaxProducts(NamedTuple):
    """What a cross-entropy needs of P = softmax_k(scores_ik/τ + v_k), without P itself:
    lse (M,) = LSE_k(scores/τ + v), p_c (M, D) = P·prototypes, p_x (K, D) = Pᵀ·normalize(z) or None;
    with return_labels, labels (M,) int64 = argmax_k P_ik and entropy () = Σ_i H(P_i·) (nats), as
    `sinkhorn_assign_from_potentials(..., return_entropy=True)` gives them, else None."""
    lse: torch.Tensor
    p_c: torch.Tensor
    p_x: Optional[torch.Tensor]
    labels: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None


def prototype_softmax_products(scores, prototypes, temperature=0.1, *, v=None, z=None, return_labels=False,
                               backend="auto"):
    """`SoftmaxProducts` of stored scores (no autograd): one pass over scores (M, K) in the fused
    backends, which never hold P (others materialise it). scores are normalize(z')·prototypesᵀ for
    the features z' of the branch; v (K,) optional (with temperature=ε and a Sinkhorn's prototype
    potentials, P is that Sinkhorn's assignment Q); z (M, D) optional, for p_x = Pᵀ·normalize(z);
    return_labels: also P's hard labels and summed row entropy, from the same pass.
    """
    rules.check_matrix("scores", scores)
    rules.check_matrix("prototypes", prototypes)
    m, k = scores.shape
    if prototypes.shape[0] != k:
        raise ValueError(f"prototypes must have shape (K={k}, D) like scores (M, K), got {tuple(prototypes.shape)}")
    inv_tau = rules.check_epsilon(temperature, name="temperature")
    rules.check_flag("return_labels", return_labels)
    rules.check_same_device(scores=scores, prototypes=prototypes)
    if v is not None:
        rules.check_vector("v", v, k)
        rules.check_same_device(scores=scores, v=v)
    # the widest given input decides (a float64 z or v is not rounded to float32)
    dt = compute_dtype(*(t for t in (scores, prototypes, v, z) if isinstance(t, torch.Tensor)))
    if v is not None:
        v = v.detach().to(dt)
    x = None
    if z is not None:
        rules.check_matrix("z", z)
        if tuple(z.shape) != (m, prototypes.shape[1]):
            raise ValueError(f"z must have shape (M, D) = ({m}, {prototypes.shape[1]}), got {tuple(z.shape)}")
        rules.check_same_device(scores=scores, z=z)
        x = normalize_rows(z.detach()).to(dt)
    name = resolve_backend(backend, scores.device, dt)
    lse, pc, px, labels, entropy = ops.softmax_products(scores.detach(), inv_tau, v, prototypes.detach().to(dt), x,
                                                        return_labels, name)
    if not return_labels:
        labels = entropy = None
    return SoftmaxProducts(lse, pc, px if z is not None else None, labels, entropy)


class TargetedProducts(NamedTuple):
    """What a cross-entropy against soft targets T needs, with T folded in (no M×K tensor):
    rows (M,) = LSE_k(scores/τ) − Σ_k T_ik·scores_ik/τ (its value per row), g_c (M, D) = (P − T)·
    prototypes, g_x (K, D) = (P − T)ᵀ·normalize(z) or None, for P = softmax_k(scores/τ);
    temperature: the τ they were made at (checked by `prototype_cross_entropy_from_products`)."""
    rows: torch.Tensor
    g_c: torch.Tensor
    g_x: Optional[torch.Tensor]
    temperature: Optional[float] = None


class SwappedProducts(NamedTuple):
    """The two terms of a swapped prediction between branches a and b (`prototype_swapped_products`):
    a = P_a against Q_b, b = P_b against Q_a (each a `TargetedProducts`); with return_labels, labels
    (2, M) int64 = argmax_k of Q_a and Q_b, entropy (2,) = Σ_i H(Q_a,i·) and Σ_i H(Q_b,i·), as
    `sinkhorn_assign_from_potentials(..., return_entropy=True)` gives them, else None."""
    a: TargetedProducts
    b: TargetedProducts
    labels: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None


def prototype_swapped_products(scores_a, z_b, prototypes, v_a, v_b, epsilon, temperature=0.1, *, z_a=None,
                               grad_b=False, return_labels=False, backend="auto"):
    """`SwappedProducts` of two branches over the same M rows (no autograd), for the swapped
    cross-entropies CE(P_a, Q_b) + CE(P_b, Q_a) with soft targets: P = softmax_k(S/τ), Q =
    softmax_k(S/ε + v) (the rows of a Sinkhorn assignment with prototype potentials v).

    scores_a (M, K): normalize(z_a)·prototypesᵀ, stored; branch b's scores normalize(z_b)·
    prototypesᵀ are recomputed in row chunks instead of stored. As each difference P − Q' is formed
    from both branches' rows at once, every gradient product is one GEMM: 3 M×K×D products with one
    prototype gradient, against 6 for the two targets and two softmaxes apart (plus one GEMM for
    the recomputed scores). z_a (M, D): give it for term a's prototype gradient (a.g_x); grad_b:
    term b's too (b.g_x, from z_b). return_labels: also Q_a's and Q_b's labels and entropies.
    scores_a None: branch a's scores are recomputed from z_a as well (which is then required, and
    a.g_x always computed), so nothing M×K is stored where the backend fuses this
    (`has_fused_swapped_products`; elsewhere row chunks of plain torch).
    """
    rules.check_matrix("prototypes", prototypes)
    k, d = prototypes.shape
    if scores_a is None:
        if z_a is None:
            raise ValueError("scores_a=None recomputes branch a's scores from z_a: give z_a (M, D)")
        rules.check_matrix("z_a", z_a)
        m = z_a.shape[0]
    else:
        rules.check_matrix("scores_a", scores_a)
        m = scores_a.shape[0]
        if scores_a.shape[1] != k:
            raise ValueError(f"prototypes must have shape (K={scores_a.shape[1]}, D) like scores_a (M, K), got "
                             f"{tuple(prototypes.shape)}")
    inv_eps = rules.check_epsilon(epsilon)
    inv_tau = rules.check_epsilon(temperature, name="temperature")
    rules.check_flag("grad_b", grad_b)
    rules.check_flag("return_labels", return_labels)
    for name, z in (("z_b", z_b), ("z_a", z_a)):
        if z is None and name == "z_a":
            continue
        rules.check_matrix(name, z)
        if tuple(z.shape) != (m, d):
            raise ValueError(f"{name} must have shape (M, D) = ({m}, {d}) like scores_a and prototypes, got "
                             f"{tuple(z.shape)}")
    for name, v in (("v_a", v_a), ("v_b", v_b)):
        rules.check_vector(name, v, k)
    given = {name: t for name, t in (("scores_a", scores_a), ("z_a", z_a)) if t is not None}
    # the widest given input decides (a float64 z or v is not rounded to float32)
    dt = compute_dtype(prototypes, z_b, v_a, v_b, *given.values())
    feats = {name: normalize_rows(z.detach()).to(dt) for name, z in (("z_b", z_b), ("z_a", z_a)) if z is not None}
    rules.check_same_device(prototypes=prototypes, z_b=z_b, v_a=v_a, v_b=v_b, **given)
    name = resolve_backend(backend, prototypes.device, dt)
    c, va, vb = prototypes.detach().to(dt), v_a.detach().to(dt), v_b.detach().to(dt)
    if scores_a is None:
        ce, g, ha, hb, labels, entropy = ops.streaming_swapped_softmax_products(
            feats["z_a"], feats["z_b"], c, va, vb, inv_eps, inv_tau, grad_b, return_labels, name)
    else:
        ce, g, ha, hb, labels, entropy = ops.swapped_softmax_products(
            scores_a.detach(), feats["z_b"], c, va, vb, inv_eps, inv_tau, feats.get("z_a"), grad_b, return_labels,
            name)
    tau = float(temperature)
    a = TargetedProducts(ce[0], g[0], ha if z_a is not None else None, tau)
    b = TargetedProducts(ce[1], g[1], hb if grad_b else None, tau)
    return SwappedProducts(a, b, labels if return_labels else None, entropy if return_labels else None)


def has_fused_swapped_products(device, dtype=torch.float32, *, streaming=True, backend="auto"):
    """Whether `prototype_swapped_products` runs as one fused pass for tensors of `device` and
    `dtype` on `backend` (streaming=True: with scores_a=None; False: with stored scores_a). Where it
    does not, it composes row chunks of plain torch, which hold chunk×K temporaries."""
    name = resolve_backend(backend, device, dtype)
    return provides(name, "streaming_swapped_softmax_products" if streaming else "swapped_softmax_products")


def prototype_cross_entropy_from_products(z, prototypes, target, products, temperature=0.1, *, target_x=None,
                                          reduction="mean"):
    """`prototype_cross_entropy` when its softmax products are already known, e.g. from the stored
    scores of a Sinkhorn solve (`prototype_softmax_products`): no M×K work forward or backward.

    target: int64 labels (M,), or the product T·prototypes (M, D) of soft targets T (the p_c of
    `prototype_softmax_products` with the target's v and ε), or None when `products` already hold
    their targets (a `TargetedProducts`, e.g. `prototype_swapped_products(...).a` or `.b`).
    products: this CE's SoftmaxProducts at `temperature` (p_x needed when prototypes take a
    gradient), or a TargetedProducts made at `temperature` (g_x needed when prototypes take a
    gradient). target_x: Tᵀ·normalize(z) (K, D) for product targets when prototypes take a gradient
    (the p_x of the targets' products with this z). reduction: "mean" or "sum" ("none" is possible
    without a prototype gradient), as the prototype gradient uses products computed with equal row
    weights.
    """
    rules.check_features("z", z, "prototypes", prototypes)
    inv_tau = rules.check_epsilon(temperature, name="temperature")
    _check_reduction(reduction)
    m, k, d = z.shape[0], prototypes.shape[0], prototypes.shape[1]
    if isinstance(products, TargetedProducts):
        if products.temperature is not None and float(products.temperature) != float(temperature):
            raise ValueError(f"products were made at temperature={products.temperature}, but temperature="
                             f"{temperature} was given: the row values and gradients hold 1/τ")
        return _cross_entropy_from_targeted(z, prototypes, target, products, inv_tau, target_x, reduction)
    if isinstance(products, SwappedProducts):
        raise TypeError("products must be one term's products: pass products.a or products.b of the "
                        "SwappedProducts (with target=None)")
    if target is None:
        raise TypeError("target=None needs TargetedProducts (targets folded in, e.g. a term of "
                        f"prototype_swapped_products); with {type(products).__name__} give the target")
    lse, pc, px = products[:3]
    _check_products(z, k, d, ("lse", lse), ("p_c", pc), ("p_x", px))
    soft = isinstance(target, torch.Tensor) and target.is_floating_point()
    if soft:
        rules.check_shaped("a product target", target, (m, d), z.device)
    else:
        rules.check_target(target, m, k, z.device)
    if target_x is not None:
        rules.check_shaped("target_x", target_x, (k, d), z.device)
    _check_prototype_gradient(prototypes, reduction,
                              (px is None, "prototypes take a gradient: compute the products with z= (their p_x)"),
                              (soft and target_x is None,
                               "prototypes take a gradient: product targets need target_x= (Tᵀ·normalize(z))"))
    dt = compute_dtype(z, prototypes)
    x = normalize_rows(z)
    t = target.detach() if soft else target.detach().to(torch.int64)
    rows = ops.cross_entropy_from_products(x, prototypes.to(dt), t, lse.detach(), pc.detach(),
                                           None if px is None else px.detach(),
                                           None if target_x is None else target_x.detach(), inv_tau)
    return _reduce(rows, reduction)


def _cross_entropy_from_targeted(z, prototypes, target, products, inv_tau, target_x, reduction):
    """prototype_cross_entropy_from_products for TargetedProducts (targets already folded in)."""
    if target is not None or target_x is not None:
        raise ValueError("TargetedProducts already hold their targets: pass target=None and no target_x")
    k, d = prototypes.shape
    rows, gc, gx = products[:3]
    _check_products(z, k, d, ("rows", rows), ("g_c", gc), ("g_x", gx))
    _check_prototype_gradient(prototypes, reduction,
                              (gx is None, "prototypes take a gradient but products.g_x is None: make the products "
                                           "with this term's features, z_a= for term a or grad_b=True for term b "
                                           "of prototype_swapped_products"))
    dt = compute_dtype(z, prototypes)
    out = ops.cross_entropy_from_products(normalize_rows(z), prototypes.to(dt), None, rows.detach(), gc.detach(),
                                          None if gx is None else gx.detach(), None, inv_tau)
    return _reduce(out, reduction)


def _check_products(z, k, d, per_row, per_row_d, per_prototype):
    """The products of a cross-entropy over z's M rows, each a (name, tensor) pair: a vector (M,),
    an (M, D) matrix and an optional (K, D) one, on z's device."""
    m = z.shape[0]
    (vec_name, vec), (md_name, md), (kd_name, kd) = per_row, per_row_d, per_prototype
    rules.check_vector(f"products.{vec_name}", vec, m)
    rules.check_shaped(f"products.{md_name}", md, (m, d), z.device)
    rules.check_same_device(z=z, **{f"products.{vec_name}": vec})
    if kd is not None:
        rules.check_shaped(f"products.{kd_name}", kd, (k, d), z.device)


def _check_prototype_gradient(prototypes, reduction, *missing):
    """When the prototypes take a gradient: each (is_missing, message) in order, then equal row
    weights (the products' prototype gradient assumes them)."""
    if not (prototypes.requires_grad and torch.is_grad_enabled()):
        return
    for is_missing, message in missing:
        if is_missing:
            raise ValueError(message)
    if reduction == "none":
        raise ValueError("reduction='none' gives rows unequal weights, which the prototype gradient from "
                         "products cannot take; use 'mean' or 'sum', or prototype_cross_entropy")
