"""Swapped soft-target products of two branches over the same rows, from recomputed score tiles.

Branch a's scores S_a are loaded (stored, `swapped_softmax_products`) or recomputed as x_a·cᵀ
(`streaming_swapped_softmax_products`); branch b's S_b = x_b·cᵀ is always recomputed. With
P = softmax_k(S·scale) and Q = softmax_k(S·inv_eps + v), term 0 is P_a against Q_b and term 1
P_b against Q_a. Three deterministic kernels (no atomics), nothing M×K stored:

    stats  one program per row block sweeps the K tiles: online LSE of S·scale and of S·inv_eps + v
           for both branches, Σ_k Q'·S for the row values LSE_k(S·scale) − scale·Σ_k Q'·S, and
           Σ_k Q·(S·inv_eps + v) for the entropies
    rows   grid (row blocks, D chunks): both differences P_a − Q_b and P_b − Q_a from the same two
           tiles, with the row LSEs of `stats`, times c -> (P − Q')·c (2, M, D)
    cols   grid (K tiles, D chunks, M splits): the same differences transposed times x_a (and x_b
           with grad_b) -> fp32 partials (splits, K, D) of (P − Q')ᵀ·x, summed afterwards

M×K×D products with n = ⌈D / block_d_out⌉ feature chunks and S_a recomputed: 2 (stats) + 2n + 2
(rows) + 2n + 1 (cols) = 5 + 4n (9 at D <= 128), one more with grad_b. A stored S_a is read
instead: 2n + 1 fewer. docs/streaming.md compares this with the per-term cross-entropies.

Labels, when asked for, come from the assign kernels (two more sweeps per branch): the near-tie
rule (docs/numerics.md) needs each row's final max before it can pick the first index within the
window, which a single running sweep cannot do, and every path must label a row identically.
"""
import torch
import triton
import triton.language as tl

from ._common import (
    CONFIG,
    check_factors,
    check_matrix,
    check_offsets,
    dot_launch_options,
    f32_vector,
    finite_or_zero,
    fold_rows,
    kernel,
    load_scores,
    on_tensor_device,
    pow2_block,
    split_rows,
    target_programs,
)
from .sinkhorn import sinkhorn_assign
from .streaming import streaming_assign


@triton.jit
def _tiles(s_ptr, s_sm, s_sk, xa_ptr, xa_sm, xa_sd, xb_ptr, xb_sm, xb_sd, c_ptr, c_sk, c_sd, rows, cols, M, K, D,
           STREAM_A: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
           UPCAST: tl.constexpr, PREC: tl.constexpr):
    """The fp32 score tiles (S_a, S_b) of rows x cols (0 outside the matrix)."""
    sa = load_scores(s_ptr, s_sm, s_sk, xa_ptr, xa_sm, xa_sd, c_ptr, c_sk, c_sd, rows, cols, M, K, D,
                     STREAM_A, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
    sb = load_scores(s_ptr, s_sm, s_sk, xb_ptr, xb_sm, xb_sd, c_ptr, c_sk, c_sd, rows, cols, M, K, D,
                     True, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
    return sa, sb


@triton.jit
def _softmax_step(t_max, t):
    """One tile of a running row softmax of t: (new max, rescale of the old sums, exp(t - new max));
    -inf entries of t contribute 0, and nothing seen yet (max -inf) rescales to 0."""
    new_max = tl.maximum(t_max, tl.max(t, axis=1))
    shift = finite_or_zero(new_max)
    return new_max, tl.exp(t_max - shift), tl.exp(t - shift[:, None])


@kernel
def swapped_stats_kernel(s_ptr, s_sm, s_sk, xa_ptr, xa_sm, xa_sd, xb_ptr, xb_sm, xb_sd, c_ptr, c_sk, c_sd,
                         va_ptr, vb_ptr, ce_ptr, lse_p_ptr, lse_q_ptr, ent_ptr, M, K, D, inv_eps, scale,
                         STREAM_A: tl.constexpr, LABELS: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Per row and branch (row 0: a, row 1: b of each (2, M) output): the term's value, the LSEs of
    S·scale and S·inv_eps + v, and with LABELS Q's entropy."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    ninf = tl.full([BLOCK_M], float("-inf"), tl.float32)
    zero = tl.zeros([BLOCK_M], dtype=tl.float32)
    pa_max, pa_sum, pb_max, pb_sum = ninf, zero, ninf, zero
    qa_max, qa_sum, qa_sb, qa_t = ninf, zero, zero, zero    # Q_a: Σe, Σe·S_b, Σe·t_a
    qb_max, qb_sum, qb_sa, qb_t = ninf, zero, zero, zero    # Q_b: Σe, Σe·S_a, Σe·t_b
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = (cols < K)[None, :]
        sa, sb = _tiles(s_ptr, s_sm, s_sk, xa_ptr, xa_sm, xa_sd, xb_ptr, xb_sm, xb_sd, c_ptr, c_sk, c_sd,
                        rows, cols, M, K, D, STREAM_A, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
        pa_max, pa_sum = fold_rows(pa_max, pa_sum, tl.where(cmask, sa * scale, float("-inf")))
        pb_max, pb_sum = fold_rows(pb_max, pb_sum, tl.where(cmask, sb * scale, float("-inf")))
        va = tl.load(va_ptr + cols, mask=cols < K, other=0.0)
        vb = tl.load(vb_ptr + cols, mask=cols < K, other=0.0)
        ta = tl.where(cmask, sa * inv_eps + va[None, :], float("-inf"))
        tb = tl.where(cmask, sb * inv_eps + vb[None, :], float("-inf"))
        qa_max, ra, ea = _softmax_step(qa_max, ta)
        qb_max, rb, eb = _softmax_step(qb_max, tb)
        qa_sum = qa_sum * ra + tl.sum(ea, axis=1)
        qb_sum = qb_sum * rb + tl.sum(eb, axis=1)
        qa_sb = qa_sb * ra + tl.sum(ea * sb, axis=1)  # S_b is 0 (finite) in padded columns
        qb_sa = qb_sa * rb + tl.sum(eb * sa, axis=1)
        if LABELS:
            qa_t = qa_t * ra + tl.sum(ea * tl.where(cmask, ta, 0.0), axis=1)
            qb_t = qb_t * rb + tl.sum(eb * tl.where(cmask, tb, 0.0), axis=1)
    lse_pa = finite_or_zero(pa_max) + tl.log(pa_sum)
    lse_pb = finite_or_zero(pb_max) + tl.log(pb_sum)
    lse_qa = finite_or_zero(qa_max) + tl.log(qa_sum)
    lse_qb = finite_or_zero(qb_max) + tl.log(qb_sum)
    tl.store(ce_ptr + rows, lse_pa - scale * qb_sa / qb_sum, mask=rmask)
    tl.store(ce_ptr + M + rows, lse_pb - scale * qa_sb / qa_sum, mask=rmask)
    tl.store(lse_p_ptr + rows, lse_pa, mask=rmask)
    tl.store(lse_p_ptr + M + rows, lse_pb, mask=rmask)
    tl.store(lse_q_ptr + rows, lse_qa, mask=rmask)
    tl.store(lse_q_ptr + M + rows, lse_qb, mask=rmask)
    if LABELS:
        tl.store(ent_ptr + rows, lse_qa - qa_t / qa_sum, mask=rmask)
        tl.store(ent_ptr + M + rows, lse_qb - qb_t / qb_sum, mask=rmask)


@triton.jit
def _differences(s_ptr, s_sm, s_sk, xa_ptr, xa_sm, xa_sd, xb_ptr, xb_sm, xb_sd, c_ptr, c_sk, c_sd,
                 va_ptr, vb_ptr, lse_p_ptr, lse_q_ptr, rows, cols, M, K, D, inv_eps, scale,
                 STREAM_A: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                 UPCAST: tl.constexpr, PREC: tl.constexpr):
    """(P_a − Q_b, P_b − Q_a) tiles in fp32, 0 outside the matrix."""
    rmask = rows < M
    cmask = cols < K
    mask = rmask[:, None] & cmask[None, :]
    sa, sb = _tiles(s_ptr, s_sm, s_sk, xa_ptr, xa_sm, xa_sd, xb_ptr, xb_sm, xb_sd, c_ptr, c_sk, c_sd,
                    rows, cols, M, K, D, STREAM_A, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
    lse_pa = tl.load(lse_p_ptr + rows, mask=rmask, other=0.0)
    lse_pb = tl.load(lse_p_ptr + M + rows, mask=rmask, other=0.0)
    lse_qa = tl.load(lse_q_ptr + rows, mask=rmask, other=0.0)
    lse_qb = tl.load(lse_q_ptr + M + rows, mask=rmask, other=0.0)
    va = tl.load(va_ptr + cols, mask=cmask, other=0.0)
    vb = tl.load(vb_ptr + cols, mask=cmask, other=0.0)
    pa = tl.exp(sa * scale - lse_pa[:, None])
    pb = tl.exp(sb * scale - lse_pb[:, None])
    qa = tl.exp(sa * inv_eps + va[None, :] - lse_qa[:, None])
    qb = tl.exp(sb * inv_eps + vb[None, :] - lse_qb[:, None])
    return tl.where(mask, pa - qb, 0.0), tl.where(mask, pb - qa, 0.0)


@kernel
def swapped_rows_kernel(s_ptr, s_sm, s_sk, xa_ptr, xa_sm, xa_sd, xb_ptr, xb_sm, xb_sd, c_ptr, c_sk, c_sd,
                        va_ptr, vb_ptr, lse_p_ptr, lse_q_ptr, g_ptr, M, K, D, inv_eps, scale,
                        STREAM_A: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_DO: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """g[0, rows, d chunk] = (P_a − Q_b)·c, g[1, rows, d chunk] = (P_b − Q_a)·c (fp32)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dout = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    domask = dout < D
    acc_a = tl.zeros([BLOCK_M, BLOCK_DO], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_M, BLOCK_DO], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        da, db = _differences(s_ptr, s_sm, s_sk, xa_ptr, xa_sm, xa_sd, xb_ptr, xb_sm, xb_sd, c_ptr, c_sk, c_sd,
                              va_ptr, vb_ptr, lse_p_ptr, lse_q_ptr, rows, cols, M, K, D, inv_eps, scale,
                              STREAM_A, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
        ct = tl.load(c_ptr + cols[:, None] * c_sk + dout[None, :] * c_sd,
                     mask=(cols < K)[:, None] & domask[None, :], other=0.0).to(tl.float32)
        acc_a = tl.dot(da, ct, acc_a, input_precision=PREC)
        acc_b = tl.dot(db, ct, acc_b, input_precision=PREC)
    out = rows[:, None] * D + dout[None, :]
    mask = (rows < M)[:, None] & domask[None, :]
    tl.store(g_ptr + out, acc_a, mask=mask)
    tl.store(g_ptr + M * D + out, acc_b, mask=mask)


@kernel
def swapped_cols_kernel(s_ptr, s_sm, s_sk, xa_ptr, xa_sm, xa_sd, xb_ptr, xb_sm, xb_sd, c_ptr, c_sk, c_sd,
                        va_ptr, vb_ptr, lse_p_ptr, lse_q_ptr, ha_ptr, hb_ptr, M, K, D, rows_per_prog, inv_eps, scale,
                        STREAM_A: tl.constexpr, GRAD_A: tl.constexpr, GRAD_B: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_DO: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Partials h_a[split, cols, d chunk] = Σ_{i in split} (P_a − Q_b)_ik·x_a,id, and h_b likewise
    with (P_b − Q_a) and x_b (fp32), each where asked for."""
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    dout = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    split = tl.program_id(2)
    domask = dout < D
    acc_a = tl.zeros([BLOCK_K, BLOCK_DO], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_K, BLOCK_DO], dtype=tl.float32)
    row_start = split * rows_per_prog
    for offset in range(0, rows_per_prog, BLOCK_M):
        rows = row_start + offset + tl.arange(0, BLOCK_M)
        xmask = (rows < M)[:, None] & domask[None, :]
        da, db = _differences(s_ptr, s_sm, s_sk, xa_ptr, xa_sm, xa_sd, xb_ptr, xb_sm, xb_sd, c_ptr, c_sk, c_sd,
                              va_ptr, vb_ptr, lse_p_ptr, lse_q_ptr, rows, cols, M, K, D, inv_eps, scale,
                              STREAM_A, BLOCK_M, BLOCK_K, BLOCK_D, UPCAST, PREC)
        if GRAD_A:
            xt = tl.load(xa_ptr + rows[:, None] * xa_sm + dout[None, :] * xa_sd, mask=xmask, other=0.0)
            acc_a = tl.dot(tl.trans(da), xt.to(tl.float32), acc_a, input_precision=PREC)
        if GRAD_B:
            xt = tl.load(xb_ptr + rows[:, None] * xb_sm + dout[None, :] * xb_sd, mask=xmask, other=0.0)
            acc_b = tl.dot(tl.trans(db), xt.to(tl.float32), acc_b, input_precision=PREC)
    out = split * K * D + cols[:, None] * D + dout[None, :]
    mask = (cols < K)[:, None] & domask[None, :]
    if GRAD_A:
        tl.store(ha_ptr + out, acc_a, mask=mask)
    if GRAD_B:
        tl.store(hb_ptr + out, acc_b, mask=mask)


# --- launcher and primitives -----------------------------------------------------------------

def _swapped(scores, xa, xb, c, va, vb, inv_eps, scale, grad_a, grad_b, labels):
    """The primitives' outputs (module docstring); scores None: S_a = xa·cᵀ recomputed."""
    m, (k, d) = xb.shape[0], c.shape
    dev = xb.device
    factors = [t for t in (xa, xb, c) if t is not None]
    if len({t.dtype for t in factors}) > 1:  # tl.dot needs one operand dtype
        factors = [t.to(torch.float32) for t in factors]
    xb, c = factors[-2], factors[-1]
    xa = factors[0] if xa is not None else xb  # an unused pointer when S_a is stored and grad_a is False
    s = scores if scores is not None else c  # an unused pointer when S_a is recomputed
    s_strides = (scores.stride(0), scores.stride(1)) if scores is not None else (0, 0)
    va, vb = f32_vector(va), f32_vector(vb)
    operands = (s, *s_strides, xa, xa.stride(0), xa.stride(1), xb, xb.stride(0), xb.stride(1),
                c, c.stride(0), c.stride(1), va, vb)
    stream_a = scores is None

    ce = torch.empty((2, m), dtype=torch.float32, device=dev)
    lse_p, lse_q = torch.empty_like(ce), torch.empty_like(ce)
    ent = torch.empty_like(ce) if labels else ce
    block_m, block_k = pow2_block(m, CONFIG.block_m_swapped), pow2_block(k, CONFIG.block_k_swapped)
    block_d = pow2_block(d, CONFIG.block_d_backward)
    swapped_stats_kernel[(triton.cdiv(m, block_m),)](
        *operands, ce, lse_p, lse_q, ent, m, k, d, float(inv_eps), float(scale),
        STREAM_A=stream_a, LABELS=labels, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_d, **dot_launch_options())

    block_do = pow2_block(d, CONFIG.block_d_out)
    d_chunks = triton.cdiv(d, block_do)
    common = dict(STREAM_A=stream_a, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_d, BLOCK_DO=block_do,
                  **dot_launch_options())
    g = torch.empty((2, m, d), dtype=torch.float32, device=dev)
    check_offsets("the (2, M, D) products", g)
    swapped_rows_kernel[(triton.cdiv(m, block_m), d_chunks)](
        *operands, lse_p, lse_q, g, m, k, d, float(inv_eps), float(scale), **common)

    ha = hb = None
    if grad_a or grad_b:
        k_tiles = triton.cdiv(k, block_k)
        per, splits = split_rows(m, block_m, triton.cdiv(target_programs(dev), k_tiles * d_chunks))
        parts = [torch.empty((splits, k, d), dtype=torch.float32, device=dev) if want else None
                 for want in (grad_a, grad_b)]
        for p in parts:
            if p is not None:
                check_offsets("the (splits, K, D) partials", p)
        pa, pb = (p if p is not None else g for p in parts)
        swapped_cols_kernel[(k_tiles, d_chunks, splits)](
            *operands, lse_p, lse_q, pa, pb, m, k, d, per, float(inv_eps), float(scale),
            GRAD_A=grad_a, GRAD_B=grad_b, **common)
        ha, hb = ((p[0] if splits == 1 else p.sum(0)) if p is not None else None for p in parts)
    lab = None
    if labels:
        lab_a = sinkhorn_assign(scores, va, inv_eps) if scores is not None else streaming_assign(xa, c, va, inv_eps)
        lab = torch.stack([lab_a, streaming_assign(xb, c, vb, inv_eps)])
    return ce, g, ha, hb, lab, (ent.sum(dim=1) if labels else None)


def _check_swapped(xb, c, va, vb, xa):
    check_factors(xb, c, "xb", "c")
    if xa is not None:
        check_factors(xa, c, "xa", "c")
        if xa.shape != xb.shape:
            raise ValueError(f"xa and xb must have the same shape (M, D), got {tuple(xa.shape)} and {tuple(xb.shape)}")
    k = c.shape[0]
    for name, v in (("va", va), ("vb", vb)):
        if v.shape != (k,):
            raise ValueError(f"{name} must have shape ({k},), got {tuple(v.shape)}")


@on_tensor_device
def swapped_softmax_products(scores, xb, c, va, vb, inv_eps, scale, xa, grad_b, labels=False):
    """The swapped products with S_a stored (contract in sigma_kernels/backends/__init__.py): (ce (2, M),
    g (2, M, D), h_a (K, D) or None (xa None), h_b (K, D) or None, labels (2, M) or None, entropy (2,)
    or None), all fp32 but the int64 labels."""
    check_matrix("scores", scores)
    _check_swapped(xb, c, va, vb, xa)
    if scores.shape != (xb.shape[0], c.shape[0]):
        raise ValueError(f"scores must have shape (M, K) = ({xb.shape[0]}, {c.shape[0]}), got {tuple(scores.shape)}")
    return _swapped(scores, xa, xb, c, va, vb, inv_eps, scale, xa is not None, grad_b, labels)


@on_tensor_device
def streaming_swapped_softmax_products(xa, xb, c, va, vb, inv_eps, scale, grad_b, labels=False):
    """The swapped products with S_a = xa·cᵀ recomputed too: outputs as `swapped_softmax_products`
    with h_a always computed."""
    _check_swapped(xb, c, va, vb, xa)
    return _swapped(None, xa, xb, c, va, vb, inv_eps, scale, True, grad_b, labels)
