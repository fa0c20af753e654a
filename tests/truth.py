"""The independent truth every test checks against: the method's equations written directly in
plain PyTorch (one NumPy variant for the exp domain), with no sigma_kernels code. Tests import
from here instead of restating an iteration.

The torch functions compute in the dtype they are given. On float64 inputs they are the float64
truth (differentiable: gradients come from autograd). The same calls on float16/bfloat16 inputs
are "plain torch in that dtype", the baseline of the low-precision criterion below.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

# --- Sinkhorn ---------------------------------------------------------------------------------

def sinkhorn_log(scores, epsilon, n_iters):
    """Balanced Sinkhorn-Knopp in the log domain on S (M, K), in the dtype of S (docs/sinkhorn.md).

    Potentials u (M,), v (K,) start at 0; each iteration sets
        v_k = -log K - LSE_i(S_ik/ε + u_i)    (every prototype gets M/K tokens)
        u_i = -log M - LSE_k(S_ik/ε + v_k)    (every token has mass 1)
    Returns (Q, u, v) with Q_ik = M·exp(S_ik/ε + u_i + v_k): rows sum to 1, columns to M/K.
    """
    s = scores / epsilon
    m, k = s.shape
    u = s.new_zeros(m)
    v = s.new_zeros(k)
    for _ in range(n_iters):
        v = -math.log(k) - torch.logsumexp(s + u[:, None], dim=0)
        u = -math.log(m) - torch.logsumexp(s + v[None, :], dim=1)
    return m * torch.exp(s + u[:, None] + v[None, :]), u, v


def sinkhorn_log_f64(scores, epsilon, n_iters):
    """`sinkhorn_log` in float64 on array-like scores; (Q, u, v) as NumPy arrays."""
    q, u, v = sinkhorn_log(torch.as_tensor(np.asarray(scores, dtype=np.float64)), epsilon, n_iters)
    return q.numpy(), u.numpy(), v.numpy()


def sinkhorn_exp_f64(scores, epsilon, n_iters):
    """The plain exp-domain (SwAV-style) iteration in float64 NumPy: scale columns, then rows.

    A different algorithm from `sinkhorn_log` (equal in exact arithmetic wherever exp(S/ε) is
    finite), so agreement with it is not agreement with our own formulation."""
    s = np.asarray(scores, dtype=np.float64)
    m, k = s.shape
    p = np.exp(s / epsilon)
    p /= p.sum()
    for _ in range(n_iters):
        p /= p.sum(axis=0, keepdims=True) * k
        p /= p.sum(axis=1, keepdims=True) * m
    return p * m


# --- hard labels ------------------------------------------------------------------------------

TIE_WINDOW = 2.0 ** -16  # docs/numerics.md, "Near-ties"


def hard_labels(logits, v):
    """The documented hard label of each row of logits t = S/ε + v (M, K), v (K,) the potentials:
    the row's first NaN if it holds one, else its lowest k with t_k >= max − TIE_WINDOW·(|max| +
    max_j |v_j| over the finite v_j), the window dropped when the max is infinite. Row by row in
    float64 NumPy; int64 tensor (M,)."""
    t = np.asarray(torch.as_tensor(logits).detach().double().cpu(), dtype=np.float64)
    a = np.abs(np.asarray(torch.as_tensor(v).detach().double().cpu(), dtype=np.float64))
    scale = a[np.isfinite(a)].max(initial=0.0)
    labels = []
    for row in t:
        nan = np.flatnonzero(np.isnan(row))
        if nan.size:
            labels.append(nan[0])
            continue
        top = row.max()
        threshold = top - TIE_WINDOW * (abs(top) + scale) if np.isfinite(top) else top
        labels.append(np.flatnonzero(row >= threshold)[0])
    return torch.tensor(labels, dtype=torch.int64)


# --- prototype cross-entropy ------------------------------------------------------------------

def prototype_logits(z, prototypes, temperature=1.0):
    """normalize(z)·prototypesᵀ/τ (M, K): cosine scores when prototypes have unit rows."""
    return F.normalize(z, dim=1) @ prototypes.T / temperature


def cross_entropy(logits, target):
    """Mean over rows of -Σ_k t_ik·log softmax_k(logits_i); target int indices (M,) or
    probabilities (M, K) (rows need not sum to 1)."""
    log_p = torch.log_softmax(logits, dim=1)
    if target.is_floating_point():
        return -(target.to(log_p.dtype) * log_p).sum(dim=1).mean()
    return -log_p.gather(1, target[:, None]).mean()


def cross_entropy_f64(z, prototypes, target, temperature):
    """`cross_entropy` of `prototype_logits` in float64 on array-like inputs -> Python float."""
    z, c = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (z, prototypes))
    t = torch.as_tensor(np.asarray(target))
    return cross_entropy(prototype_logits(z, c, temperature), t).item()


# --- the swapped Sinkhorn loss ----------------------------------------------------------------

def swap_loss_terms(zv, zp, c, epsilon, n_iters, temperature, targets):
    """The two terms of the swapped loss: (CE(S_v/τ, target(Q_p)), CE(S_p/τ, target(Q_v))).

    S_v = normalize(zv)·cᵀ with c held constant (the video-model branch does not train the
    prototypes), S_p = normalize(zp)·cᵀ; Q = sinkhorn_log(S) is a constant; the target is Q's
    rows ("soft") or their `hard_labels` ("hard"). c must already have unit rows.
    """
    s_v = F.normalize(zv, dim=1) @ c.detach().T
    s_p = F.normalize(zp, dim=1) @ c.T

    def target(s):
        q, _, v = sinkhorn_log(s.detach(), epsilon, n_iters)
        return q if targets == "soft" else hard_labels(s.detach() / epsilon + v, v)
    return cross_entropy(s_v / temperature, target(s_p)), cross_entropy(s_p / temperature, target(s_v))


# --- low-precision criterion ------------------------------------------------------------------

def assert_no_worse_than_plain(ours, plain, truth, tol, name=""):
    """Element by element, |ours - truth| <= |plain - truth| + tol.

    `truth` is the float32 result on the unrounded inputs, `plain` the same computation in plain
    torch in the low-precision dtype, `ours` our op on the low-precision inputs: a kernel may
    not lose more than plain torch would, anywhere, beyond `tol` (a few units of float32
    rounding, far below a 0.1% error)."""
    ours, plain, truth = (t.detach().double() for t in (ours, plain, truth))
    excess = (ours - truth).abs() - ((plain - truth).abs() + tol)
    worst = int(excess.argmax()) if excess.numel() else 0
    assert excess.numel() == 0 or excess.flatten()[worst] <= 0, (
        f"{name}: element {worst}: |ours - truth| = {float((ours - truth).flatten()[worst].abs()):.3g} > "
        f"|plain - truth| = {float((plain - truth).flatten()[worst].abs()):.3g} + tol {tol:.3g}")
