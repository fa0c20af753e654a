"""Fused linear + cross-entropy: logits = scale·x·cᵀ recomputed tile by tile, never stored.

Forward: one program per row block sweeps the K tiles with an online row LSE and accumulates what
the loss needs from the target. Targets (TARGET constexpr):
    HARD     int64 indices (M,)                     loss_i = lse_i - logit_i,t_i
    SOFT     probabilities (M, K), any row sums     loss_i = (Σ_k t_ik)·lse_i - Σ_k t_ik·logit_ik
    SINKHORN soft targets from the other branch: q_ik = softmax_k(b_ik), b = inv_eps·y·cyᵀ + v,
             computed in the same sweep with their own online LSE: loss_i = lse_i - Σ_k q_ik·logit_ik
Hard Sinkhorn targets (the hard labels of b, docs/numerics.md) are first turned into indices by the
assign kernel (streaming_assign; its near-tie window needs each row's final max, so it cannot ride
along in this sweep), then take the HARD path, forward and backward.
Backward: dlogit_ik = g_i·scale·(p_ik·Σ_k t_ik - t_ik) with p = exp(logit - lse). Two
deterministic kernels recompute the logit tiles: dx (grid: row blocks x D chunks, reduction over K
in registers) and dc (grid: K tiles x D chunks x M splits, reduction over the split's rows in
registers, fp32 partials (splits, K, D) summed afterwards); a kernel whose gradient is not needed
(need_dx / need_dc False) is not launched. Sinkhorn targets in the backward:
soft ones need each row's target LSE, computed by a row sweep over y·cyᵀ before the two kernels.
"""
import torch
import triton
import triton.language as tl

from ._common import (
    CONFIG,
    check_factors,
    check_offsets,
    dot_launch_options,
    f32_vector,
    finite_or_zero,
    fold_rows,
    kernel,
    load_scores,
    matching_factors,
    on_tensor_device,
    pow2_block,
    split_rows,
    target_programs,
)
from .sinkhorn import row_reduce

# The TARGET modes (module docstring). constexpr globals, so that the kernels can name them too.
HARD = tl.constexpr(0)
SOFT = tl.constexpr(1)
SINKHORN = tl.constexpr(2)


@triton.jit
def _logits_tile(x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, rows, cols, M, K, D, scale,
                 BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                 UPCAST: tl.constexpr, PREC: tl.constexpr):
    """scale·x[rows]·c[cols]ᵀ in fp32 with padded columns at -inf."""
    s = load_scores(x_ptr, x_sm, x_sd, x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, rows, cols, M, K, D,
                    True, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
    return tl.where((cols < K)[None, :], s * scale, float("-inf"))


@triton.jit
def _sinkhorn_logits_tile(y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, v_ptr, rows, cols, M, K, DY, inv_eps,
                          BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                          UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Target logits b = inv_eps·y[rows]·cy[cols]ᵀ + v[cols] in fp32 with padded columns at -inf."""
    s = load_scores(y_ptr, y_sm, y_sd, y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, rows, cols, M, K, DY,
                    True, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
    cmask = cols < K
    v = tl.load(v_ptr + cols, mask=cmask, other=0.0)
    return tl.where(cmask[None, :], s * inv_eps + v[None, :], float("-inf"))


@triton.jit
def _target_tile(tidx_ptr, t_ptr, t_sm, t_sk, y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, v_ptr, nlse_t_ptr,
                 rows, cols, M, K, DY, inv_eps, TARGET: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                 UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Target tile t (fp32, 0 outside the matrix) for the backward: one-hot, given probabilities,
    or Sinkhorn soft targets exp(b - lse_b) (nlse_t_ptr holds -lse_b per row)."""
    rmask = rows < M
    mask = rmask[:, None] & (cols < K)[None, :]
    if TARGET == HARD:
        idx = tl.load(tidx_ptr + rows, mask=rmask, other=-1)
        t = tl.where(cols[None, :] == idx[:, None], 1.0, 0.0)
    elif TARGET == SOFT:
        t = tl.load(t_ptr + rows[:, None] * t_sm + cols[None, :] * t_sk, mask=mask, other=0.0).to(tl.float32)
    else:
        b = _sinkhorn_logits_tile(y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, v_ptr, rows, cols, M, K, DY, inv_eps,
                                  BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
        nl = tl.load(nlse_t_ptr + rows, mask=rmask, other=float("-inf"))  # padded rows: exp -> 0
        t = tl.where(mask, tl.exp(b + nl[:, None]), 0.0)
    return t


@kernel
def ce_forward_kernel(x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd,
                      tidx_ptr, t_ptr, t_sm, t_sk, y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, v_ptr,
                      loss_ptr, lse_ptr, M, K, D, DY, scale, inv_eps,
                      TARGET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                      UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Per-row loss and logit LSE for one row block (see the module docstring for TARGET)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    l_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    picked = tl.zeros([BLOCK_M], dtype=tl.float32)      # target logit (hard) / Σ t·logit (soft)
    t_sum = tl.zeros([BLOCK_M], dtype=tl.float32)       # Σ_k t_ik (SOFT) / Σ exp(b - b_max) (SINKHORN)
    b_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    if TARGET == HARD:
        idx = tl.load(tidx_ptr + rows, mask=rmask, other=-1)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < K
        logits = _logits_tile(x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, rows, cols, M, K, D, scale,
                              BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
        l_max, l_sum = fold_rows(l_max, l_sum, logits)
        finite_logits = tl.where(cmask[None, :], logits, 0.0)
        if TARGET == HARD:
            picked += tl.sum(tl.where(cols[None, :] == idx[:, None], finite_logits, 0.0), axis=1)
        elif TARGET == SOFT:
            t = tl.load(t_ptr + rows[:, None] * t_sm + cols[None, :] * t_sk,
                        mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            t_sum += tl.sum(t, axis=1)
            picked += tl.sum(t * finite_logits, axis=1)
        else:
            b = _sinkhorn_logits_tile(y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, v_ptr, rows, cols, M, K, DY, inv_eps,
                                      BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
            new_max = tl.maximum(b_max, tl.max(b, axis=1))
            shift = finite_or_zero(new_max)
            rescale = tl.exp(b_max - shift)
            e = tl.exp(b - shift[:, None])
            t_sum = t_sum * rescale + tl.sum(e, axis=1)
            picked = picked * rescale + tl.sum(e * finite_logits, axis=1)
            b_max = new_max
    lse = finite_or_zero(l_max) + tl.log(l_sum)
    if TARGET == SOFT:
        loss = t_sum * lse - picked
    elif TARGET == SINKHORN:
        loss = lse - picked / t_sum
    else:
        loss = lse - picked
    tl.store(loss_ptr + rows, loss, mask=rmask)
    tl.store(lse_ptr + rows, lse, mask=rmask)


@triton.jit
def _dlogits_tile(x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, lse, g_tsum, g_scale,
                  tidx_ptr, t_ptr, t_sm, t_sk, y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, v_ptr, nlse_t_ptr,
                  rows, cols, M, K, D, DY, scale, inv_eps, TARGET: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                  UPCAST: tl.constexpr, PREC: tl.constexpr):
    """dLoss/dlogit tile times scale: g_i·scale·(p_ik·Σt_i - t_ik); 0 outside the matrix.

    g_tsum = g_i·scale·Σ_k t_ik and g_scale = g_i·scale per row (0 for padded rows)."""
    logits = _logits_tile(x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, rows, cols, M, K, D, scale,
                          BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
    p = tl.exp(logits - lse[:, None])
    t = _target_tile(tidx_ptr, t_ptr, t_sm, t_sk, y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, v_ptr, nlse_t_ptr,
                     rows, cols, M, K, DY, inv_eps, TARGET, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
    return p * g_tsum[:, None] - t * g_scale[:, None]


@triton.jit
def _row_grad_factors(g_ptr, tsum_ptr, lse_ptr, rows, M, scale, TARGET: tl.constexpr):
    rmask = rows < M
    g = tl.load(g_ptr + rows, mask=rmask, other=0.0) * scale
    if TARGET == SOFT:
        g_tsum = g * tl.load(tsum_ptr + rows, mask=rmask, other=0.0)
    else:
        g_tsum = g
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    return g, g_tsum, lse


@kernel
def ce_backward_dx_kernel(x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, g_ptr, tsum_ptr, lse_ptr,
                          tidx_ptr, t_ptr, t_sm, t_sk, y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, v_ptr, nlse_t_ptr,
                          dx_ptr, M, K, D, DY, scale, inv_eps,
                          TARGET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """dx[rows, d chunk] = Σ_k dlogit_ik·c_k,d (fp32 accumulation, stored in dx's dtype)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dout = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    rmask = rows < M
    domask = dout < D
    g_scale, g_tsum, lse = _row_grad_factors(g_ptr, tsum_ptr, lse_ptr, rows, M, scale, TARGET)
    acc = tl.zeros([BLOCK_M, BLOCK_DO], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        dl = _dlogits_tile(x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, lse, g_tsum, g_scale,
                           tidx_ptr, t_ptr, t_sm, t_sk, y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, v_ptr, nlse_t_ptr,
                           rows, cols, M, K, D, DY, scale, inv_eps, TARGET, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
        ct = tl.load(c_ptr + cols[:, None] * c_sk + dout[None, :] * c_sd,
                     mask=(cols < K)[:, None] & domask[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(dl, ct, acc, input_precision=PREC)
    tl.store(dx_ptr + rows[:, None] * D + dout[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=rmask[:, None] & domask[None, :])


@kernel
def ce_backward_dc_kernel(x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, g_ptr, tsum_ptr, lse_ptr,
                          tidx_ptr, t_ptr, t_sm, t_sk, y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, v_ptr, nlse_t_ptr,
                          dc_ptr, M, K, D, DY, rows_per_prog, scale, inv_eps,
                          TARGET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Partial dc[split, cols, d chunk] = Σ_{i in split} dlogit_ik·x_i,d (fp32)."""
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    dout = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    split = tl.program_id(2)
    domask = dout < D
    acc = tl.zeros([BLOCK_K, BLOCK_DO], dtype=tl.float32)
    row_start = split * rows_per_prog
    for offset in range(0, rows_per_prog, BLOCK_M):
        rows = row_start + offset + tl.arange(0, BLOCK_M)
        g_scale, g_tsum, lse = _row_grad_factors(g_ptr, tsum_ptr, lse_ptr, rows, M, scale, TARGET)
        dl = _dlogits_tile(x_ptr, x_sm, x_sd, c_ptr, c_sk, c_sd, lse, g_tsum, g_scale,
                           tidx_ptr, t_ptr, t_sm, t_sk, y_ptr, y_sm, y_sd, cy_ptr, cy_sk, cy_sd, v_ptr, nlse_t_ptr,
                           rows, cols, M, K, D, DY, scale, inv_eps, TARGET, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
        xt = tl.load(x_ptr + rows[:, None] * x_sm + dout[None, :] * x_sd,
                     mask=(rows < M)[:, None] & domask[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(tl.trans(dl), xt, acc, input_precision=PREC)
    tl.store(dc_ptr + split * K * D + cols[:, None] * D + dout[None, :], acc,
             mask=(cols < K)[:, None] & domask[None, :])


# --- launchers -------------------------------------------------------------------------------

def _blocks(m, k, d, dy, backward=False):
    return (pow2_block(m, CONFIG.block_m), pow2_block(k, CONFIG.block_k),
            pow2_block(max(d, dy), CONFIG.block_d_backward if backward else CONFIG.block_d))


def _target_args(kind, target, sinkhorn, dummy_f32, dummy_i64):
    """Kernel arguments for the target: (tidx, t, t_sm, t_sk, y, y_sm, y_sd, cy, cy_sk, cy_sd, v)."""
    tidx = target if kind == HARD else dummy_i64
    t = target if kind == SOFT else dummy_f32
    t_strides = (target.stride(0), target.stride(1)) if kind == SOFT else (0, 0)
    if sinkhorn is not None:
        y, cy, v = sinkhorn
        y_args = (y, y.stride(0), y.stride(1), cy, cy.stride(0), cy.stride(1), v)
    else:
        y_args = (dummy_f32, 0, 0, dummy_f32, 0, 0, dummy_f32)
    return (tidx, t, *t_strides, *y_args)


def _classify(target, m, k):
    if target.is_floating_point():
        if target.shape != (m, k):
            raise ValueError(f"soft target must have shape ({m}, {k}), got {tuple(target.shape)}")
        check_offsets("target", target)
        return SOFT
    if target.shape != (m,):
        raise ValueError(f"hard target must have shape ({m},), got {tuple(target.shape)}")
    return HARD


def _forward(x, c, kind, target, sinkhorn, scale, inv_eps):
    m, k, d = x.shape[0], c.shape[0], x.shape[1]
    dy = sinkhorn[0].shape[1] if sinkhorn is not None else 1
    dev = x.device
    loss = torch.empty(m, dtype=torch.float32, device=dev)
    lse = torch.empty(m, dtype=torch.float32, device=dev)
    block_m, block_k, block_d = _blocks(m, k, d, dy)
    x, c = matching_factors(x, c)
    dummy_f32 = loss
    dummy_i64 = target if kind == HARD else torch.empty(1, dtype=torch.int64, device=dev)
    ce_forward_kernel[(triton.cdiv(m, block_m),)](
        x, x.stride(0), x.stride(1), c, c.stride(0), c.stride(1),
        *_target_args(kind, target, sinkhorn, dummy_f32, dummy_i64),
        loss, lse, m, k, d, dy, float(scale), float(inv_eps),
        TARGET=kind.value, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_d, **dot_launch_options())
    return loss, lse


def _backward(grad_rows, x, c, kind, target, sinkhorn, nlse_t, lse, scale, inv_eps, need_dx, need_dc):
    """(dx, dc); a gradient not asked for is None and its kernel is not launched."""
    m, k, d = x.shape[0], c.shape[0], x.shape[1]
    dy = sinkhorn[0].shape[1] if sinkhorn is not None else 1
    dev = x.device
    g = f32_vector(grad_rows)
    lse = f32_vector(lse)
    # Σ_k t_ik for probability targets (fp32 accumulation, no (M, K) copy); 1 for the others.
    tsum = torch.sum(target, dim=1, dtype=torch.float32) if kind == SOFT else g
    dummy_f32 = g
    dummy_i64 = target if kind == HARD else torch.empty(1, dtype=torch.int64, device=dev)
    nlse_t = nlse_t if nlse_t is not None else g
    targs = _target_args(kind, target, sinkhorn, dummy_f32, dummy_i64)
    block_m, block_k, block_d = _blocks(m, k, d, dy, backward=True)
    block_do = pow2_block(d, CONFIG.block_d_out)
    d_chunks = triton.cdiv(d, block_do)
    common = dict(TARGET=kind.value, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_d, BLOCK_DO=block_do,
                  **dot_launch_options())
    x_dtype = x.dtype
    x, c_op = matching_factors(x, c)
    x_args = (x, x.stride(0), x.stride(1), c_op, c_op.stride(0), c_op.stride(1), g, tsum, lse, *targs, nlse_t)

    dx = dc = None
    if need_dx:
        dx = torch.empty((m, d), dtype=x_dtype, device=dev)
        ce_backward_dx_kernel[(triton.cdiv(m, block_m), d_chunks)](
            *x_args, dx, m, k, d, dy, float(scale), float(inv_eps), **common)
    if need_dc:
        k_tiles = triton.cdiv(k, block_k)
        per, splits = split_rows(m, block_m, triton.cdiv(target_programs(dev), k_tiles * d_chunks))
        dc_parts = torch.empty((splits, k, d), dtype=torch.float32, device=dev)
        check_offsets("dc partials", dc_parts)
        ce_backward_dc_kernel[(k_tiles, d_chunks, splits)](
            *x_args, dc_parts, m, k, d, dy, per, float(scale), float(inv_eps), **common)
        dc = (dc_parts[0] if splits == 1 else dc_parts.sum(0)).to(c.dtype)
    return dx, dc


# --- primitives ------------------------------------------------------------------------------

@on_tensor_device
def linear_cross_entropy_forward(x, c, target, scale):
    """(loss (M,), lse (M,)) fp32 for logits scale·x·cᵀ; target int64 (M,) or probabilities (M, K)."""
    check_factors(x, c)
    kind = _classify(target, x.shape[0], c.shape[0])
    return _forward(x, c, kind, target, None, scale, 0.0)


@on_tensor_device
def linear_cross_entropy_backward(grad_rows, x, c, target, lse, scale, need_dx=True, need_dc=True):
    """(dx, dc) of Σ_i grad_rows_i·loss_i, in the dtypes of x and c (None where not needed)."""
    check_factors(x, c)
    kind = _classify(target, x.shape[0], c.shape[0])
    if not (need_dx or need_dc):
        return None, None
    return _backward(grad_rows, x, c, kind, target, None, None, lse, scale, 0.0, need_dx, need_dc)


def _sinkhorn_operands(x, c, y, cy, v):
    check_factors(x, c)
    check_factors(y, cy, "y", "cy")
    if y.shape[0] != x.shape[0] or cy.shape[0] != c.shape[0]:
        raise ValueError(f"y must have M={x.shape[0]} rows and cy K={c.shape[0]} rows, "
                         f"got {tuple(y.shape)} and {tuple(cy.shape)}")
    return (*matching_factors(y, cy), f32_vector(v))


@on_tensor_device
def sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, inv_eps, scale, soft):
    """CE of softmax(scale·x·cᵀ) against Sinkhorn targets of y·cyᵀ with potentials v (module docstring)."""
    sinkhorn = _sinkhorn_operands(x, c, y, cy, v)
    if not soft:
        index = row_reduce(sinkhorn[:2], sinkhorn[2], inv_eps, 0.0, assign=True)
        return _forward(x, c, HARD, index, None, scale, 0.0)
    dummy = torch.empty(0, dtype=torch.int64, device=x.device)
    return _forward(x, c, SINKHORN, dummy, sinkhorn, scale, inv_eps)


@on_tensor_device
def sinkhorn_target_cross_entropy_backward(grad_rows, x, c, y, cy, v, lse, inv_eps, scale, soft,
                                           need_dx=True, need_dc=True):
    sinkhorn = _sinkhorn_operands(x, c, y, cy, v)
    if not (need_dx or need_dc):
        return None, None
    if not soft:
        index = row_reduce(sinkhorn[:2], sinkhorn[2], inv_eps, 0.0, assign=True)
        return _backward(grad_rows, x, c, HARD, index, None, None, lse, scale, inv_eps, need_dx, need_dc)
    nlse_t = row_reduce((y, cy), sinkhorn[2], inv_eps, 0.0, assign=False)  # -LSE_k(b_ik) per row
    dummy = torch.empty(0, dtype=torch.int64, device=x.device)
    return _backward(grad_rows, x, c, SINKHORN, dummy, sinkhorn, nlse_t, lse, scale, inv_eps, need_dx, need_dc)
