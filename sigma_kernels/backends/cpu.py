"""CPU backend: the compiled extension `sigma_kernels._C` (sources in csrc/).

Every primitive of `sigma_kernels.backends` (see reference.py for the equations) maps to one
op `torch.ops.sigma_kernels_ext.<name>`: multi-threaded over fixed row chunks (128 rows of
stored scores, 256 rows where a GEMM makes the chunk; at::parallel_for with
torch.get_num_threads() threads), vectorised (AVX2, AVX-512 loops chosen at run time), fp32
accumulation, fp32 results (dx and dc in the dtypes of x and c). Sinkhorn results are bitwise
independent of the thread count; the cross-entropy dc is summed over per-thread partials, so it
may differ in the last bits. On CUDA tensors only sinkhorn_row_step / sinkhorn_col_lse have
kernels (csrc/cuda, when built with nvcc); this backend serves CPU tensors.
"""
import torch

DEVICE_TYPES = ("cpu",)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# Ops this module calls; a build of the extension from older sources lacks some of them.
_OPS = ("sinkhorn_col_lse", "sinkhorn_row_step", "sinkhorn_assign", "sinkhorn_plan", "sinkhorn_solve_dense",
        "sinkhorn_assign_entropy", "row_logsumexp", "streaming_col_lse", "streaming_row_step", "streaming_assign",
        "streaming_assign_entropy", "linear_cross_entropy_forward", "linear_cross_entropy_backward",
        "scores_product", "softmax_products", "swapped_softmax_products",
        "sinkhorn_target_cross_entropy_forward", "sinkhorn_target_cross_entropy_backward")


def unavailable_reason():
    try:
        from sigma_kernels import _C  # noqa: F401  (registers torch.ops.sigma_kernels_ext)
    except ImportError as exc:
        return f"the compiled extension is not built ({exc}); reinstall with `pip install --no-build-isolation -e .`"
    missing = [name for name in _OPS if not hasattr(torch.ops.sigma_kernels_ext, name)]
    if missing:
        return (f"the compiled extension is out of date (no op {', '.join(missing)}); rebuild it with "
                "`python setup.py build_ext --inplace` (or reinstall)")
    return None


def _ops():
    return torch.ops.sigma_kernels_ext


# --- Sinkhorn on materialised scores ------------------------------------------------------

def sinkhorn_col_lse(scores, u, inv_eps):
    return _ops().sinkhorn_col_lse(scores, u, float(inv_eps))


def sinkhorn_row_step(scores, v, inv_eps, log_m):
    return tuple(_ops().sinkhorn_row_step(scores, v, float(inv_eps), float(log_m)))


def sinkhorn_assign(scores, v, inv_eps):
    return _ops().sinkhorn_assign(scores, v, float(inv_eps))


def sinkhorn_plan(scores, u, v, inv_eps, log_m):
    return _ops().sinkhorn_plan(scores, u, v, float(inv_eps), float(log_m))


def scores_product(x, c):
    """x·cᵀ (M, K) as torch.mm, into a buffer given the huge-page hint (csrc/sigma_common.h)."""
    return _ops().scores_product(x, c)


def row_logsumexp(scores, scale):
    return _ops().row_logsumexp(scores, float(scale))


def sinkhorn_assign_entropy(scores, v, inv_eps):
    return tuple(_ops().sinkhorn_assign_entropy(scores, v, float(inv_eps), True))


def sinkhorn_solve_dense(scores, inv_eps, n_iters, tol, check_every, want_plan):
    """The whole solve in one op, in the exp domain where that is exact (see csrc/sinkhorn_cpu.cpp
    and docs/performance.md): (u, v, marginal_error, plan (M, K) or None)."""
    u, v, err, plan = _ops().sinkhorn_solve_dense(scores, float(inv_eps), int(n_iters), float(tol),
                                                  int(check_every), bool(want_plan))
    return u, v, err, (plan if want_plan else None)


# --- Sinkhorn on factored scores S = x·cᵀ (row chunks recomputed with GEMMs) ---------------

def streaming_col_lse(x, c, u, inv_eps):
    return _ops().streaming_col_lse(x, c, u, float(inv_eps))


def streaming_row_step(x, c, v, inv_eps, log_m):
    return tuple(_ops().streaming_row_step(x, c, v, float(inv_eps), float(log_m)))


def streaming_assign(x, c, v, inv_eps):
    return _ops().streaming_assign(x, c, v, float(inv_eps))


def streaming_assign_entropy(x, c, v, inv_eps):
    return tuple(_ops().streaming_assign_entropy(x, c, v, float(inv_eps), True))


# --- Fused linear + cross-entropy ---------------------------------------------------------

def linear_cross_entropy_forward(x, c, target, scale):
    return tuple(_ops().linear_cross_entropy_forward(x, c, target, float(scale)))


def _asked(grads, need_dx, need_dc):
    """The op returns an empty tensor for a gradient not asked for; the primitive returns None."""
    dx, dc = grads
    return (dx if need_dx else None), (dc if need_dc else None)


def linear_cross_entropy_backward(grad_rows, x, c, target, lse, scale, need_dx=True, need_dc=True):
    return _asked(_ops().linear_cross_entropy_backward(grad_rows, x, c, target, lse, float(scale), bool(need_dx),
                                                       bool(need_dc)), need_dx, need_dc)


def softmax_products(scores, scale, v, c, x, labels=False):
    lse, pc, px, lab, ent = _ops().softmax_products(scores, float(scale), v, c, x, bool(labels))
    return lse, pc, (px if x is not None else None), (lab if labels else None), (ent if labels else None)


def swapped_softmax_products(scores, xb, c, va, vb, inv_eps, scale, xa, grad_b, labels=False):
    ce, g, ha, hb, lab, ent = _ops().swapped_softmax_products(scores, xb, c, va, vb, float(inv_eps), float(scale), xa,
                                                              xb if grad_b else None, bool(labels))
    return (ce, g, (ha if xa is not None else None), (hb if grad_b else None), (lab if labels else None),
            (ent if labels else None))


def sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, inv_eps, scale, soft):
    return tuple(_ops().sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, float(inv_eps), float(scale),
                                                              bool(soft)))


def sinkhorn_target_cross_entropy_backward(grad_rows, x, c, y, cy, v, lse, inv_eps, scale, soft,
                                           need_dx=True, need_dc=True):
    return _asked(_ops().sinkhorn_target_cross_entropy_backward(grad_rows, x, c, y, cy, v, lse, float(inv_eps),
                                                                float(scale), bool(soft), bool(need_dx),
                                                                bool(need_dc)), need_dx, need_dc)
