"""Pure-PyTorch reference backend: the ground truth every other backend is tested against.

Each function is the equation it names, written with whole-matrix PyTorch ops. Inputs of any
floating dtype; arithmetic and results in float32 (float64 inputs stay float64, so gradcheck
can run). Notation (docs/sinkhorn.md): scores S (M, K), potentials u (M,), v (K,), inv_eps = 1/ε,
Q_ik = exp(S_ik·inv_eps + u_i + v_k + log_m).
"""
import math

import torch

from ..rules import TIE_WINDOW, compute_dtype, potential_scale

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _up(t, dtype):
    return t.to(dtype)


# --- Sinkhorn on materialised scores ------------------------------------------------------

def sinkhorn_col_lse(scores, u, inv_eps):
    """LSE_i(S_ik·inv_eps + u_i) -> (K,)."""
    dt = compute_dtype(scores)
    return torch.logsumexp(_up(scores, dt) * inv_eps + u.to(dt)[:, None], dim=0)


def sinkhorn_row_step(scores, v, inv_eps, log_m):
    """Token normalisation fused with the next prototype sum.

    u_i = -log_m - LSE_k(S_ik·inv_eps + v_k);  col_k = LSE_i(S_ik·inv_eps + u_i).
    Returns (u (M,), col (K,)).
    """
    dt = compute_dtype(scores)
    logits = _up(scores, dt) * inv_eps
    u = -log_m - torch.logsumexp(logits + v.to(dt)[None, :], dim=1)
    col = torch.logsumexp(logits + u[:, None], dim=0)
    return u, col


def hard_labels(logits, v):
    """Hard labels of logits t = S·inv_eps + v (M, K) -> int64 (M,) (docs/numerics.md): a row's first
    NaN if it holds one, else its lowest k with t_ik >= max_k t_ik − TIE_WINDOW·(|max_k t_ik| +
    potential_scale(v)) (no window when the max is infinite): the argmax, near-ties to the lowest index."""
    nan = torch.isnan(logits)
    mx = torch.where(nan, -math.inf, logits).amax(dim=1)
    threshold = torch.where(torch.isfinite(mx), mx - TIE_WINDOW * (mx.abs() + potential_scale(v)), mx)
    label = torch.argmax((logits >= threshold[:, None]).to(torch.uint8), dim=1)  # the first one
    return torch.where(nan.any(dim=1), torch.argmax(nan.to(torch.uint8), dim=1), label)


def sinkhorn_assign(scores, v, inv_eps):
    """Hard labels (`hard_labels`) of S_ik·inv_eps + v_k -> int64 (M,)."""
    dt = compute_dtype(scores)
    v = v.to(dt)
    return hard_labels(_up(scores, dt) * inv_eps + v[None, :], v)


def sinkhorn_assign_entropy(scores, v, inv_eps):
    """(hard labels -> int64 (M,), Σ_i H(softmax_k t_i·) -> 0-d), t = S·inv_eps + v; H in nats."""
    dt = compute_dtype(scores)
    v = v.to(dt)
    logits = _up(scores, dt) * inv_eps + v[None, :]
    log_q = torch.log_softmax(logits, dim=1)
    return hard_labels(logits, v), -torch.special.xlogy(log_q.exp(), log_q.exp()).sum()


def row_logsumexp(scores, scale):
    """LSE_k(S_ik·scale) -> (M,)."""
    dt = compute_dtype(scores)
    return torch.logsumexp(_up(scores, dt) * scale, dim=1)


def sinkhorn_plan(scores, u, v, inv_eps, log_m):
    """Q_ik = exp(S_ik·inv_eps + u_i + v_k + log_m) -> (M, K)."""
    dt = compute_dtype(scores)
    return torch.exp(_up(scores, dt) * inv_eps + u.to(dt)[:, None] + v.to(dt)[None, :] + log_m)


# --- Sinkhorn on factored scores S = x·cᵀ (the reference simply materialises S) -------------

def _product(x, c):
    dt = compute_dtype(x, c)
    return _up(x, dt) @ _up(c, dt).T


def streaming_col_lse(x, c, u, inv_eps):
    return sinkhorn_col_lse(_product(x, c), u, inv_eps)


def streaming_row_step(x, c, v, inv_eps, log_m):
    return sinkhorn_row_step(_product(x, c), v, inv_eps, log_m)


def streaming_assign(x, c, v, inv_eps):
    return sinkhorn_assign(_product(x, c), v, inv_eps)


def streaming_assign_entropy(x, c, v, inv_eps):
    return sinkhorn_assign_entropy(_product(x, c), v, inv_eps)


# --- Linear + cross-entropy: logits = scale·x·cᵀ ------------------------------------------

def _is_hard(target):
    return not target.is_floating_point()


def _row_loss(logits, lse, target):
    if _is_hard(target):
        return lse - logits.gather(1, target[:, None]).squeeze(1)
    t = target.to(logits.dtype)
    # -Σ_k t_ik log softmax_k = (Σ_k t_ik)·lse_i - Σ_k t_ik·logit_ik (targets need not sum to 1)
    return t.sum(1) * lse - (t * logits).sum(1)


def _logit_grad(logits, lse, target, grad_rows):
    p = torch.exp(logits - lse[:, None])
    if _is_hard(target):
        g = p.scatter_add(1, target[:, None], -torch.ones_like(p[:, :1]))
    else:
        t = target.to(logits.dtype)
        g = p * t.sum(1, keepdim=True) - t
    return g * grad_rows.to(logits.dtype)[:, None]


def linear_cross_entropy_forward(x, c, target, scale):
    """Per-row CE of softmax(scale·x·cᵀ) against target (int64 (M,) or probabilities (M, K)).

    Returns (loss (M,), lse (M,)) where lse is the row log-sum-exp of the logits.
    """
    logits = _product(x, c) * scale
    lse = torch.logsumexp(logits, dim=1)
    return _row_loss(logits, lse, target), lse


def linear_cross_entropy_backward(grad_rows, x, c, target, lse, scale, need_dx=True, need_dc=True):
    """Gradients (dx, dc) of Σ_i grad_rows_i·loss_i w.r.t. x and c (dtypes of x and c);
    a gradient not asked for (need_dx / need_dc False) is None and its matmul is skipped."""
    if not (need_dx or need_dc):
        return None, None
    dt = compute_dtype(x, c)
    logits = _product(x, c) * scale
    g = _logit_grad(logits, lse.to(dt), target, grad_rows) * scale
    dx = (g @ _up(c, dt)).to(x.dtype) if need_dx else None
    dc = (g.T @ _up(x, dt)).to(c.dtype) if need_dc else None
    return dx, dc


# --- Cross-entropy against Sinkhorn targets of another factored score matrix ---------------

def sinkhorn_target(y, cy, v, inv_eps, soft):
    """Targets from the other branch: softmax_k(y·cyᵀ·inv_eps + v) (soft) or its hard labels (hard).

    After Sinkhorn's final token step, Q_i· = softmax_k(S_ik·inv_eps + v_k), so v alone fixes Q.
    """
    v = v.to(compute_dtype(y, cy))
    t_logits = _product(y, cy) * inv_eps + v[None, :]
    return torch.softmax(t_logits, dim=1) if soft else hard_labels(t_logits, v)


def sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, inv_eps, scale, soft):
    return linear_cross_entropy_forward(x, c, sinkhorn_target(y, cy, v, inv_eps, soft), scale)


def sinkhorn_target_cross_entropy_backward(grad_rows, x, c, y, cy, v, lse, inv_eps, scale, soft,
                                           need_dx=True, need_dc=True):
    if not (need_dx or need_dc):
        return None, None
    target = sinkhorn_target(y, cy, v, inv_eps, soft)
    return linear_cross_entropy_backward(grad_rows, x, c, target, lse, scale, need_dx, need_dc)
