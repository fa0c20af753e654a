"""Plain-torch compositions that stand in for the optional fused primitives of
`backends/__init__.py` (all but `sinkhorn_solve_dense`) when a backend lacks one. Same contracts as
the primitives; they trade the fused single pass for materialised temporaries (P whole for
softmax_products, row chunks of about _SWAPPED_CHUNK_SCORES scores for the swapped products).
"""
import torch

from ..rules import compute_dtype
from . import reference

# Rows per chunk of the swapped products: about 4M scores per temporary.
_SWAPPED_CHUNK_SCORES = 1 << 22


def scores_product(x, c):
    return x @ c.T


def softmax_products(scores, scale, v, c, x, labels=False):
    dt = compute_dtype(scores, c)
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
        lab, ent = reference.sinkhorn_assign_entropy(scores, vv.to(dt), scale)
    return lse, pc, px, lab, ent


def swapped_softmax_products(scores, xb, c, va, vb, inv_eps, scale, xa, grad_b, labels=False):
    dt = compute_dtype(scores, c)
    return _swapped_by_chunks(lambda rows: scores[rows].to(dt), scores.shape[0], xb, c, va, vb, inv_eps, scale,
                              xa, grad_b, labels, dt)


def streaming_swapped_softmax_products(xa, xb, c, va, vb, inv_eps, scale, grad_b, labels=False):
    dt = compute_dtype(xa, c)
    cd = c.to(dt)
    return _swapped_by_chunks(lambda rows: xa[rows].to(dt) @ cd.T, xa.shape[0], xb, c, va, vb, inv_eps, scale,
                              xa, grad_b, labels, dt)


def _swapped_by_chunks(scores_a_rows, m, xb, c, va, vb, inv_eps, scale, xa, grad_b, labels, dt):
    """The swapped products over row chunks; scores_a_rows(slice) gives S_a's rows in dt."""
    k, d = c.shape
    cd = c.to(dt)
    ce = cd.new_empty((2, m))
    g = cd.new_empty((2, m, d))
    feats = (xa, xb if grad_b else None)
    h = [cd.new_zeros((k, d)) if x is not None else None for x in feats]
    lab = cd.new_empty((2, m), dtype=torch.int64) if labels else None
    ent = [cd.new_zeros(()), cd.new_zeros(())] if labels else None
    step = max(1, _SWAPPED_CHUNK_SCORES // max(k, 1))
    for r0 in range(0, m, step):
        rows = slice(r0, min(r0 + step, m))
        s = (scores_a_rows(rows), xb[rows].to(dt) @ cd.T)
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
                lab[side, rows], e = reference.sinkhorn_assign_entropy(s[side], v[side], inv_eps)
                ent[side] = ent[side] + e
    return ce, g, h[0], h[1], lab, (torch.stack(ent) if labels else None)
