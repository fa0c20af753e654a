"""The released research code's algorithms, restated by us in eager PyTorch (docs/method.md).

This is the "research-code style" baseline of the benchmarks: the same computation, done the way
the released code does it (whole M×K matrices, an exp-domain Sinkhorn without max-subtraction,
hard argmax targets, `F.cross_entropy`). It is written from the description in docs/, not copied.

Numerics, on purpose: `research_sinkhorn` computes exp(S/ε) in float32 directly, so it overflows
once 1/ε > 88.7 (|S| ≤ 1) and loses tokens to underflow well before; that is part of what the
benchmarks measure. It is mathematically the log-domain iteration of docs/sinkhorn.md (prototype step
first, then token step, from zero potentials), so where nothing over/underflows it agrees with
`sigma_kernels.sinkhorn`.
"""
import torch
import torch.nn.functional as F

TARGETS = ("hard", "soft")


def research_sinkhorn(scores, epsilon=0.05, n_iters=3):
    """Exp-domain balanced Sinkhorn on scores (M, K) -> Q (M, K) float32, token rows summing to 1.

    Works on the transposed plan (K, M): normalise by the grand total, then per iteration give
    every prototype (row of the transposed plan) mass 1/K and every token (column) mass 1/M;
    finally scale by M so that each token's row sums to 1, and transpose back (a view).
    In-place updates, as in the released code, so its memory figure is not inflated.
    """
    q = torch.exp(scores.float() / epsilon).T  # no max-subtraction: this is the point
    n_prototypes, n_tokens = q.shape
    q /= q.sum()
    for _ in range(n_iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= n_tokens
    q *= n_tokens
    return q.T


def research_loss(z_video, z_proj, prototypes, epsilon=0.05, n_iters=10, temperature=0.1, targets="hard"):
    """The whole SIGMA loss, research-code style (docs/method.md), float32.

    z_video, z_proj: (M, D) predictions of the video model and features of the projection
    network for the same masked tubes; prototypes: (K, D), already renormalised to unit rows by
    the caller (the released code does that in place, without grad, at the start of forward).
    Materialises both score matrices, runs `research_sinkhorn` on each under no_grad, takes hard
    argmax targets (or Q itself for targets="soft") and sums the two swapped cross-entropies.
    The prototypes are detached in the video branch's scores. Returns a scalar.
    """
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    x_video = F.normalize(z_video.float(), dim=-1)
    x_proj = F.normalize(z_proj.float(), dim=-1)
    c = prototypes.float()
    s_video = x_video @ c.detach().T
    s_proj = x_proj @ c.T
    with torch.no_grad():
        q_video = research_sinkhorn(s_video.detach(), epsilon, n_iters)
        q_proj = research_sinkhorn(s_proj.detach(), epsilon, n_iters)
        if targets == "hard":
            t_video, t_proj = q_video.argmax(dim=1), q_proj.argmax(dim=1)
        else:
            t_video, t_proj = q_video, q_proj
    return F.cross_entropy(s_video / temperature, t_proj) + F.cross_entropy(s_proj / temperature, t_video)
