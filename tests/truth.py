"""Independent float64 computations (NumPy, not torch) that the reference is checked against."""
import numpy as np


def _lse(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def sinkhorn_log_f64(scores, epsilon, n_iters):
    """docs/sinkhorn.md in float64, log domain. Returns (Q, u, v) as NumPy arrays."""
    s = np.asarray(scores, dtype=np.float64) / epsilon
    m, k = s.shape
    u, v = np.zeros(m), np.zeros(k)
    for _ in range(n_iters):
        v = -np.log(k) - _lse(s + u[:, None], axis=0)
        u = -np.log(m) - _lse(s + v[None, :], axis=1)
    return m * np.exp(s + u[:, None] + v[None, :]), u, v


def sinkhorn_exp_f64(scores, epsilon, n_iters):
    """The plain exp-domain (SwAV-style) iteration in float64: scale columns, then rows."""
    s = np.asarray(scores, dtype=np.float64)
    m, k = s.shape
    p = np.exp(s / epsilon)
    p /= p.sum()
    for _ in range(n_iters):
        p /= p.sum(axis=0, keepdims=True) * k
        p /= p.sum(axis=1, keepdims=True) * m
    return p * m


def cross_entropy_f64(z, prototypes, target, temperature):
    """Mean CE of softmax(normalize(z)·Cᵀ/τ) against int indices (M,) or probabilities (M, K)."""
    z = np.asarray(z, dtype=np.float64)
    c = np.asarray(prototypes, dtype=np.float64)
    x = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    logits = x @ c.T / temperature
    logp = logits - _lse(logits, axis=1)[:, None]
    t = np.asarray(target)
    if t.ndim == 1:
        return -logp[np.arange(len(t)), t].mean()
    return -(t.astype(np.float64) * logp).sum(axis=1).mean()
