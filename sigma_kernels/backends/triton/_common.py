"""Shared pieces of the Triton kernels: block-size heuristics, the score-tile loader, launch helpers.

Block sizes are fixed by small Python heuristics (no autotuning: autotune with several configs
needs a GPU driver, and the interpreter runs the same kernels). Under TRITON_INTERPRET=1 every
program instance is slow Python, so the heuristics pick few, large blocks there.
"""
import contextlib
import functools
import inspect
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Precision of tl.dot on fp32 score operands (the public API always passes fp32 factors).
# "tf32x3" runs on tensor cores with close to fp32 accuracy, at three MMAs per tile; plain "tf32"
# (one MMA) rounds every operand to 10 mantissa bits, an error that 1/ε = 20-33 then multiplies
# in the logits (docs/sinkhorn.md); "ieee" is exact fp32 without tensor cores. fp16/bf16 operands are
# multiplied exactly with fp32 accumulation whatever this says. tf32x3 is the default because it
# keeps the fp32 accuracy the tests demand; whether "ieee" or "tf32" is worth its trade on a given
# GPU is for benchmarks/gpu_check.sh to measure, hence the environment variable.
DOT_PRECISION = os.environ.get("SIGMA_TRITON_DOT_PRECISION", "tf32x3")


class BlockConfig:
    """Block-size knobs. Tests shrink them (see `override_blocks`) to exercise multi-tile paths.

    Kernels that recompute scores with tl.dot use block_m x block_k tiles stepping block_d
    features at a time (block_d_backward in the cross-entropy backward, whose dx / dc outputs
    are block_d_out wide), dot_warps warps and dot_stages pipeline stages. Kernels that only
    read a materialised S use block_m_scores x block_k_scores tiles; the fused Sinkhorn step
    keeps whole rows (up to max_single_k columns) in a tile of at most single_tile_elems
    elements. Split-M reductions use up to max_programs partial rows (None: 4 per SM).
    fit_blocks shrinks tiles to small problems (powers of two >= 16).
    """

    def __init__(self, interpret=INTERPRET):
        if interpret:  # few, large program instances: each one is slow Python
            self.block_m, self.block_k, self.block_d, self.block_d_out = 64, 64, 64, 64
            self.block_d_backward = 64
            self.block_m_swapped, self.block_k_swapped = 64, 64
            self.block_m_scores, self.block_k_scores = 64, 64
            self.max_single_k, self.single_tile_elems = 4096, 64 * 4096
            self.max_programs = 4
            self.fit_blocks = True         # shrink blocks to small problems: less Python work
        else:
            # H100 defaults chosen by compilation alone, so that every kernel compiles for sm_90
            # without register spills (tools/triton_compile_check.py); timings may refine them:
            # 64x64 score tiles with 32-wide feature steps; ~16 fp32 values per thread in
            # the kernels that stream S.
            # The backward recomputes each logit tile once per block_d_out feature chunk of its
            # output (deterministic, no atomics): 128 keeps that to 2 recomputes at D = 256
            # while the fp32 accumulators still fit in registers with 16-wide feature steps.
            self.block_m, self.block_k, self.block_d, self.block_d_out = 64, 64, 32, 128
            self.block_d_backward = 16
            # The swapped products (swapped.py) hold two score tiles and two accumulators at once:
            # 32x32 score tiles keep them in registers.
            self.block_m_swapped, self.block_k_swapped = 32, 32
            self.block_m_scores, self.block_k_scores = 16, 256
            self.max_single_k, self.single_tile_elems = 4096, 8192
            self.max_programs = None
            # Fixed tiles whatever the problem size (masks handle the rest): one compiled
            # kernel per configuration instead of one per small shape.
            self.fit_blocks = False
        self.dot_warps, self.dot_stages = 8, 2


CONFIG = BlockConfig()


@contextlib.contextmanager
def override_blocks(**kwargs):
    """Temporarily set BlockConfig fields, e.g. override_blocks(block_m=16, max_programs=3)."""
    old = {k: getattr(CONFIG, k) for k in kwargs}
    for k, v in kwargs.items():
        if not hasattr(CONFIG, k):
            raise AttributeError(f"unknown block setting {k!r}")
        setattr(CONFIG, k, v)
    try:
        yield CONFIG
    finally:
        for k, v in old.items():
            setattr(CONFIG, k, v)


def pow2_block(n, cap, floor=16):
    """Tile size for a dimension of length n: cap, or with CONFIG.fit_blocks the smallest power
    of two >= n clamped to [floor, cap] (tl.dot needs dimensions >= 16)."""
    if not CONFIG.fit_blocks:
        return cap
    return max(floor, min(cap, triton.next_power_of_2(max(int(n), 1))))


_SIZE_ARGS = ("M", "K", "D", "DY", "G", "rows_per_prog")


def kernel(fn):
    """triton.jit for a launched kernel, without specialising on the problem sizes (M, K, D, ...):
    one compiled kernel serves every shape. Strides stay specialised (a unit stride lets the
    compiler vectorise loads)."""
    sizes = [name for name in inspect.signature(fn).parameters if name in _SIZE_ARGS]
    return triton.jit(do_not_specialize=sizes)(fn)


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device):
    """How many programs to aim for in a split-M reduction (a few waves of SMs; a few under the interpreter)."""
    if CONFIG.max_programs is not None:
        return CONFIG.max_programs
    if device.type == "cuda":
        return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


def split_rows(m, block_m, programs):
    """Split m rows into at most `programs` contiguous chunks of whole row blocks.

    Returns (rows_per_program, number_of_programs).
    """
    row_blocks = triton.cdiv(m, block_m)
    per = triton.cdiv(row_blocks, max(1, min(programs, row_blocks))) * block_m
    return per, triton.cdiv(m, per)


# Under the interpreter tl.dot is wrong on bf16 inputs (docs/backends.md): operands are cast to fp32 first.
UPCAST_DOT = INTERPRET


def dot_launch_options():
    """UPCAST / PREC constexprs and launch options of every kernel that calls tl.dot."""
    return {"UPCAST": UPCAST_DOT, "PREC": DOT_PRECISION, "num_warps": CONFIG.dot_warps,
            "num_stages": CONFIG.dot_stages}


def stream_warps(tile_elems):
    """Warps for a kernel that streams a tile of S: about 16 fp32 values per thread."""
    return max(4, min(16, tile_elems // 512))


def f32_vector(t):
    """t as a contiguous fp32 vector (no copy when it already is one)."""
    return t.to(torch.float32).contiguous()


_INT32_LIMIT = 2 ** 31


def check_offsets(name, t):
    """Kernels index with int32 element offsets: refuse tensors they cannot address."""
    last = sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))
    if last >= _INT32_LIMIT or t.numel() >= _INT32_LIMIT:
        raise ValueError(f"{name} of shape {tuple(t.shape)} is too large for the triton backend "
                         f"(element offsets must stay below 2**31); split it or use backend='reference'")


def check_matrix(name, t):
    """A 2-D fp32/fp16/bf16 tensor the kernels can address."""
    if t.dim() != 2 or t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{name} must be a 2-D float16/bfloat16/float32 tensor for the triton backend, "
                        f"got {t.dtype} of shape {tuple(t.shape)}")
    check_offsets(name, t)


def check_factors(x, c, x_name="x", c_name="c"):
    """x (M, D) and c (K, D) with the same D."""
    check_matrix(x_name, x)
    check_matrix(c_name, c)
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"{x_name} (M, D) and {c_name} (K, D) must share D, "
                         f"got {tuple(x.shape)} and {tuple(c.shape)}")


def matching_factors(x, c):
    """x and c as tl.dot operands of one dtype: mixed dtypes are both promoted to fp32 (an
    O((M + K)·D) copy)."""
    if x.dtype == c.dtype:
        return x, c
    return x.to(torch.float32), c.to(torch.float32)


def on_tensor_device(fn):
    """Run a launcher with the CUDA device of its first tensor argument current (Triton launches
    on the current device)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = next(a.device for a in args if isinstance(a, torch.Tensor))
        if dev.type != "cuda":
            return fn(*args, **kwargs)
        with torch.cuda.device(dev):
            return fn(*args, **kwargs)
    return wrapper


# --- jit helpers ---------------------------------------------------------------------------

@triton.jit
def load_scores(s_ptr, s_sm, s_sk, x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, rows, cols, M, K, D,
                STREAMING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                UPCAST: tl.constexpr, PREC: tl.constexpr):
    """fp32 score tile (len(rows), len(cols)): loaded from S, or x[rows]·c[cols]ᵀ recomputed with tl.dot.

    Out-of-range entries are 0; callers mask them.
    """
    rmask = rows < M
    cmask = cols < K
    if STREAMING:
        acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            dmask = d < D
            xt = tl.load(x_ptr + rows[:, None] * x_sm + d[None, :] * x_sd,
                         mask=rmask[:, None] & dmask[None, :], other=0.0)
            ct = tl.load(c_ptr + cols[None, :] * c_sk + d[:, None] * c_sd,
                         mask=cmask[None, :] & dmask[:, None], other=0.0)
            if UPCAST:
                xt = xt.to(tl.float32)
                ct = ct.to(tl.float32)
            acc = tl.dot(xt, ct, acc, input_precision=PREC)
        return acc
    else:
        s = tl.load(s_ptr + rows[:, None] * s_sm + cols[None, :] * s_sk,
                    mask=rmask[:, None] & cmask[None, :], other=0.0)
        return s.to(tl.float32)


@triton.jit
def fold_columns(col_max, col_sum, w):
    """Fold a (rows, cols) tile w into running per-column (max, Σexp(w - max)); -inf entries add nothing."""
    new_max = tl.maximum(col_max, tl.max(w, axis=0))
    shift = finite_or_zero(new_max)
    col_sum = col_sum * tl.exp(col_max - shift) + tl.sum(tl.exp(w - shift[None, :]), axis=0)
    return new_max, col_sum


@triton.jit
def fold_rows(row_max, row_sum, t):
    """Fold a (rows, cols) tile t into running per-row (max, Σexp(t - max)); -inf entries add nothing."""
    new_max = tl.maximum(row_max, tl.max(t, axis=1))
    shift = finite_or_zero(new_max)
    row_sum = row_sum * tl.exp(row_max - shift) + tl.sum(tl.exp(t - shift[:, None]), axis=1)
    return new_max, row_sum


@triton.jit
def finite_or_zero(m):
    """A running max that is -inf (nothing seen yet) becomes 0, so exp(t - m) stays NaN-free."""
    return tl.where(m == float("-inf"), 0.0, m)
