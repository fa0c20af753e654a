"""The reference Sinkhorn against independent float64 computations, POT, and its own properties."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from truth import sinkhorn_exp_f64, sinkhorn_log_f64

import sigma_kernels as sk

REF = dict(backend="reference")
odd_dims = st.sampled_from([1, 2, 3, 7, 29, 37, 64, 101])


def cosine_scores(m, k, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    return (z @ c.T).to(dtype)


@given(m=odd_dims, k=odd_dims, iters=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_rows_sum_to_one_and_match_float64(m, k, iters, seed):
    s = cosine_scores(m, k, seed=seed)
    q = sk.sinkhorn(s, 0.05, iters, **REF)
    assert q.dtype == torch.float32 and q.shape == (m, k)
    torch.testing.assert_close(q.sum(1), torch.ones(m), atol=1e-5, rtol=0)
    q64, u64, v64 = sinkhorn_log_f64(s.double().numpy(), 0.05, iters)
    np.testing.assert_allclose(q.double().numpy(), q64, atol=2e-5, rtol=1e-4)
    u, v = sk.sinkhorn_potentials(s, 0.05, iters, **REF)
    # potentials are only defined up to u + c, v - c; compare the gauge-free sums u_i + v_k
    # (|u + v| is up to ~|S|/ε + log MK; float32 keeps it to a few 1e-6 relative)
    np.testing.assert_allclose((u[:, None] + v[None, :]).double().numpy(), u64[:, None] + v64[None, :],
                               atol=2e-5, rtol=2e-5)


@given(m=odd_dims, k=odd_dims, iters=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_matches_exp_domain_where_exp_cannot_overflow(m, k, iters, seed):
    s = cosine_scores(m, k, seed=seed)
    q = sk.sinkhorn(s, 0.1, iters, **REF)  # |S|/ε ≤ 10: exp is safe in float64 and float32
    np.testing.assert_allclose(q.double().numpy(), sinkhorn_exp_f64(s.double().numpy(), 0.1, iters),
                               atol=2e-5, rtol=1e-4)


def test_prototype_marginals_approach_m_over_k():
    s = cosine_scores(301, 17, seed=3)
    errors = [sk.sinkhorn_solve(s, 0.1, n, **REF).marginal_error.item() for n in (1, 3, 10, 100)]
    assert errors[-1] < 1e-4
    assert errors[0] > errors[1] > errors[2] > errors[3]
    q = sk.sinkhorn(s, 0.1, 100, **REF)
    torch.testing.assert_close(q.sum(0), torch.full((17,), 301 / 17), atol=1e-2, rtol=1e-3)


def test_marginal_error_matches_its_definition():
    s = cosine_scores(53, 11, seed=4)
    res = sk.sinkhorn_solve(s, 0.05, 4, **REF)
    q = sk.sinkhorn(s, 0.05, 4, **REF).double()
    expected = (q.sum(0) / 53 - 1 / 11).abs().sum()
    assert abs(res.marginal_error.item() - expected.item()) < 1e-5


def test_per_column_constant_leaves_q_unchanged_at_every_iteration():
    s = cosine_scores(41, 13, seed=5)
    shift = torch.linspace(-0.5, 0.5, 13)
    for iters in (1, 3):
        torch.testing.assert_close(sk.sinkhorn(s + shift, 0.05, iters, **REF), sk.sinkhorn(s, 0.05, iters, **REF),
                                   atol=1e-5, rtol=1e-4)


# Up to 3000 iterations per solve: a few examples keep the default run short.
@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), m=st.sampled_from([31, 64]), k=st.sampled_from([5, 13]))
def test_per_row_constant_leaves_q_unchanged_at_convergence(seed, m, k):
    # Row shifts reweight the first prototype sums, so they cancel only at the fixed point.
    s = cosine_scores(m, k, seed=seed)
    shift = torch.randn(m, 1, generator=torch.Generator().manual_seed(seed))
    kw = dict(tol=1e-7, check_every=20, **REF)
    torch.testing.assert_close(sk.sinkhorn(s + shift * 0.3, 0.2, 3000, **kw), sk.sinkhorn(s, 0.2, 3000, **kw),
                               atol=1e-4, rtol=1e-3)


def test_early_stop_reaches_tolerance_and_matches_a_long_run():
    s = cosine_scores(200, 10, seed=6)
    early = sk.sinkhorn_solve(s, 0.1, 10_000, tol=1e-6, check_every=5, **REF)
    assert early.marginal_error.item() <= 1e-6
    q_long = sk.sinkhorn(s, 0.1, 2000, **REF)
    q_early = sk.sinkhorn(s, 0.1, 10_000, tol=1e-6, check_every=5, **REF)
    torch.testing.assert_close(q_early, q_long, atol=1e-5, rtol=1e-4)


def test_agrees_with_pot_sinkhorn_log_at_convergence():
    ot = pytest.importorskip("ot")
    s = cosine_scores(97, 23, seed=7).double()
    m, k = s.shape
    a, b = torch.full((m,), 1 / m, dtype=torch.float64), torch.full((k,), 1 / k, dtype=torch.float64)
    p = ot.bregman.sinkhorn_log(a, b, -s, reg=0.1, numItermax=20_000, stopThr=1e-12)
    q = sk.sinkhorn(s.float(), 0.1, 20_000, tol=1e-7, check_every=10, **REF)
    torch.testing.assert_close(q.double(), p * m, atol=2e-5, rtol=1e-3)


@pytest.mark.parametrize("eps", [0.005, 0.001])
def test_small_epsilon_is_finite_and_accurate_in_fp32(eps):
    s = cosine_scores(64, 31, seed=8)  # |S| ≤ 1: exp(S/ε) overflows float32 for ε < 1/88.7
    assert not torch.isfinite(torch.exp(s / eps)).all()
    q = sk.sinkhorn(s, eps, 10, **REF)
    assert torch.isfinite(q).all()
    q64, _, _ = sinkhorn_log_f64(s.double().numpy(), eps, 10)
    np.testing.assert_allclose(q.double().numpy(), q64, atol=1e-3, rtol=1e-2)
    assert torch.isfinite(sk.sinkhorn_solve(s, eps, 10, **REF).marginal_error)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores_accumulate_in_fp32(dtype):
    s = cosine_scores(73, 19, seed=9, dtype=dtype)
    q = sk.sinkhorn(s, 0.05, 10, **REF)
    assert q.dtype == torch.float32 and torch.isfinite(q).all()
    q64, _, _ = sinkhorn_log_f64(s.double().numpy(), 0.05, 10)  # truth on the same rounded inputs
    np.testing.assert_allclose(q.double().numpy(), q64, atol=2e-5, rtol=1e-4)


def test_assign_is_argmax_of_q_with_ties_to_lowest_index():
    s = cosine_scores(61, 7, seed=10)
    q = sk.sinkhorn(s, 0.05, 5, **REF)
    torch.testing.assert_close(sk.sinkhorn_assign(s, 0.05, 5, **REF), q.argmax(1))
    tied = torch.zeros(5, 4)  # every prototype ties: lowest index wins
    assert sk.sinkhorn_assign(tied, 0.05, 3, **REF).tolist() == [0] * 5


@pytest.mark.parametrize("normalize", [True, False])
def test_streaming_matches_float64(normalize):
    """The streaming solve (S = normalize(z)·cᵀ formed inside) against the float64 truth on S."""
    g = torch.Generator().manual_seed(11)
    z, c = torch.randn(43, 19, generator=g), torch.nn.functional.normalize(torch.randn(29, 19, generator=g), dim=1)
    z64 = z.double()
    s64 = (torch.nn.functional.normalize(z64, dim=1) if normalize else z64) @ c.double().T
    eps = 0.05 if normalize else 1.0  # unnormalised rows: |S| up to ~|z|, keep S/ε moderate
    q64, u64, v64 = sinkhorn_log_f64(s64.numpy(), eps, 7)
    res = sk.sinkhorn_streaming(z, c, eps, 7, normalize=normalize, **REF)
    np.testing.assert_allclose((res.u[:, None] + res.v[None, :]).double().numpy(), u64[:, None] + v64[None, :],
                               atol=2e-5, rtol=2e-5)
    assert torch.equal(sk.sinkhorn_assign_streaming(z, c, eps, 7, normalize=normalize, **REF),
                       torch.from_numpy(q64.argmax(1)))


# Strided layouts of the same values: a transposed view, a column slice of a wider matrix and a
# stride-0 (expanded) row. Each backend must give on them what it gives on a contiguous copy.
def _strided_views(t, seed):
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(t.shape[0], 2 * t.shape[1], generator=g, dtype=t.dtype)
    wide[:, ::2] = t
    return {"transposed": t.T.contiguous().T, "column slice": wide[:, ::2], "expanded": t[:1].expand_as(t)}


def _backend_or_skip(name):
    if name not in sk.available_backends():
        pytest.skip(sk.backend_info()[name]["reason"])
    return dict(backend=name)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_non_contiguous_inputs(backend):
    kw = _backend_or_skip(backend)
    s = cosine_scores(23, 37, seed=12)
    v = torch.randn(37, generator=torch.Generator().manual_seed(13))
    for layout, view in _strided_views(s, seed=14).items():
        assert not view.is_contiguous(), layout
        dense = view.contiguous()
        q64 = sinkhorn_log_f64(dense.double().numpy(), 0.05, 4)[0]
        np.testing.assert_allclose(sk.sinkhorn(view, 0.05, 4, **kw).double().numpy(), q64, atol=2e-5, rtol=1e-4,
                                   err_msg=layout)
        assert torch.equal(sk.sinkhorn_assign_from_potentials(view, v, 0.05, **kw),
                           sk.sinkhorn_assign_from_potentials(dense, v, 0.05, **kw)), layout
    z = torch.randn(23, 11, generator=torch.Generator().manual_seed(15))
    c = torch.nn.functional.normalize(torch.randn(37, 11, generator=torch.Generator().manual_seed(16)), dim=1)
    for (zl, zv), (cl, cv) in zip(_strided_views(z, seed=17).items(), _strided_views(c, seed=18).items()):
        layout = f"z {zl}, prototypes {cl}"
        want = sk.sinkhorn_streaming(zv.contiguous(), cv.contiguous(), 0.05, 4, **kw)
        for a, b in zip(sk.sinkhorn_streaming(zv, cv, 0.05, 4, **kw), want):
            torch.testing.assert_close(a, b, msg=layout)
        assert torch.equal(sk.sinkhorn_assign_from_potentials_streaming(zv, cv, want.v, 0.05, **kw),
                           sk.sinkhorn_assign_from_potentials_streaming(zv.contiguous(), cv.contiguous(), want.v,
                                                                        0.05, **kw)), layout


def test_float64_scores_stay_float64():
    s = cosine_scores(11, 5, seed=13).double()
    q = sk.sinkhorn(s, 0.05, 3, **REF)
    assert q.dtype == torch.float64
    np.testing.assert_allclose(q.numpy(), sinkhorn_log_f64(s.numpy(), 0.05, 3)[0], atol=1e-12)


def test_sinkhorn_ignores_autograd():
    s = cosine_scores(9, 4, seed=14).requires_grad_()
    q = sk.sinkhorn(s, 0.05, 3, **REF)
    assert not q.requires_grad
    assert math.isclose(q.sum().item(), 9.0, rel_tol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_assign_from_potentials_matches_argmax_of_q(backend):
    g = torch.Generator().manual_seed(15)
    z, c = torch.randn(53, 11, generator=g), torch.nn.functional.normalize(torch.randn(17, 11, generator=g), dim=1)
    s = sk.prototype_scores(z, c)
    res = sk.sinkhorn_solve(s, 0.05, 6, **REF)
    expected = sk.sinkhorn(s, 0.05, 6, **REF).argmax(1)
    assert torch.equal(sk.sinkhorn_assign_from_potentials(s, res.v, 0.05, backend=backend), expected)
    assert torch.equal(sk.sinkhorn_assign_from_potentials_streaming(z, c, res.v, 0.05, backend=backend), expected)
    with pytest.raises(ValueError, match=r"v must have shape \(17,\)"):
        sk.sinkhorn_assign_from_potentials(s, res.v[:5], 0.05)
    with pytest.raises(ValueError, match="epsilon"):
        sk.sinkhorn_assign_from_potentials_streaming(z, c, res.v, 0.0)
