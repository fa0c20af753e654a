"""Log-domain Sinkhorn kernels on a materialised score matrix S (M, K), plus the row / split-M
column reductions that the streaming kernels (streaming.py) share.

Notation as in reference.py: t_ik = S_ik·inv_eps + v_k (row side), w_ik = S_ik·inv_eps + u_i
(column side). Everything is accumulated in fp32 whatever the dtype of S.

One read of S per iteration (`sinkhorn_row_step`). A program owns a contiguous chunk of rows.
When the whole (padded) row fits one tile (K <= CONFIG.max_single_k, e.g. K = 3000 -> 4096),
it loads a BLOCK_M x K tile once, finishes those rows' LSE (new u) and, from the same registers,
folds w = a + u into per-column running (max, Σexp) kept in registers across all of its row
blocks; it writes one partial row per program, so the partial buffers are (programs, K), small
next to S. When K is larger, a program owns one row block: a first sweep over the K tiles
finishes the row LSE, and a second sweep over the same BLOCK_M x K strip (just read, so served
from L2 on a GPU, not HBM) writes that block's column partials (row blocks, K). Either way a
small second kernel combines the partials into the (K,) column LSE (split-M: all SMs busy when
M >> K, instead of ceil(K/BLOCK) programs).
"""
import torch
import triton
import triton.language as tl

from ...rules import TIE_WINDOW as _TIE_WINDOW
from ...rules import potential_scale
from ._common import (
    CONFIG,
    check_factors,
    check_matrix,
    dot_launch_options,
    f32_vector,
    finite_or_zero,
    fold_columns,
    fold_rows,
    kernel,
    load_scores,
    matching_factors,
    on_tensor_device,
    pow2_block,
    split_rows,
    stream_warps,
    target_programs,
)

# --- kernels -------------------------------------------------------------------------------

TIE_WINDOW = tl.constexpr(_TIE_WINDOW)  # a constexpr global, so that the kernels can name it

@triton.jit
def _row_logits(s_ptr, s_sm, s_sk, x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, v_ptr, rows, cols, M, K, D, inv_eps,
                STREAMING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                UPCAST: tl.constexpr, PREC: tl.constexpr):
    """t = S[rows, cols]·inv_eps + v[cols] (fp32), padded columns at -inf."""
    cmask = cols < K
    s = load_scores(s_ptr, s_sm, s_sk, x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, rows, cols, M, K, D,
                    STREAMING, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
    v = tl.load(v_ptr + cols, mask=cmask, other=0.0)
    return tl.where(cmask[None, :], s * inv_eps + v[None, :], float("-inf"))


@kernel
def row_reduce_kernel(s_ptr, s_sm, s_sk, x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, v_ptr, vmag_ptr, out_ptr,
                      M, K, D, inv_eps, log_m,
                      ASSIGN: tl.constexpr, STREAMING: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Row reduction of t_ik = S_ik·inv_eps + v_k over k, one row block per program.

    ASSIGN=False: out_i = -log_m - LSE_k t_ik (fp32). ASSIGN=True: out_i = the hard label (int64,
    docs/numerics.md): the row's first NaN if it holds one (NaN ranks above every number, as in
    torch.argmax), else its lowest k with t_ik >= max_k t_ik − TIE_WINDOW·(|max_k t_ik| + vmag),
    vmag = potential_scale(v) at vmag_ptr. The window needs the row's final max, so labels take two
    sweeps over the K tiles: the max (and first NaN), then the first index within the window.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    run_nan = tl.full([BLOCK_M], K, tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        t = _row_logits(s_ptr, s_sm, s_sk, x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, v_ptr, rows, cols, M, K, D,
                        inv_eps, STREAMING, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
        if ASSIGN:
            is_nan = t != t
            run_nan = tl.minimum(run_nan, tl.min(tl.where(is_nan, cols[None, :], K), axis=1))
            run_max = tl.maximum(run_max, tl.max(tl.where(is_nan, float("-inf"), t), axis=1))
        else:
            run_max, run_sum = fold_rows(run_max, run_sum, t)
    if ASSIGN:
        finite = (run_max > float("-inf")) & (run_max < float("inf"))
        threshold = tl.where(finite, run_max - TIE_WINDOW * (tl.abs(run_max) + tl.load(vmag_ptr)), run_max)
        run_idx = tl.full([BLOCK_M], K - 1, tl.int32)  # no entry reaches it: a row of NaN only
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            t = _row_logits(s_ptr, s_sm, s_sk, x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, v_ptr, rows, cols, M, K, D,
                            inv_eps, STREAMING, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
            hit = (t >= threshold[:, None]) & (cols < K)[None, :]
            run_idx = tl.minimum(run_idx, tl.min(tl.where(hit, cols[None, :], K), axis=1))
        label = tl.where(run_nan < K, run_nan, run_idx)
        tl.store(out_ptr + rows, label.to(tl.int64), mask=rmask)
    else:
        tl.store(out_ptr + rows, -log_m - (finite_or_zero(run_max) + tl.log(run_sum)), mask=rmask)


@kernel
def col_partial_kernel(s_ptr, s_sm, s_sk, x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, u_ptr, pmax_ptr, psum_ptr,
                       M, K, D, rows_per_prog, inv_eps,
                       STREAMING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Split-M column LSE of w_ik = S_ik·inv_eps + u_i: program (g, j) folds rows
    [g·rows_per_prog, (g+1)·rows_per_prog) of column tile j into (max, Σexp) partial row g."""
    g = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    cmask = cols < K
    col_max = tl.full([BLOCK_K], float("-inf"), tl.float32)
    col_sum = tl.zeros([BLOCK_K], dtype=tl.float32)
    row_start = g * rows_per_prog
    for offset in range(0, rows_per_prog, BLOCK_M):
        rows = row_start + offset + tl.arange(0, BLOCK_M)
        rmask = rows < M
        s = load_scores(s_ptr, s_sm, s_sk, x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, rows, cols, M, K, D,
                        STREAMING, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
        u = tl.load(u_ptr + rows, mask=rmask, other=0.0)
        w = tl.where(rmask[:, None], s * inv_eps + u[:, None], float("-inf"))
        col_max, col_sum = fold_columns(col_max, col_sum, w)
    tl.store(pmax_ptr + g * K + cols, col_max, mask=cmask)
    tl.store(psum_ptr + g * K + cols, col_sum, mask=cmask)


@kernel
def combine_partials_kernel(pmax_ptr, psum_ptr, out_ptr, G, K, BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr):
    """out_k = LSE over the G partial rows: max + log Σ_g sum_g·exp(max_g - max)."""
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    cmask = cols < K
    run_max = tl.full([BLOCK_K], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_K], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        gs = g0 + tl.arange(0, BLOCK_G)
        mask = (gs < G)[:, None] & cmask[None, :]
        pm = tl.load(pmax_ptr + gs[:, None] * K + cols[None, :], mask=mask, other=float("-inf"))
        ps = tl.load(psum_ptr + gs[:, None] * K + cols[None, :], mask=mask, other=0.0)
        new_max = tl.maximum(run_max, tl.max(pm, axis=0))
        shift = finite_or_zero(new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(ps * tl.exp(pm - shift[None, :]), axis=0)
        run_max = new_max
    # padded columns have run_sum = 0: log(1) keeps the (unstored) lanes finite
    tl.store(out_ptr + cols, finite_or_zero(run_max) + tl.log(tl.where(cmask, run_sum, 1.0)), mask=cmask)


@kernel
def fused_row_step_kernel(s_ptr, s_sm, s_sk, v_ptr, u_ptr, pmax_ptr, psum_ptr, M, K, rows_per_prog, inv_eps, log_m,
                          SINGLE_TILE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """u_i = -log_m - LSE_k(a_ik + v_k) and split-M column partials of a_ik + u_i (a = S·inv_eps).

    SINGLE_TILE: BLOCK_K >= K, the program walks rows_per_prog rows, each tile read once and the
    column partials kept in registers. Otherwise rows_per_prog == BLOCK_M and the row block's
    strip is swept twice (row LSE, then column partials; the second sweep hits L2).
    """
    pid = tl.program_id(0)
    row_start = pid * rows_per_prog
    if SINGLE_TILE:
        cols = tl.arange(0, BLOCK_K)
        cmask = cols < K
        v = tl.load(v_ptr + cols, mask=cmask, other=0.0)
        col_max = tl.full([BLOCK_K], float("-inf"), tl.float32)
        col_sum = tl.zeros([BLOCK_K], dtype=tl.float32)
        for offset in range(0, rows_per_prog, BLOCK_M):
            rows = row_start + offset + tl.arange(0, BLOCK_M)
            rmask = rows < M
            a = tl.load(s_ptr + rows[:, None] * s_sm + cols[None, :] * s_sk,
                        mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32) * inv_eps
            t = tl.where(cmask[None, :], a + v[None, :], float("-inf"))
            row_max = tl.max(t, axis=1)
            shift = finite_or_zero(row_max)
            u = -log_m - (shift + tl.log(tl.sum(tl.exp(t - shift[:, None]), axis=1)))
            tl.store(u_ptr + rows, u, mask=rmask)
            w = tl.where(rmask[:, None] & cmask[None, :], a + u[:, None], float("-inf"))
            col_max, col_sum = fold_columns(col_max, col_sum, w)
        tl.store(pmax_ptr + pid * K + cols, col_max, mask=cmask)
        tl.store(psum_ptr + pid * K + cols, col_sum, mask=cmask)
    else:
        rows = row_start + tl.arange(0, BLOCK_M)
        rmask = rows < M
        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            cmask = cols < K
            a = tl.load(s_ptr + rows[:, None] * s_sm + cols[None, :] * s_sk,
                        mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32) * inv_eps
            v = tl.load(v_ptr + cols, mask=cmask, other=0.0)
            row_max, row_sum = fold_rows(row_max, row_sum, tl.where(cmask[None, :], a + v[None, :], float("-inf")))
        u = -log_m - (finite_or_zero(row_max) + tl.log(row_sum))
        tl.store(u_ptr + rows, u, mask=rmask)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            cmask = cols < K
            a = tl.load(s_ptr + rows[:, None] * s_sm + cols[None, :] * s_sk,
                        mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32) * inv_eps
            w = tl.where(rmask[:, None] & cmask[None, :], a + u[:, None], float("-inf"))
            blk_max = tl.max(w, axis=0)
            shift = finite_or_zero(blk_max)
            tl.store(pmax_ptr + pid * K + cols, blk_max, mask=cmask)
            tl.store(psum_ptr + pid * K + cols, tl.sum(tl.exp(w - shift[None, :]), axis=0), mask=cmask)


@kernel
def plan_kernel(s_ptr, s_sm, s_sk, u_ptr, v_ptr, q_ptr, M, K, inv_eps, log_m,
                BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Q_ik = exp(S_ik·inv_eps + u_i + v_k + log_m), fp32, row-major (M, K)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    rmask = rows < M
    cmask = cols < K
    mask = rmask[:, None] & cmask[None, :]
    # padded lanes at -inf: exp gives 0 there instead of overflowing when |u|, |v| are large
    s = tl.load(s_ptr + rows[:, None] * s_sm + cols[None, :] * s_sk, mask=mask, other=float("-inf")).to(tl.float32)
    u = tl.load(u_ptr + rows, mask=rmask, other=0.0)
    v = tl.load(v_ptr + cols, mask=cmask, other=0.0)
    q = tl.exp(s * inv_eps + u[:, None] + v[None, :] + log_m)
    tl.store(q_ptr + rows[:, None] * K + cols[None, :], q, mask=mask)


# --- launch helpers shared with streaming.py ------------------------------------------------

def combine_partials(pmax, psum):
    """(G, K) partial (max, Σexp) -> (K,) column LSE."""
    g, k = pmax.shape
    out = torch.empty(k, dtype=torch.float32, device=pmax.device)
    block_k = pow2_block(k, 64)  # many small programs: the (G, K) partials are read once
    block_g = pow2_block(g, 64, floor=1)
    combine_partials_kernel[(triton.cdiv(k, block_k),)](pmax, psum, out, g, k, BLOCK_G=block_g, BLOCK_K=block_k)
    return out


def row_reduce(operands, v, inv_eps, log_m, assign):
    """-log_m - LSE_k(S·inv_eps + v) (fp32 (M,)) or its hard labels (int64 (M,), docs/numerics.md).

    operands: (S,) materialised, or (x, c) with S = x·cᵀ recomputed tile by tile.
    """
    streaming = len(operands) == 2
    s_args, x_args, c_args, m, k, d = _operand_args(operands)
    out = torch.empty(m, dtype=torch.int64 if assign else torch.float32, device=operands[0].device)
    block_m, block_k, block_d, options = _tiles(streaming, m, k, d)
    v = f32_vector(v)
    vmag = potential_scale(v) if assign else v  # a 0-d device tensor: no host sync
    row_reduce_kernel[(triton.cdiv(m, block_m),)](
        *s_args, *x_args, *c_args, v, vmag, out, m, k, d, float(inv_eps), float(log_m),
        ASSIGN=assign, STREAMING=streaming, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_d, **options)
    return out


def col_lse(operands, u, inv_eps):
    """LSE_i(S_ik·inv_eps + u_i) -> (K,) fp32, split over M then combined."""
    streaming = len(operands) == 2
    s_args, x_args, c_args, m, k, d = _operand_args(operands)
    block_m, block_k, block_d, options = _tiles(streaming, m, k, d)
    col_tiles = triton.cdiv(k, block_k)
    per, g = split_rows(m, block_m, triton.cdiv(target_programs(operands[0].device), col_tiles))
    pmax = torch.empty((g, k), dtype=torch.float32, device=operands[0].device)
    psum = torch.empty_like(pmax)
    col_partial_kernel[(g, col_tiles)](
        *s_args, *x_args, *c_args, f32_vector(u), pmax, psum, m, k, d, per, float(inv_eps),
        STREAMING=streaming, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_d, **options)
    return combine_partials(pmax, psum)


def _tiles(streaming, m, k, d):
    """(BLOCK_M, BLOCK_K, BLOCK_D, other constexprs and launch options) for the shared row / column kernels."""
    if streaming:
        return (pow2_block(m, CONFIG.block_m), pow2_block(k, CONFIG.block_k), pow2_block(d, CONFIG.block_d),
                dot_launch_options())
    block_m, block_k = pow2_block(m, CONFIG.block_m_scores), pow2_block(k, CONFIG.block_k_scores)
    dot = dot_launch_options()  # UPCAST / PREC are unused when S is read, but still constexprs
    return block_m, block_k, 16, {"UPCAST": dot["UPCAST"], "PREC": dot["PREC"],
                                  "num_warps": stream_warps(block_m * block_k)}


def _operand_args(operands):
    """Pointer/stride triples for load_scores: (S args, x args, c args, M, K, D); unused ones repeat S or x."""
    if len(operands) == 1:
        (s,) = operands
        check_matrix("scores", s)
        s_args = (s, s.stride(0), s.stride(1))
        return s_args, s_args, s_args, s.shape[0], s.shape[1], 1
    x, c = operands
    check_factors(x, c)
    x, c = matching_factors(x, c)
    x_args = (x, x.stride(0), x.stride(1))
    return x_args, x_args, (c, c.stride(0), c.stride(1)), x.shape[0], c.shape[0], x.shape[1]


# --- primitives ------------------------------------------------------------------------------

@on_tensor_device
def sinkhorn_col_lse(scores, u, inv_eps):
    """LSE_i(S_ik·inv_eps + u_i) -> (K,) fp32."""
    return col_lse((scores,), u, inv_eps)


@on_tensor_device
def sinkhorn_row_step(scores, v, inv_eps, log_m):
    """(u (M,), col (K,)) fp32 with one read of S (see the module docstring)."""
    check_matrix("scores", scores)
    m, k = scores.shape
    dev = scores.device
    u = torch.empty(m, dtype=torch.float32, device=dev)
    if triton.next_power_of_2(k) <= CONFIG.max_single_k:
        block_k = triton.next_power_of_2(k)  # the tile must cover the whole row
        block_m = pow2_block(m, max(1, min(CONFIG.block_m_scores, CONFIG.single_tile_elems // block_k)), floor=1)
        per, g = split_rows(m, block_m, target_programs(dev))
        single = True
    else:
        # Taller row blocks than elsewhere keep the (row blocks, K) partial buffers small.
        block_m = pow2_block(m, CONFIG.block_m, floor=1)
        block_k = pow2_block(k, max(16, CONFIG.block_k_scores // 2))
        per, g = block_m, triton.cdiv(m, block_m)
        single = False
    pmax = torch.empty((g, k), dtype=torch.float32, device=dev)
    psum = torch.empty_like(pmax)
    fused_row_step_kernel[(g,)](scores, scores.stride(0), scores.stride(1), f32_vector(v), u, pmax, psum,
                                m, k, per, float(inv_eps), float(log_m),
                                SINGLE_TILE=single, BLOCK_M=block_m, BLOCK_K=block_k,
                                num_warps=stream_warps(block_m * block_k))
    return u, combine_partials(pmax, psum)


@on_tensor_device
def sinkhorn_assign(scores, v, inv_eps):
    """Hard labels of S_ik·inv_eps + v_k -> int64 (M,) (near-ties to the lowest index); Q is never written."""
    return row_reduce((scores,), v, inv_eps, 0.0, assign=True)


@on_tensor_device
def sinkhorn_plan(scores, u, v, inv_eps, log_m):
    """Q (M, K) fp32."""
    check_matrix("scores", scores)
    m, k = scores.shape
    q = torch.empty((m, k), dtype=torch.float32, device=scores.device)
    block_m, block_k = pow2_block(m, CONFIG.block_m_scores, floor=1), pow2_block(k, CONFIG.block_k_scores, floor=1)
    plan_kernel[(triton.cdiv(m, block_m), triton.cdiv(k, block_k))](
        scores, scores.stride(0), scores.stride(1), f32_vector(u), f32_vector(v), q, m, k, float(inv_eps), float(log_m),
        BLOCK_M=block_m, BLOCK_K=block_k, num_warps=stream_warps(block_m * block_k))
    return q
