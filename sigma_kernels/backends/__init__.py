"""Backend registry: which implementations of the primitive ops exist, and which one to use.

A backend is a module exposing the primitives below (see `reference.py` for their exact
equations). Every backend must agree with `reference` to floating-point tolerance.

    SUPPORTED_DTYPES                         input dtypes it accepts
    sinkhorn_col_lse(S, u, inv_eps)          -> (K,)
    sinkhorn_row_step(S, v, inv_eps, log_m)  -> (u (M,), col (K,))
    sinkhorn_assign(S, v, inv_eps)           -> int64 (M,)
    sinkhorn_assign_entropy(S, v, inv_eps)   -> (labels int64 (M,), Σ_i H(softmax_k(S_ik·inv_eps + v_k)) 0-d)
    sinkhorn_plan(S, u, v, inv_eps, log_m)   -> (M, K)
    row_logsumexp(S, scale)                  -> LSE_k(S_ik·scale) (M,)
    streaming_col_lse(x, c, u, inv_eps)      the same three with S = x·cᵀ never stored
    streaming_row_step(x, c, v, inv_eps, log_m)
    streaming_assign(x, c, v, inv_eps)
    streaming_assign_entropy(x, c, v, inv_eps)
    linear_cross_entropy_forward(x, c, target, scale)              -> (loss (M,), lse (M,))
    linear_cross_entropy_backward(g, x, c, target, lse, scale, need_dx=True, need_dc=True) -> (dx, dc)
    sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, inv_eps, scale, soft)
    sinkhorn_target_cross_entropy_backward(g, x, c, y, cy, v, lse, inv_eps, scale, soft,
                                           need_dx=True, need_dc=True)
        (the backwards return None for a gradient not asked for, and skip computing it)

Optional fused primitives (None when a backend lacks them; the custom ops then run the plain-torch
composition of the same name in `composed.py`, or for sinkhorn_solve_dense the loop of
`_sinkhorn_loop.py` over the primitives above):
    sinkhorn_solve_dense(S, inv_eps, n_iters, tol, check_every, want_plan)
        -> (u, v, marginal_error, plan or None): the whole solve in one call
    scores_product(x, c) -> x·cᵀ (M, K) (x, c of one float dtype), equal to torch.mm, in memory
        that is cheaper to fill the first time (no autograd)
    softmax_products(S, scale, v, c, x, labels=False) -> (LSE_k(S·scale + v) (M,), P·c (M, D),
        Pᵀ·x (K, D) or None, labels or None, Σ_i H(P_i·) or None) for P = softmax_k(S·scale + v)
        (v (K,) and x (M, D) may be None), without storing P; labels/entropy as
        sinkhorn_assign_entropy(S, v, scale)
    swapped_softmax_products(S_a, x_b, c, v_a, v_b, inv_eps, scale, x_a, grad_b, labels=False)
        -> (CE rows (2, M), (P − Q')·c (2, M, D), (P_a − Q_b)ᵀ·x_a (K, D) or None,
        (P_b − Q_a)ᵀ·x_b (K, D) or None, labels of Q_a, Q_b (2, M) or None, their Σ_i H (2,) or None)
        for two branches over the same rows, S_a stored and S_b = x_b·cᵀ recomputed in row chunks:
        P = softmax_k(S·scale), Q = softmax_k(S·inv_eps + v), term 0 P_a against Q_b, term 1 P_b
        against Q_a, CE_i = LSE_k(S·scale)_i − scale·Σ_k Q'_ik·S_ik; neither S_b nor any P, Q stored
    streaming_swapped_softmax_products(x_a, x_b, c, v_a, v_b, inv_eps, scale, grad_b, labels=False)
        -> the same with S_a = x_a·cᵀ recomputed too (no M×K array at all), (P_a − Q_b)ᵀ·x_a always

A skipped gradient is None in every Python layer (primitives, autograd). Only the two op schemas
that cannot return None, the compiled `sigma_kernels_ext` ops and the `torch.library` ops
(`_sinkhorn_ops.py`, `_cross_entropy_ops.py`), carry it as an empty (0,) tensor; the layer above
turns it back into None from the need_dx / need_dc flags (never from the tensor's size).

A backend may leave a primitive out; the reference one is then used for it, and
`backend_info()` lists it under "fallbacks" so the gap is visible.

Choice: an explicit `backend=` wins; with "auto", the environment variable
SIGMA_KERNELS_BACKEND (if set) decides; otherwise CUDA tensors get "triton" when it is
available, CPU tensors get "cpu" when the compiled extension is built, and anything else
gets "reference". "auto" never picks "cuda" (the extension's plain CUDA kernels): it is
reachable by name only, until measured faster than Triton on a GPU.
"""
import importlib
import os
import types

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
ENV_VAR = "SIGMA_KERNELS_BACKEND"

PRIMITIVES = (
    "sinkhorn_col_lse",
    "sinkhorn_row_step",
    "sinkhorn_assign",
    "sinkhorn_assign_entropy",
    "sinkhorn_plan",
    "row_logsumexp",
    "streaming_col_lse",
    "streaming_row_step",
    "streaming_assign",
    "streaming_assign_entropy",
    "linear_cross_entropy_forward",
    "linear_cross_entropy_backward",
    "sinkhorn_target_cross_entropy_forward",
    "sinkhorn_target_cross_entropy_backward",
)
OPTIONAL_PRIMITIVES = ("sinkhorn_solve_dense", "scores_product", "softmax_products", "swapped_softmax_products",
                       "streaming_swapped_softmax_products")

_MODULES = {
    "reference": "sigma_kernels.backends.reference",
    "cpu": "sigma_kernels.backends.cpu",
    "triton": "sigma_kernels.backends.triton",
    "cuda": "sigma_kernels.backends.cuda",
}


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is asked for but cannot run here."""


_cache = {}


def _load(name):
    """Return (namespace, None) or (None, reason)."""
    if name in _cache:
        return _cache[name]
    try:
        module = importlib.import_module(_MODULES[name])
        check = getattr(module, "unavailable_reason", None)
        reason = check() if check is not None else None
    except Exception as exc:  # an optional backend that fails to import is just unavailable
        module, reason = None, f"{type(exc).__name__}: {exc}"
    if reason is not None:
        result = (None, reason)
    else:
        reference = importlib.import_module(_MODULES["reference"])
        fallbacks = tuple(p for p in PRIMITIVES if not hasattr(module, p))
        ns = types.SimpleNamespace(
            name=name,
            supported_dtypes=getattr(module, "SUPPORTED_DTYPES", reference.SUPPORTED_DTYPES),
            device_types=getattr(module, "DEVICE_TYPES", None),
            fallbacks=fallbacks,
            **{p: getattr(module, p, getattr(reference, p)) for p in PRIMITIVES},
            **{p: getattr(module, p, None) for p in OPTIONAL_PRIMITIVES},
        )
        result = (ns, None)
    _cache[name] = result
    return result


def get_backend(name):
    """The backend namespace for `name`; BackendUnavailableError says why if it cannot run."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    ns, reason = _load(name)
    if ns is None:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    return ns


@torch.compiler.assume_constant_result
def provides(name, primitive):
    """Whether backend `name` has its own implementation of the optional primitive `primitive`
    (rather than the plain-torch composition of `composed.py`)."""
    if primitive not in OPTIONAL_PRIMITIVES:
        raise ValueError(f"primitive must be one of {OPTIONAL_PRIMITIVES}, got {primitive!r}")
    return getattr(get_backend(name), primitive) is not None


def is_available(name):
    return name in BACKENDS and _load(name)[0] is not None


def available_backends():
    """Names of the backends that can run in this process."""
    return [b for b in BACKENDS if is_available(b)]


def backend_info():
    """{name: {"available": bool, "reason": str|None, "fallbacks": tuple}} for every backend."""
    info = {}
    for b in BACKENDS:
        ns, reason = _load(b)
        info[b] = {"available": ns is not None, "reason": reason,
                   "fallbacks": ns.fallbacks if ns is not None else ()}
    return info


def resolve_backend(backend, device, dtype=None):
    """Turn a `backend=` argument into a concrete backend name for tensors on `device`."""
    # torch.compile runs this once at trace time and bakes in the name (no import tracing).
    return _resolve_backend_cached(backend, str(torch.device(device)), dtype, os.environ.get(ENV_VAR, ""))


@torch.compiler.assume_constant_result
def _resolve_backend_cached(backend, device, dtype, env):
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        env = env.strip()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"{ENV_VAR} must be one of {('auto',) + BACKENDS}, got {env!r}")
            backend = env
    if backend == "auto":
        device = torch.device(device)
        if dtype == torch.float64:
            return "reference"  # the kernels are single-precision; float64 is for checking
        if device.type == "cuda" and is_available("triton"):
            return "triton"
        if device.type == "cpu" and is_available("cpu"):
            return "cpu"
        return "reference"
    ns = get_backend(backend)
    if dtype is not None and dtype not in ns.supported_dtypes:
        raise TypeError(f"backend {backend!r} does not support dtype {dtype}; "
                        f"supported: {list(ns.supported_dtypes)} (use backend='reference')")
    if ns.device_types is not None and torch.device(device).type not in ns.device_types:
        raise ValueError(f"backend {backend!r} runs on {list(ns.device_types)} tensors, "
                         f"got tensors on {torch.device(device)}")
    return backend
