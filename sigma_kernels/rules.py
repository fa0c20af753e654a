"""The input rules every sigma_kernels op applies, in one place: accepted dtypes, the dtype the
arithmetic runs in, the range of Sinkhorn potentials each dtype resolves, and the argument checks
(errors name the argument and what was expected).

Public so that callers (e.g. `sigma.losses`) check their own arguments the same way; backends
use `compute_dtype` too. Shape/dtype/device checks only: no host syncs, except the index-range
check on CPU tensors (free there); on accelerators it is a device-side assert."""
import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Largest max|u| + max|v| a Sinkhorn solve accepts, per compute dtype: the logits S/ε + u + v are
# then resolved to about 2^-10 per rounding (2^14 · 2^-24 in float32). Beyond it the plan's rows no
# longer sum to 1. Public so that a caller can check its ε up front: with scores bounded by 1 the
# potentials stay within about 3/ε (docs/numerics.md).
POTENTIAL_LIMIT = {torch.float32: 2.0 ** 14, torch.float64: 2.0 ** 43}


def compute_dtype(*tensors):
    """float64 if any input is float64, else float32 (fp16/bf16 are accumulated in fp32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# Hard labels treat logits within TIE_WINDOW·(|row max| + max_k |v_k|) of the row max as tied and
# take the lowest index among them (docs/numerics.md, "Near-ties"): 256 float32 ulps of the
# magnitudes the logits S·(1/ε) + v are computed from, so that rounding, which differs between
# backends and paths, never decides a label. kTieWindow in csrc/sigma_common.h is the same number.
TIE_WINDOW = 2.0 ** -16


def potential_scale(v):
    """max_k |v_k| over the finite entries of v (K,) (0 if none), 0-d in v's dtype: the potentials'
    part of the tie window. No host sync."""
    a = v.abs()
    return torch.where(a < math.inf, a, 0).amax()  # NaN and inf entries count as 0


def check_matrix(name, t):
    """A non-empty floating-point 2-D tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")


def check_vector(name, t, length, *, floating=True):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")


def check_shaped(name, t, shape, device):
    """A floating-point tensor of exactly `shape` on `device` (e.g. an (M, D) or (K, D) product)."""
    if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got "
                        f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the features are on {device}")


def check_same_device(**tensors):
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")


def check_features(z_name, z, c_name, c):
    """z (M, D) and c (K, D): both matrices, same D, same device."""
    check_matrix(z_name, z)
    check_matrix(c_name, c)
    if z.shape[1] != c.shape[1]:
        raise ValueError(f"{z_name} has D={z.shape[1]} features but {c_name} has D={c.shape[1]}; "
                         f"expected {z_name} (M, D) and {c_name} (K, D)")
    check_same_device(**{z_name: z, c_name: c})


def check_flag(name, value):
    """A yes/no option: a Python bool (a string such as "no" would read as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def _finite(value):
    """math.isfinite for a real number, written with comparisons so that torch.compile can trace
    it when the number is symbolic (dynamic=True makes Python floats SymFloats); NaN gives False."""
    return abs(value) < math.inf


def check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive real number, got {type(value).__name__}")
    if not (_finite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return float(value)


def check_epsilon(value, name="epsilon"):
    """ε > 0 whose 1/ε is a finite float32 (the kernels scale scores by it). Returns 1/ε.

    How small an ε the scores allow is checked on the solved potentials (docs/numerics.md)."""
    eps = check_positive(name, value)
    inv_eps = 1.0 / eps
    if not inv_eps <= torch.finfo(torch.float32).max:
        raise ValueError(f"{name}={value!r} is too small: 1/{name} = {inv_eps:.3g} overflows float32; "
                         f"{name} must be >= {1 / torch.finfo(torch.float32).max:.3g}")
    return inv_eps


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_tolerance(tol, check_every):
    """tol None/0 disables early stopping; otherwise a positive float checked every few iterations."""
    if tol is None:
        tol = 0.0
    elif isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not _finite(tol) or tol < 0:
        raise ValueError(f"tol must be None or a finite number >= 0, got {tol!r}")
    return float(tol), check_positive_int("check_every", check_every)


def check_sinkhorn_args(epsilon, n_iters, tol, check_every):
    """The scalar arguments every Sinkhorn solve takes -> (1/ε, n_iters, tol, check_every)."""
    inv_eps = check_epsilon(epsilon)
    n_iters = check_positive_int("n_iters", n_iters)
    tol, check_every = check_tolerance(tol, check_every)
    return inv_eps, n_iters, tol, check_every


def check_target(target, m, k, device):
    """int64 class indices (M,) in [0, K) or floating probabilities (M, K). Returns 'hard'/'soft'."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != device:
        raise ValueError(f"target is on {target.device} but the features are on {device}")
    if target.is_floating_point():
        if target.dtype not in FLOAT_DTYPES:
            raise TypeError(f"probability target must be float16/bfloat16/float32/float64, got {target.dtype}")
        if tuple(target.shape) != (m, k):
            raise ValueError(f"probability target must have shape (M, K) = ({m}, {k}), got {tuple(target.shape)}")
        return "soft"
    if target.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"target must be int64 class indices (M,) or float probabilities (M, K), got {target.dtype}")
    if tuple(target.shape) != (m,):
        raise ValueError(f"index target must have shape (M,) = ({m},), got {tuple(target.shape)}")
    check_index_range("target", target, k)
    return "hard"


def check_index_range(name, index, k):
    if torch.compiler.is_compiling():
        return
    if index.device.type == "cpu":
        if index.numel() and bool(((index < 0) | (index >= k)).any()):
            bad = index[(index < 0) | (index >= k)][0].item()
            raise ValueError(f"{name} holds class index {bad}, outside [0, K) with K={k}")
    else:
        torch._assert_async(((index >= 0) & (index < k)).all(), f"{name} holds a class index outside [0, K)")
