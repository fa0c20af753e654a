"""Public Sinkhorn-Knopp API (balanced, log-domain; see docs/sinkhorn.md).

All functions run without autograd (Sinkhorn targets are constants of the loss) and return
float32 tensors (float64 for float64 input).
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import _sinkhorn_ops as ops
from . import rules
from .backends import resolve_backend
from .rules import compute_dtype

__all__ = ["SinkhornResult", "normalize_rows", "sinkhorn", "sinkhorn_assign", "sinkhorn_assign_from_potentials",
           "sinkhorn_assign_from_potentials_streaming", "sinkhorn_assign_streaming", "sinkhorn_potentials",
           "sinkhorn_solve", "sinkhorn_streaming"]


class SinkhornResult(NamedTuple):
    """u (M,), v (K,) as in docs/sinkhorn.md, and the column marginal error Σ_k |Σ_i P_ik - 1/K| ()."""
    u: torch.Tensor
    v: torch.Tensor
    marginal_error: torch.Tensor


def _solve_scores(scores, epsilon, n_iters, tol, check_every, backend):
    """Validate, pick the backend and solve: (detached scores, inv_eps, backend name, (u, v, error))."""
    rules.check_matrix("scores", scores)
    inv_eps, n_iters, tol, check_every = rules.check_sinkhorn_args(epsilon, n_iters, tol, check_every)
    name = resolve_backend(backend, scores.device, scores.dtype)
    s = scores.detach()
    return s, inv_eps, name, ops.sinkhorn_solve(s, inv_eps, n_iters, tol, check_every, name)


def sinkhorn_solve(scores, epsilon=0.05, n_iters=3, *, tol=None, check_every=5, backend="auto"):
    """Balanced Sinkhorn on a score matrix.

    scores: (M, K) float16/bfloat16/float32/float64 (e.g. cosine similarities).
    epsilon: entropic regularisation ε > 0 (Q ∝ exp(S/ε)). n_iters: (prototype, token)
    normalisation pairs. tol: optional early stop on the marginal error, checked every
    `check_every` iterations (one host sync per check). Returns a SinkhornResult.
    """
    return SinkhornResult(*_solve_scores(scores, epsilon, n_iters, tol, check_every, backend)[3])


def sinkhorn_potentials(scores, epsilon=0.05, n_iters=3, *, tol=None, check_every=5, backend="auto"):
    """(u (M,), v (K,)) of `sinkhorn_solve`; Q_ik = M·exp(S_ik/ε + u_i + v_k)."""
    u, v, _ = sinkhorn_solve(scores, epsilon, n_iters, tol=tol, check_every=check_every, backend=backend)
    return u, v


def sinkhorn(scores, epsilon=0.05, n_iters=3, *, tol=None, check_every=5, backend="auto"):
    """Balanced assignment Q (M, K): rows sum to 1, columns to M/K (at convergence)."""
    rules.check_matrix("scores", scores)
    inv_eps, n_iters, tol, check_every = rules.check_sinkhorn_args(epsilon, n_iters, tol, check_every)
    name = resolve_backend(backend, scores.device, scores.dtype)
    return ops.sinkhorn_transport(scores.detach(), inv_eps, n_iters, tol, check_every, name)


def sinkhorn_assign(scores, epsilon=0.05, n_iters=3, *, tol=None, check_every=5, backend="auto"):
    """Hard assignment argmax_k Q_ik (int64 (M,), near-ties to the lowest index: docs/numerics.md)
    without building Q."""
    s, inv_eps, name, (_, v, _) = _solve_scores(scores, epsilon, n_iters, tol, check_every, backend)
    return ops.sinkhorn_assign(s, v, inv_eps, name)


def sinkhorn_assign_from_potentials(scores, v, epsilon, *, return_entropy=False, backend="auto"):
    """Hard labels argmax_k (S_ik/ε + v_k) (int64 (M,)) of an already solved Sinkhorn, given its
    prototype potentials v (K,) (e.g. `sinkhorn_solve(...).v`); Q's rows are softmax_k(S_i/ε + v),
    so v alone fixes them. return_entropy=True returns (labels, Σ_i H(Q_i·)) with the rows'
    entropies (nats) summed into a 0-d float tensor, computed in the same pass over the scores."""
    rules.check_matrix("scores", scores)
    rules.check_vector("v", v, scores.shape[1])
    rules.check_same_device(scores=scores, v=v)
    inv_eps = rules.check_epsilon(epsilon)
    rules.check_flag("return_entropy", return_entropy)
    name = resolve_backend(backend, scores.device, scores.dtype)
    v = v.detach().to(compute_dtype(scores))
    if return_entropy:
        return ops.sinkhorn_assign_entropy(scores.detach(), v, inv_eps, name)
    return ops.sinkhorn_assign(scores.detach(), v, inv_eps, name)


_NORM_EPS = 1e-12


def _pow2_row_scale(x):
    """Per-row power of two 2^-e (..., 1) bringing max_j |x_ij| into [0.5, 1), and whether the row is
    finite (...,). Scaling by a power of two is exact, so the normalised rows and their gradients are
    bitwise those of the unscaled rows wherever ‖x‖² neither overflows nor underflows."""
    amax = torch.maximum(x.amax(dim=-1, keepdim=True), -x.amin(dim=-1, keepdim=True))  # NaN-propagating
    finite = torch.isfinite(amax)
    _, e = torch.frexp(amax)
    fi = torch.finfo(x.dtype)
    # 0, NaN and inf rows keep scale 1 (they normalise to 0 / NaN as before); the clamp keeps 2^-e a
    # normal number (subnormal rows are scaled as far as one normal factor allows).
    lo, hi = math.frexp(fi.tiny)[1], math.frexp(fi.max)[1] - 2
    e = torch.where(finite & (amax > 0), e, 0).clamp(lo, hi)
    # 2^-e from its exponent bits (exact; torch.ldexp would allocate a broadcast temporary)
    bits, ibits = (52, torch.int64) if x.dtype == torch.float64 else (23, torch.int32)
    bias = 2 - lo  # 127 / 1023
    return ((bias - e.to(ibits)) << bits).view(x.dtype), finite.squeeze(-1)


def _normalize_rows_flagged(z):
    """(normalize_rows(z), (M,) bool: row i of z was finite)."""
    x = z.to(compute_dtype(z))
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        # On CPU (a host read is free) skip the rescaling pass when no row needs it: then this is
        # exactly F.normalize, and every row is finite.
        n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        if bool(((n >= _NORM_EPS) & (n < math.inf)).all()):
            return x / n.clamp_min(_NORM_EPS), torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
    scale, finite = _pow2_row_scale(x.detach())
    return F.normalize(x * scale, dim=-1, eps=_NORM_EPS), finite


def normalize_rows(z):
    """z / ‖z‖ per row in float32 (float64 stays float64); differentiable.

    Scale-safe: rows are first scaled by an exact power of two, so magnitudes whose squares
    overflow (|z| ≳ 1e19 in float32) or underflow still give unit rows. A zero row stays zero;
    a row holding inf or NaN becomes NaN.
    """
    return _normalize_rows_flagged(z)[0]


def _streaming_operands(z, prototypes, normalize, backend):
    rules.check_features("z", z, "prototypes", prototypes)
    dt = compute_dtype(z, prototypes)
    x = normalize_rows(z.detach()) if normalize else z.detach().to(dt)
    c = prototypes.detach().to(dt)
    name = resolve_backend(backend, z.device, dt)
    return x, c, name


def sinkhorn_streaming(z, prototypes, epsilon=0.05, n_iters=3, *, normalize=True, tol=None, check_every=5,
                       backend="auto"):
    """Sinkhorn on S = normalize(z)·prototypesᵀ without storing S (in the fused backends).

    z: (M, D), prototypes: (K, D), used as given (normalise them yourself if needed).
    normalize=False uses z as given. Returns a SinkhornResult.
    """
    inv_eps, n_iters, tol, check_every = rules.check_sinkhorn_args(epsilon, n_iters, tol, check_every)
    x, c, name = _streaming_operands(z, prototypes, normalize, backend)
    return SinkhornResult(*ops.sinkhorn_solve_streaming(x, c, inv_eps, n_iters, tol, check_every, name))


def sinkhorn_assign_from_potentials_streaming(z, prototypes, v, epsilon, *, normalize=True, return_entropy=False,
                                              backend="auto"):
    """`sinkhorn_assign_from_potentials` for S = normalize(z)·prototypesᵀ, never storing S
    (fused backends): int64 (M,) labels argmax_k (S_ik/ε + v_k) (and the entropy sum with
    return_entropy=True)."""
    x, c, name = _streaming_operands(z, prototypes, normalize, backend)
    rules.check_vector("v", v, c.shape[0])
    rules.check_same_device(z=z, v=v)
    inv_eps = rules.check_epsilon(epsilon)
    if rules.check_flag("return_entropy", return_entropy):
        return ops.sinkhorn_assign_entropy_streaming(x, c, v.detach().to(x.dtype), inv_eps, name)
    return ops.sinkhorn_assign_streaming(x, c, v.detach().to(x.dtype), inv_eps, name)


def sinkhorn_assign_streaming(z, prototypes, epsilon=0.05, n_iters=3, *, normalize=True, tol=None,
                              check_every=5, backend="auto"):
    """Hard Sinkhorn assignment (int64 (M,)) of normalize(z)·prototypesᵀ, never storing S."""
    inv_eps, n_iters, tol, check_every = rules.check_sinkhorn_args(epsilon, n_iters, tol, check_every)
    x, c, name = _streaming_operands(z, prototypes, normalize, backend)
    _, v, _ = ops.sinkhorn_solve_streaming(x, c, inv_eps, n_iters, tol, check_every, name)
    return ops.sinkhorn_assign_streaming(x, c, v, inv_eps, name)
