"""The compiled `cpu` backend (csrc/) against the pure-PyTorch reference.

Odd shapes (1, primes, non-multiples of the 128-row chunk), fp32/fp16/bf16, hard and soft
targets, values and gradients, and thread-count independence: every Sinkhorn primitive and the
cross-entropy forward/dx are bitwise equal with 1 and 2 threads (rows are split into fixed
chunks whatever the thread count, reduced in chunk order); the cross-entropy dc sums per-thread
partials, whose order depends on the thread count, so it is compared to 1e-6 relative.
"""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sigma_kernels as sk
from sigma_kernels.backends import backend_info, get_backend, is_available

pytestmark = pytest.mark.skipif(
    not is_available("cpu"),
    reason=f"compiled extension sigma_kernels._C not built: {backend_info()['cpu']['reason']}")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = ((1, 1), (1, 7), (37, 29), (257, 5), (130, 131))


def ref():
    return get_backend("reference")


def cpu():
    return get_backend("cpu")


def scores(m, k, dtype, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(m, k, generator=g) * 2 - 1) * spread).to(dtype)


def factors(m, k, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    return x.to(dtype), c.to(dtype)


def close(a, b, rtol=2e-6, atol=2e-6):
    torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol)


def test_extension_registers_every_primitive():
    from sigma_kernels import _C  # noqa: F401
    assert cpu().fallbacks == ()
    for name in ("sinkhorn_row_step", "streaming_row_step", "linear_cross_entropy_backward",
                 "sinkhorn_target_cross_entropy_backward"):
        assert hasattr(torch.ops.sigma_kernels_ext, name)


# --- Sinkhorn primitives ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", SHAPES)
def test_sinkhorn_primitives_match_reference(m, k, dtype):
    s = scores(m, k, dtype)
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(m, generator=g), torch.randn(k, generator=g)
    inv_eps, log_m = 20.0, math.log(m)
    close(cpu().sinkhorn_col_lse(s, u, inv_eps), ref().sinkhorn_col_lse(s, u, inv_eps), rtol=1e-6, atol=1e-5)
    uc, colc = cpu().sinkhorn_row_step(s, v, inv_eps, log_m)
    ur, colr = ref().sinkhorn_row_step(s, v, inv_eps, log_m)
    close(uc, ur, rtol=1e-6, atol=1e-5)
    close(colc, colr, rtol=1e-6, atol=1e-5)
    assert torch.equal(cpu().sinkhorn_assign(s, v, inv_eps), ref().sinkhorn_assign(s, v, inv_eps))
    # a plan with moderate entries (u from the row step keeps rows summing to 1/M)
    close(cpu().sinkhorn_plan(s, ur, v, inv_eps, log_m), ref().sinkhorn_plan(s, ur, v, inv_eps, log_m),
          rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("inv_eps", [1000.0, 300.0])
def test_row_step_small_epsilon_uses_exact_column_lse(inv_eps):
    # With ε ≤ 1e-3 and v far from balanced most column sums of the one-exp pass underflow;
    # those columns must come from the exact log-domain pass.
    s = scores(300, 41, torch.float32, spread=1.0)
    v = torch.linspace(-200, 200, 41)
    uc, colc = cpu().sinkhorn_row_step(s, v, inv_eps, math.log(300))
    ur, colr = ref().sinkhorn_row_step(s, v, inv_eps, math.log(300))
    close(uc, ur, rtol=1e-6, atol=1e-4)
    close(colc, colr, rtol=1e-6, atol=1e-4)
    assert torch.isfinite(colc).all()


def test_assign_ties_go_to_lowest_index():
    s = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7], [0.3, 0.3, 0.3]])
    v = torch.zeros(3)
    assert cpu().sinkhorn_assign(s, v, 20.0).tolist() == [0, 1, 0]
    x, c = torch.eye(3)[[0, 1, 1]], torch.stack([torch.eye(3)[0], torch.eye(3)[0], torch.eye(3)[1]])
    assert cpu().streaming_assign(x, c, v, 20.0).tolist() == [0, 2, 2]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,d", [(1, 1, 1), (37, 29, 19), (257, 11, 19)])
def test_streaming_primitives_match_reference(m, k, d, dtype):
    x, c = factors(m, k, d, dtype=dtype)
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(m, generator=g), torch.randn(k, generator=g)
    close(cpu().streaming_col_lse(x, c, u, 20.0), ref().streaming_col_lse(x, c, u, 20.0), rtol=1e-6, atol=1e-5)
    for a, b in zip(cpu().streaming_row_step(x, c, v, 20.0, math.log(m)),
                    ref().streaming_row_step(x, c, v, 20.0, math.log(m))):
        close(a, b, rtol=1e-6, atol=1e-5)
    assert torch.equal(cpu().streaming_assign(x, c, v, 20.0), ref().streaming_assign(x, c, v, 20.0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 1), (37, 29), (200, 7)])
def test_public_sinkhorn_matches_reference(m, k, dtype):
    s = scores(m, k, dtype, seed=3)
    rc = sk.sinkhorn_solve(s, 0.05, 10, backend="cpu")
    rr = sk.sinkhorn_solve(s, 0.05, 10, backend="reference")
    close(rc.u, rr.u, rtol=1e-5, atol=2e-5)
    close(rc.v, rr.v, rtol=1e-5, atol=2e-5)
    close(rc.marginal_error, rr.marginal_error, rtol=1e-3, atol=1e-6)
    q = sk.sinkhorn(s, 0.05, 10, backend="cpu")
    close(q, sk.sinkhorn(s, 0.05, 10, backend="reference"), rtol=1e-4, atol=1e-6)
    close(q.sum(1), torch.ones(m), rtol=1e-5, atol=1e-5)
    assert torch.equal(sk.sinkhorn_assign(s, 0.05, 10, backend="cpu"),
                       sk.sinkhorn_assign(s, 0.05, 10, backend="reference"))


@pytest.mark.parametrize("m,k,d", [(1, 1, 3), (37, 29, 19), (150, 13, 19)])
def test_public_sinkhorn_streaming_matches_reference(m, k, d):
    g = torch.Generator().manual_seed(4)
    z, p = torch.randn(m, d, generator=g), torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    rc = sk.sinkhorn_streaming(z, p, 0.05, 10, backend="cpu")
    rr = sk.sinkhorn_streaming(z, p, 0.05, 10, backend="reference")
    close(rc.u, rr.u, rtol=1e-5, atol=2e-5)
    close(rc.v, rr.v, rtol=1e-5, atol=2e-5)
    assert torch.equal(sk.sinkhorn_assign_streaming(z, p, 0.05, 10, backend="cpu"),
                       sk.sinkhorn_assign_streaming(z, p, 0.05, 10, backend="reference"))


# --- Fused linear cross-entropy -------------------------------------------------------------

def _ce_grads(loss_fn, z, p):
    z = z.clone().requires_grad_(True)
    p = p.clone().requires_grad_(True)
    loss = loss_fn(z, p)
    loss.backward()
    return loss.detach(), z.grad, p.grad


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("m,k,d", [(1, 1, 1), (37, 29, 19), (257, 3, 19)])
def test_prototype_cross_entropy_values_and_gradients(m, k, d, kind):
    g = torch.Generator().manual_seed(5)
    z, p = torch.randn(m, d, generator=g), torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    # soft targets deliberately not normalised
    t = torch.randint(0, k, (m,), generator=g) if kind == "hard" else torch.rand(m, k, generator=g) * 2
    out = {b: _ce_grads(lambda z_, p_, b=b: sk.prototype_cross_entropy(z_, p_, t, 0.1, backend=b), z, p)
           for b in ("cpu", "reference")}
    for a, b in zip(out["cpu"], out["reference"]):
        close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("targets", ["hard", "soft"])
@pytest.mark.parametrize("m,k,d", [(1, 1, 2), (37, 29, 19), (200, 17, 8)])
def test_prototype_cross_entropy_sinkhorn_values_and_gradients(m, k, d, targets):
    g = torch.Generator().manual_seed(6)
    z, p = torch.randn(m, d, generator=g), torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    zt = torch.randn(m, d + 2, generator=g)
    pt = torch.nn.functional.normalize(torch.randn(k, d + 2, generator=g), dim=1)
    v = sk.sinkhorn_streaming(zt, pt, 0.05, 3, backend="reference").v
    out = {b: _ce_grads(lambda z_, p_, b=b: sk.prototype_cross_entropy_sinkhorn(z_, p_, zt, pt, v, 0.05, 0.1,
                                                                                targets=targets, backend=b), z, p)
           for b in ("cpu", "reference")}
    for a, b in zip(out["cpu"], out["reference"]):
        close(a, b, rtol=1e-5, atol=1e-6)


def _partial_grads(loss_fn, z, p, which):
    """Gradients when only `which` ("z", "p" or "both") requires grad; None for the other."""
    z = z.clone().requires_grad_(which in ("z", "both"))
    p = p.clone().requires_grad_(which in ("p", "both"))
    loss_fn(z, p).backward()
    return z.grad, p.grad


@pytest.mark.parametrize("which", ["z", "p", "both"])
@pytest.mark.parametrize("loss", ["given", "sinkhorn"])
def test_cross_entropy_gradients_only_for_inputs_that_need_them(loss, which):
    m, k, d = 37, 29, 19
    g = torch.Generator().manual_seed(11)
    z, p = torch.randn(m, d, generator=g), torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    zt = torch.randn(m, d + 2, generator=g)
    pt = torch.nn.functional.normalize(torch.randn(k, d + 2, generator=g), dim=1)
    t = torch.randint(0, k, (m,), generator=g)
    v = torch.randn(k, generator=g)
    if loss == "given":
        fn = lambda b: lambda z_, p_: sk.prototype_cross_entropy(z_, p_, t, 0.1, backend=b)  # noqa: E731
    else:
        fn = lambda b: lambda z_, p_: sk.prototype_cross_entropy_sinkhorn(z_, p_, zt, pt, v, 0.05, 0.1,  # noqa: E731
                                                                     targets="soft", backend=b)
    dz, dp = _partial_grads(fn("cpu"), z, p, which)
    dz_r, dp_r = _partial_grads(fn("reference"), z, p, "both")
    assert (dz is None) == (which == "p") and (dp is None) == (which == "z")
    if dz is not None:
        close(dz, dz_r, rtol=1e-5, atol=1e-6)
    if dp is not None:
        close(dp, dp_r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("need_dx,need_dc", [(True, False), (False, True), (False, False)])
def test_cross_entropy_primitives_skip_gradients_not_asked_for(need_dx, need_dc):
    m, k, d = 130, 29, 19  # two row chunks
    x, c = factors(m, k, d, seed=12)
    y, cy = factors(m, k, d + 1, seed=13)
    g = torch.Generator().manual_seed(14)
    v, grad = torch.randn(k, generator=g), torch.rand(m, generator=g)
    t = torch.rand(m, k, generator=g)
    lse = ref().linear_cross_entropy_forward(x, c, t, 10.0)[1]
    lse_s = ref().sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, 20.0, 10.0, False)[1]
    pairs = [(b.linear_cross_entropy_backward(grad, x, c, t, lse, 10.0, need_dx=need_dx, need_dc=need_dc),
              ref().linear_cross_entropy_backward(grad, x, c, t, lse, 10.0))
             for b in (cpu(), ref())]
    pairs += [(b.sinkhorn_target_cross_entropy_backward(grad, x, c, y, cy, v, lse_s, 20.0, 10.0, False,
                                                        need_dx=need_dx, need_dc=need_dc),
               ref().sinkhorn_target_cross_entropy_backward(grad, x, c, y, cy, v, lse_s, 20.0, 10.0, False))
              for b in (cpu(), ref())]
    # the compiled op itself returns an empty tensor for a gradient it skipped
    raw = torch.ops.sigma_kernels_ext.linear_cross_entropy_backward(grad, x, c, t, lse, 10.0, need_dx, need_dc)
    assert [r.shape == (0,) for r in raw] == [not need_dx, not need_dc]
    for (dx, dc), (dx_r, dc_r) in pairs:
        assert (dx is None) != need_dx and (dc is None) != need_dc
        if need_dx:
            close(dx, dx_r, rtol=1e-5, atol=1e-6)
        if need_dc:
            close(dc, dc_r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_primitives_low_precision_inputs(dtype, soft):
    m, k, d = 37, 29, 19
    x, c = factors(m, k, d, seed=7, dtype=dtype)
    y, cy = factors(m, k, d + 1, seed=8, dtype=dtype)
    g = torch.Generator().manual_seed(9)
    v, grad = torch.randn(k, generator=g), torch.rand(m, generator=g)
    tgt = torch.rand(m, k, generator=g).to(dtype) if soft else torch.randint(0, k, (m,), generator=g)
    calls = {  # name -> (forward(backend), backward(backend, lse))
        "given": (lambda b: b.linear_cross_entropy_forward(x, c, tgt, 10.0),
                  lambda b, lse: b.linear_cross_entropy_backward(grad, x, c, tgt, lse, 10.0)),
        "sinkhorn": (lambda b: b.sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, 20.0, 10.0, soft),
                     lambda b, lse: b.sinkhorn_target_cross_entropy_backward(grad, x, c, y, cy, v, lse, 20.0, 10.0,
                                                                             soft)),
    }
    for fwd, bwd in calls.values():
        loss_c, lse_c = fwd(cpu())
        loss_r, lse_r = fwd(ref())
        close(loss_c, loss_r, rtol=1e-5, atol=1e-5)
        close(lse_c, lse_r, rtol=1e-6, atol=1e-5)
        dx_c, dc_c = bwd(cpu(), lse_r)
        dx_r, dc_r = bwd(ref(), lse_r)
        assert dx_c.dtype == dtype and dc_c.dtype == dtype
        # fp32 results one rounding to the low-precision dtype apart at most
        tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
        close(dx_c, dx_r, rtol=tol, atol=1e-4)
        close(dc_c, dc_r, rtol=tol, atol=1e-4)


def test_cross_entropy_rejects_bad_targets():
    x, c = factors(5, 4, 3)
    with pytest.raises(RuntimeError, match="target indices must be in"):
        cpu().linear_cross_entropy_forward(x, c, torch.tensor([0, 1, 2, 3, 4]), 10.0)
    with pytest.raises(RuntimeError, match="soft target must have shape"):
        cpu().linear_cross_entropy_forward(x, c, torch.rand(5, 3), 10.0)


# --- Thread-count independence ----------------------------------------------------------------

def _run_all(s, x, c, y, cy, v, u, t_hard, t_soft, grad):
    b = cpu()
    out = [b.sinkhorn_col_lse(s, u, 20.0), *b.sinkhorn_row_step(s, v, 20.0, 5.0), b.sinkhorn_assign(s, v, 20.0),
           *b.sinkhorn_row_step(s, v * 300, 1000.0, 5.0),  # exact-fallback path
           b.streaming_col_lse(x, c, u, 20.0), *b.streaming_row_step(x, c, v, 20.0, 5.0),
           b.streaming_assign(x, c, v, 20.0)]
    ce = []
    for t in (t_hard, t_soft):
        loss, lse = b.linear_cross_entropy_forward(x, c, t, 10.0)
        ce.append((loss, lse, *b.linear_cross_entropy_backward(grad, x, c, t, lse, 10.0)))
    for soft in (False, True):
        loss, lse = b.sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, 20.0, 10.0, soft)
        ce.append((loss, lse, *b.sinkhorn_target_cross_entropy_backward(grad, x, c, y, cy, v, lse, 20.0, 10.0, soft)))
    return out, ce


def test_two_threads_equal_one_thread(threads):
    m, k, d = 517, 31, 19  # 5 chunks of 128 rows (3 of 256 for GEMM tiles), the last partial
    s = scores(m, k, torch.float32, seed=10)
    x, c = factors(m, k, d, seed=11)
    y, cy = factors(m, k, d, seed=12)
    g = torch.Generator().manual_seed(13)
    v, u, grad = torch.randn(k, generator=g), torch.randn(m, generator=g), torch.rand(m, generator=g)
    t_hard, t_soft = torch.randint(0, k, (m,), generator=g), torch.rand(m, k, generator=g)
    results = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        results[n] = _run_all(s, x, c, y, cy, v, u, t_hard, t_soft, grad)
    for a, b in zip(results[1][0], results[2][0]):
        assert torch.equal(a, b)  # Sinkhorn: bitwise
    for (l1, e1, dx1, dc1), (l2, e2, dx2, dc2) in zip(results[1][1], results[2][1]):
        assert torch.equal(l1, l2) and torch.equal(e1, e2) and torch.equal(dx1, dx2)
        close(dc1, dc2, rtol=1e-6, atol=1e-7)  # per-thread partial sums: order differs


# --- Properties over shapes ---------------------------------------------------------------------

@given(m=st.integers(1, 300), k=st.integers(1, 40), d=st.integers(1, 20), seed=st.integers(0, 2**16),
       inv_eps=st.sampled_from([1.0, 20.0, 100.0]))
def test_property_row_step_and_cross_entropy_match_reference(m, k, d, seed, inv_eps):
    x, c = factors(m, k, d, seed=seed)
    s = x @ c.T
    g = torch.Generator().manual_seed(seed)
    v, grad = torch.randn(k, generator=g), torch.rand(m, generator=g)
    for a, b in zip(cpu().sinkhorn_row_step(s, v, inv_eps, math.log(m)),
                    ref().sinkhorn_row_step(s, v, inv_eps, math.log(m))):
        close(a, b, rtol=1e-6, atol=1e-5 * max(1.0, inv_eps / 20))
    t = torch.randint(0, k, (m,), generator=g)
    loss_c, lse_c = cpu().linear_cross_entropy_forward(x, c, t, 10.0)
    loss_r, lse_r = ref().linear_cross_entropy_forward(x, c, t, 10.0)
    close(loss_c, loss_r, rtol=1e-5, atol=1e-5)
    for a, b in zip(cpu().linear_cross_entropy_backward(grad, x, c, t, lse_r, 10.0),
                    ref().linear_cross_entropy_backward(grad, x, c, t, lse_r, 10.0)):
        # dlogits are O(scale) and cancel in dx/dc: absolute tolerance on that scale
        close(a, b, rtol=1e-5, atol=2e-5)


# --- Optional CUDA kernels of the same ops (built only with nvcc; need a GPU to run) ----------

def _cuda_kernels_built():
    from sigma_kernels import _C
    return getattr(_C, "with_cuda", False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 1), (37, 29), (1100, 300)])
def test_cuda_sinkhorn_kernels_match_reference(m, k, dtype):
    if not _cuda_kernels_built():
        pytest.skip("the extension was built without its CUDA part (no nvcc, or SIGMA_NO_CUDA=1)")
    s = scores(m, k, dtype, seed=14)
    g = torch.Generator().manual_seed(15)
    u, v = torch.randn(m, generator=g), torch.randn(k, generator=g)
    ops = torch.ops.sigma_kernels_ext
    sc = s.cuda()
    close(ops.sinkhorn_col_lse(sc, u.cuda(), 20.0).cpu(), ref().sinkhorn_col_lse(s, u, 20.0), rtol=1e-6, atol=1e-5)
    uc, colc = ops.sinkhorn_row_step(sc, v.cuda(), 20.0, math.log(m))
    ur, colr = ref().sinkhorn_row_step(s, v, 20.0, math.log(m))
    close(uc.cpu(), ur, rtol=1e-6, atol=1e-5)
    close(colc.cpu(), colr, rtol=1e-6, atol=1e-5)
