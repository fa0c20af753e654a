"""The triton backend against the reference backend (kernels run under TRITON_INTERPRET=1 on CPU
tensors when there is no CUDA device; conftest.py sets that up).

Primitives are checked directly and through the public API (backend="triton" vs "reference"):
Q, potentials, hard assignments (ties included), loss values, dz and dC, fp32/fp16/bf16, hard,
soft and on-the-fly Sinkhorn targets, odd shapes. "small blocks" runs the same checks with 16-wide
tiles and 3 split-M programs so that the multi-tile, masked and partial-combine paths all run.
"""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from truth import assert_no_worse_than_plain, cross_entropy, prototype_logits, sinkhorn_log  # noqa: E402

import sigma_kernels as sk  # noqa: E402
from sigma_kernels._registration import OPS  # noqa: E402
from sigma_kernels.backends import PRIMITIVES, backend_info, get_backend  # noqa: E402
from sigma_kernels.backends import reference as ref  # noqa: E402
from sigma_kernels.backends.triton._common import BlockConfig, override_blocks  # noqa: E402

tri = get_backend("triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"

SMALL_BLOCKS = dict(block_m=16, block_k=16, block_d=16, block_d_out=16, block_d_backward=16,
                    block_m_scores=16, block_k_scores=16, max_single_k=16, max_programs=3)
# "gpu": the compiled-GPU block choices (fixed tiles, narrower backward steps), run here too.
BLOCKS = {"default": {}, "small": SMALL_BLOCKS, "gpu": vars(BlockConfig(interpret=False))}
# Compiled on a GPU, every block configuration is one more JIT compile (about a second each); the
# other variants run the same kernel source, so they are exercised under the interpreter only.
ON_GPU = DEV == "cuda"
BLOCK_VARIANTS = ["default"] if ON_GPU else ["default", "small", "gpu"]
MULTI_TILE = "default" if ON_GPU else "small"
PROPERTY_EXAMPLES = 3 if ON_GPU else 6
LOW = (torch.float16, torch.bfloat16)


def _unit(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=1).to(dtype).to(DEV)


def _close(a, b, atol=2e-5, rtol=2e-5):
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


def test_backend_implements_every_primitive():
    assert backend_info()["triton"]["available"]
    assert backend_info()["triton"]["fallbacks"] == ()
    for name in PRIMITIVES:
        assert getattr(tri, name).__module__.startswith("sigma_kernels.backends.triton"), name


# --- Sinkhorn primitives -----------------------------------------------------------------------

@pytest.mark.parametrize("blocks", BLOCK_VARIANTS)
@pytest.mark.parametrize("m,k", [(1, 1), (37, 29), (70, 5), (3, 40)])
def test_materialised_primitives_match_reference(m, k, blocks):
    s = _unit(m, 8, seed=1) @ _unit(k, 8, seed=2).T
    g = torch.Generator().manual_seed(3)
    u, v = torch.randn(m, generator=g).to(DEV), torch.randn(k, generator=g).to(DEV)
    inv_eps, log_m = 20.0, math.log(m)
    with override_blocks(**BLOCKS[blocks]):
        u_t, col_t = tri.sinkhorn_row_step(s, v, inv_eps, log_m)
        u_r, col_r = ref.sinkhorn_row_step(s, v, inv_eps, log_m)
        _close(u_t, u_r)
        _close(col_t, col_r)
        _close(tri.sinkhorn_col_lse(s, u, inv_eps), ref.sinkhorn_col_lse(s, u, inv_eps))
        assert torch.equal(tri.sinkhorn_assign(s, v, inv_eps), ref.sinkhorn_assign(s, v, inv_eps))
        q_t = tri.sinkhorn_plan(s, u_r, v, inv_eps, log_m)
        assert q_t.dtype == torch.float32 and q_t.shape == (m, k)
        _close(q_t, ref.sinkhorn_plan(s, u_r, v, inv_eps, log_m), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", LOW)
def test_materialised_primitives_low_precision_accumulate_in_fp32(dtype):
    # Same rounded input for both backends: the only difference is fp32 summation order.
    s = (_unit(37, 8, seed=1) @ _unit(29, 8, seed=2).T).to(dtype)
    v = torch.randn(29, generator=torch.Generator().manual_seed(3)).to(DEV)
    with override_blocks(**BLOCKS[MULTI_TILE]):
        args = (s, v, 30.0, math.log(37))
        for a, b in zip(tri.sinkhorn_row_step(*args), ref.sinkhorn_row_step(*args)):
            assert a.dtype == torch.float32
            _close(a, b)
        assert torch.equal(tri.sinkhorn_assign(s, v, 30.0), ref.sinkhorn_assign(s, v, 30.0))


def test_materialised_primitives_accept_non_contiguous_scores():
    base = _unit(29, 8, seed=2) @ _unit(37, 8, seed=1).T
    s = base.T  # (37, 29) with strides (1, 37)
    assert not s.is_contiguous()
    v = torch.randn(29, generator=torch.Generator().manual_seed(3)).to(DEV)
    for a, b in zip(tri.sinkhorn_row_step(s, v, 20.0, 1.0), ref.sinkhorn_row_step(s, v, 20.0, 1.0)):
        _close(a, b)
    _close(tri.sinkhorn_plan(s, torch.zeros(37, device=DEV), v, 20.0, 0.0),
           ref.sinkhorn_plan(s, torch.zeros(37, device=DEV), v, 20.0, 0.0), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("blocks", BLOCK_VARIANTS)
@pytest.mark.parametrize("m,k,d", [(1, 1, 1), (37, 29, 19), (70, 5, 40)])
def test_streaming_primitives_match_reference(m, k, d, blocks):
    x, c = _unit(m, d, seed=4), _unit(k, d, seed=5)
    g = torch.Generator().manual_seed(6)
    u, v = torch.randn(m, generator=g).to(DEV), torch.randn(k, generator=g).to(DEV)
    with override_blocks(**BLOCKS[blocks]):
        for a, b in zip(tri.streaming_row_step(x, c, v, 20.0, math.log(m)),
                        ref.streaming_row_step(x, c, v, 20.0, math.log(m))):
            _close(a, b)
        _close(tri.streaming_col_lse(x, c, u, 20.0), ref.streaming_col_lse(x, c, u, 20.0))
        assert torch.equal(tri.streaming_assign(x, c, v, 20.0), ref.streaming_assign(x, c, v, 20.0))


@pytest.mark.parametrize("dtype", LOW)
def test_streaming_primitives_low_precision_factors(dtype):
    x, c = _unit(37, 19, seed=4, dtype=dtype), _unit(29, 19, seed=5, dtype=dtype)
    v = torch.randn(29, generator=torch.Generator().manual_seed(6)).to(DEV)
    x_strided = torch.stack([x, x], dim=2)[:, :, 0]  # non-contiguous view of the same values
    assert not x_strided.is_contiguous()
    for a, b in zip(tri.streaming_row_step(x_strided, c, v, 20.0, 0.0), ref.streaming_row_step(x, c, v, 20.0, 0.0)):
        assert a.dtype == torch.float32
        _close(a, b)


def _tied_factors():
    """Integer-valued factors: every score is exact, and duplicated prototypes tie exactly."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(-2, 3, (37, 6), generator=g).float()
    c = torch.randint(-2, 3, (29, 6), generator=g).float()
    c[20] = c[3]
    c[28] = c[3]
    c[11] = c[10]
    return x.to(DEV), c.to(DEV)


@pytest.mark.parametrize("blocks", BLOCK_VARIANTS)
def test_assignments_break_ties_to_the_lowest_index(blocks):
    x, c = _tied_factors()
    v = torch.zeros(29, device=DEV)
    expected = ref.streaming_assign(x, c, v, 1.0)
    tie_rows = (x @ c[3] == (x @ c.T).max(1).values) | (x @ c[10] == (x @ c.T).max(1).values)
    assert tie_rows.any()  # the test data really has ties at the maximum
    with override_blocks(**BLOCKS[blocks]):
        assert torch.equal(tri.streaming_assign(x, c, v, 1.0), expected)
        assert torch.equal(tri.sinkhorn_assign(x @ c.T, v, 1.0), expected)
    assert not torch.isin(expected, torch.tensor([20, 28, 11], device=DEV)).any()


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(m=st.integers(1, 80), k=st.integers(1, 40), d=st.integers(1, 24), seed=st.integers(0, 2**16),
       log_inv_eps=st.floats(0.0, 4.0))
def test_sinkhorn_row_step_property(m, k, d, seed, log_inv_eps):
    x, c = _unit(m, d, seed=seed), _unit(k, d, seed=seed + 1)
    v = torch.randn(k, generator=torch.Generator().manual_seed(seed)).to(DEV)
    inv_eps = math.exp(log_inv_eps)
    want_u, want_col = ref.streaming_row_step(x, c, v, inv_eps, math.log(m))
    for u, col in (tri.streaming_row_step(x, c, v, inv_eps, math.log(m)),
                   tri.sinkhorn_row_step(x @ c.T, v, inv_eps, math.log(m))):
        _close(u, want_u, atol=5e-5, rtol=2e-5)
        _close(col, want_col, atol=5e-5, rtol=2e-5)


# --- Sinkhorn through the public API -----------------------------------------------------------

@pytest.mark.parametrize("m,k,d", [(1, 1, 3), (37, 29, 19), (66, 1, 5)])
def test_public_sinkhorn_matches_reference(m, k, d):
    z, c = _unit(m, d, seed=8), _unit(k, d, seed=9)
    s = sk.prototype_scores(z, c)
    want = sk.sinkhorn_solve(s, 0.05, 4, backend="reference")
    for x, y in zip(sk.sinkhorn_solve(s, 0.05, 4, backend="triton"), want):
        _close(x, y, atol=5e-5)  # u, v, marginal error
    _close(sk.sinkhorn(s, 0.05, 4, backend="triton"), sk.sinkhorn(s, 0.05, 4, backend="reference"), atol=1e-5)
    assert torch.equal(sk.sinkhorn_assign(s, 0.05, 4, backend="triton"),
                       sk.sinkhorn_assign(s, 0.05, 4, backend="reference"))
    a = sk.sinkhorn_streaming(z, c, 0.05, 4, backend="triton")
    b = sk.sinkhorn_streaming(z, c, 0.05, 4, backend="reference")
    for x, y in zip(a, b):
        _close(x, y, atol=5e-5)
    assert torch.equal(sk.sinkhorn_assign_streaming(z, c, 0.05, 4, backend="triton"),
                       sk.sinkhorn_assign_streaming(z, c, 0.05, 4, backend="reference"))


def test_public_sinkhorn_early_stop_matches_reference():
    z, c = _unit(37, 19, seed=8), _unit(29, 19, seed=9)
    a = sk.sinkhorn_streaming(z, c, 0.1, 30, tol=1e-3, check_every=2, backend="triton")
    b = sk.sinkhorn_streaming(z, c, 0.1, 30, tol=1e-3, check_every=2, backend="reference")
    assert float(a.marginal_error) <= 1e-3
    for x, y in zip(a, b):
        _close(x, y, atol=5e-5)



def test_small_epsilon_stays_finite_and_matches_reference():
    """ε = 1e-3 (1/ε = 1000, potentials in the hundreds): log-domain kernels stay exact, and no
    padded lane overflows (the interpreter would warn on exp overflow; warnings are errors here)."""
    z, c = _unit(37, 19, seed=45), _unit(29, 19, seed=46)
    s = sk.prototype_scores(z, c)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        q = sk.sinkhorn(s, 1e-3, 10, backend="triton")
        res = sk.sinkhorn_streaming(z, c, 1e-3, 10, backend="triton")
        grads = {}
        for targets in ("soft", "hard"):
            def fn(z, c, backend, targets=targets):
                return sk.prototype_cross_entropy_sinkhorn(z, c, z.detach(), c.detach(), res.v, 1e-3, 0.1,
                                                           targets=targets, backend=backend)
            grads[targets] = _loss_and_grads(fn, z, c, "triton"), _loss_and_grads(fn, z, c, "reference")
    assert torch.isfinite(q).all()
    _close(q, sk.sinkhorn(s, 1e-3, 10, backend="reference"), atol=1e-5)
    for a, b in zip(res, sk.sinkhorn_streaming(z, c, 1e-3, 10, backend="reference")):
        _close(a, b, atol=1e-4)
    for ours, want in grads.values():
        for a, b in zip(ours, want):
            _close(a, b, atol=5e-5)

@pytest.mark.parametrize("dtype", LOW)
def test_public_sinkhorn_low_precision_is_no_worse_than_plain_torch(dtype):
    """Per element of Q, against the float64 truth on the same rounded scores (input rounding is
    no kernel's to undo): ours (fp32 accumulation) is no worse than the iteration in plain torch
    in `dtype`."""
    s = sk.prototype_scores(_unit(37, 19, seed=10), _unit(29, 19, seed=11)).to(dtype)
    truth = sinkhorn_log(s.double(), 0.05, 5)[0]
    ours = sk.sinkhorn(s, 0.05, 5, backend="triton")
    plain = sinkhorn_log(s, 0.05, 5)[0]
    assert ours.dtype == torch.float32 and plain.dtype == dtype
    assert_no_worse_than_plain(ours, plain, truth, tol=1e-6 * float(truth.abs().max()), name="Q")
    # and it is the reference computation on the rounded input
    _close(ours, sk.sinkhorn(s, 0.05, 5, backend="reference"), atol=1e-5)


# --- cross-entropy primitives ------------------------------------------------------------------

def _targets(m, k, seed):
    g = torch.Generator().manual_seed(seed)
    hard = torch.randint(0, k, (m,), generator=g).to(DEV)
    soft = (torch.rand(m, k, generator=g) * 0.5).to(DEV)  # rows need not sum to 1
    return {"hard": hard, "soft": soft}


@pytest.mark.parametrize("blocks", BLOCK_VARIANTS)
@pytest.mark.parametrize("m,k,d", [(1, 1, 1), (37, 29, 19), (70, 5, 40)])
def test_linear_cross_entropy_primitives_match_reference(m, k, d, blocks):
    x, c = _unit(m, d, seed=12), _unit(k, d, seed=13)
    g = torch.randn(m, generator=torch.Generator().manual_seed(14)).to(DEV)
    with override_blocks(**BLOCKS[blocks]):
        for target in _targets(m, k, 15).values():
            loss, lse = tri.linear_cross_entropy_forward(x, c, target, 10.0)
            loss_r, lse_r = ref.linear_cross_entropy_forward(x, c, target, 10.0)
            _close(loss, loss_r)
            _close(lse, lse_r)
            dx, dc = tri.linear_cross_entropy_backward(g, x, c, target, lse_r, 10.0)
            dx_r, dc_r = ref.linear_cross_entropy_backward(g, x, c, target, lse_r, 10.0)
            assert dx.shape == x.shape and dc.shape == c.shape
            _close(dx, dx_r, atol=5e-5)
            _close(dc, dc_r, atol=5e-5)


@pytest.mark.parametrize("blocks", BLOCK_VARIANTS)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("m,k,d,dy", [(1, 1, 1, 2), (37, 29, 19, 21)])
def test_sinkhorn_target_cross_entropy_primitives_match_reference(m, k, d, dy, soft, blocks):
    x, c = _unit(m, d, seed=16), _unit(k, d, seed=17)
    y, cy = _unit(m, dy, seed=18), _unit(k, dy, seed=19)
    gen = torch.Generator().manual_seed(20)
    v, g = torch.randn(k, generator=gen).to(DEV), torch.randn(m, generator=gen).to(DEV)
    args = (y, cy, v, 20.0, 10.0, soft)
    with override_blocks(**BLOCKS[blocks]):
        loss, lse = tri.sinkhorn_target_cross_entropy_forward(x, c, *args)
        loss_r, lse_r = ref.sinkhorn_target_cross_entropy_forward(x, c, *args)
        _close(loss, loss_r)
        _close(lse, lse_r)
        dx, dc = tri.sinkhorn_target_cross_entropy_backward(g, x, c, y, cy, v, lse_r, 20.0, 10.0, soft)
        dx_r, dc_r = ref.sinkhorn_target_cross_entropy_backward(g, x, c, y, cy, v, lse_r, 20.0, 10.0, soft)
        _close(dx, dx_r, atol=5e-5)
        _close(dc, dc_r, atol=5e-5)



@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 40), d=st.integers(1, 24), dy=st.integers(1, 24),
       soft=st.booleans(), seed=st.integers(0, 2**16))
def test_sinkhorn_target_cross_entropy_property(m, k, d, dy, soft, seed):
    x, c = _unit(m, d, seed=seed), _unit(k, d, seed=seed + 1)
    y, cy = _unit(m, dy, seed=seed + 2), _unit(k, dy, seed=seed + 3)
    gen = torch.Generator().manual_seed(seed)
    v, g = torch.randn(k, generator=gen).to(DEV), torch.rand(m, generator=gen).to(DEV)
    loss, lse = tri.sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, 20.0, 10.0, soft)
    loss_r, lse_r = ref.sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, 20.0, 10.0, soft)
    _close(loss, loss_r, atol=5e-5)
    _close(lse, lse_r)
    got = tri.sinkhorn_target_cross_entropy_backward(g, x, c, y, cy, v, lse_r, 20.0, 10.0, soft)
    want = ref.sinkhorn_target_cross_entropy_backward(g, x, c, y, cy, v, lse_r, 20.0, 10.0, soft)
    for a, b in zip(got, want):
        _close(a, b, atol=5e-5)

@pytest.mark.parametrize("dtype", LOW)
def test_cross_entropy_primitives_low_precision_factors(dtype):
    x, c = _unit(37, 19, seed=21, dtype=dtype), _unit(29, 19, seed=22, dtype=dtype)
    g = torch.randn(37, generator=torch.Generator().manual_seed(23)).to(DEV)
    for target in _targets(37, 29, 24).values():
        loss, lse = tri.linear_cross_entropy_forward(x, c, target, 10.0)
        loss_r, lse_r = ref.linear_cross_entropy_forward(x, c, target, 10.0)
        _close(loss, loss_r)
        dx, dc = tri.linear_cross_entropy_backward(g, x, c, target, lse_r, 10.0)
        dx_r, dc_r = ref.linear_cross_entropy_backward(g, x, c, target, lse_r, 10.0)
        assert dx.dtype == dtype and dc.dtype == dtype
        # fp32 accumulation on both sides; the gradients differ by one rounding to `dtype`.
        eps = torch.finfo(dtype).eps
        _close(dx, dx_r, atol=4 * eps, rtol=2 * eps)
        _close(dc, dc_r, atol=4 * eps, rtol=2 * eps)


def test_cross_entropy_primitives_accept_non_contiguous_inputs():
    x = torch.stack([_unit(37, 19, seed=25)] * 2, dim=2)[:, :, 1]
    c = _unit(19, 29, seed=26).T  # (29, 19), strides (1, 29)
    assert not x.is_contiguous() and not c.is_contiguous()
    soft = _targets(37, 29, 27)["soft"].T.contiguous().T
    assert not soft.is_contiguous()
    g = torch.randn(37, generator=torch.Generator().manual_seed(28)).to(DEV).expand(37)
    loss, lse = tri.linear_cross_entropy_forward(x, c, soft, 10.0)
    loss_r, lse_r = ref.linear_cross_entropy_forward(x, c, soft, 10.0)
    _close(loss, loss_r)
    for a, b in zip(tri.linear_cross_entropy_backward(g, x, c, soft, lse_r, 10.0),
                    ref.linear_cross_entropy_backward(g, x, c, soft, lse_r, 10.0)):
        _close(a, b, atol=5e-5)


# --- cross-entropy through the public API (values, dz, dC) -------------------------------------

def _loss_and_grads(fn, z, c, backend):
    z = z.detach().clone().requires_grad_()
    c = c.detach().clone().requires_grad_()
    loss = fn(z, c, backend)
    loss.backward()
    return loss.detach(), z.grad, c.grad


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("m,k,d", [(1, 1, 3), (1, 29, 19), (37, 29, 19), (37, 1, 19)])
def test_public_prototype_cross_entropy_matches_reference(m, k, d, kind):
    z = torch.randn(m, d, generator=torch.Generator().manual_seed(29)).to(DEV)
    c = _unit(k, d, seed=30)
    target = _targets(m, k, 31)[kind]

    def fn(z, c, backend):
        return sk.prototype_cross_entropy(z, c, target, 0.1, backend=backend)

    for a, b in zip(_loss_and_grads(fn, z, c, "triton"), _loss_and_grads(fn, z, c, "reference")):
        _close(a, b, atol=5e-5)


@pytest.mark.parametrize("targets", ["hard", "soft"])
@pytest.mark.parametrize("m,k,d", [(1, 1, 3), (37, 29, 19)])
def test_public_prototype_cross_entropy_sinkhorn_matches_reference(m, k, d, targets):
    gen = torch.Generator().manual_seed(32)
    z, z_t = torch.randn(m, d, generator=gen).to(DEV), torch.randn(m, d, generator=gen).to(DEV)
    c = _unit(k, d, seed=33)
    v = sk.sinkhorn_streaming(z_t, c, 0.05, 3, backend="reference").v

    def fn(z, c, backend):
        return sk.prototype_cross_entropy_sinkhorn(z, c, z_t, c, v, 0.05, 0.1, targets=targets, backend=backend)

    for a, b in zip(_loss_and_grads(fn, z, c, "triton"), _loss_and_grads(fn, z, c, "reference")):
        _close(a, b, atol=5e-5)


@pytest.mark.parametrize("which", ["z", "c", "both"])
@pytest.mark.parametrize("loss", ["given", "sinkhorn"])
def test_public_cross_entropy_gradients_only_for_inputs_that_need_them(loss, which):
    """Only the gradient asked for is computed (the other kernel is skipped), and it is exact."""
    m, k, d = 37, 29, 19
    gen = torch.Generator().manual_seed(35)
    z, z_t = torch.randn(m, d, generator=gen).to(DEV), torch.randn(m, d, generator=gen).to(DEV)
    c = _unit(k, d, seed=36)
    v = torch.randn(k, generator=gen).to(DEV)
    soft = _targets(m, k, 37)["soft"]

    def fn(z, c, backend):
        if loss == "given":
            return sk.prototype_cross_entropy(z, c, soft, 0.1, backend=backend)
        return sk.prototype_cross_entropy_sinkhorn(z, c, z_t, c.detach(), v, 0.05, 0.1, targets="soft", backend=backend)

    zq = z.clone().requires_grad_(which in ("z", "both"))
    cq = c.clone().requires_grad_(which in ("c", "both"))
    fn(zq, cq, "triton").backward()
    _, dz_r, dc_r = _loss_and_grads(fn, z, c, "reference")
    assert (zq.grad is None) == (which == "c") and (cq.grad is None) == (which == "z")
    if zq.grad is not None:
        _close(zq.grad, dz_r, atol=5e-5)
    if cq.grad is not None:
        _close(cq.grad, dc_r, atol=5e-5)


class _MustNotLaunch:
    def __getitem__(self, grid):
        raise AssertionError("a backward kernel was launched for a gradient nobody asked for")


@pytest.mark.parametrize("need_dx,need_dc", [(True, False), (False, True), (False, False)])
def test_cross_entropy_primitives_skip_gradients_not_asked_for(need_dx, need_dc, monkeypatch):
    from sigma_kernels.backends.triton import cross_entropy
    if not need_dx:
        monkeypatch.setattr(cross_entropy, "ce_backward_dx_kernel", _MustNotLaunch())
    if not need_dc:
        monkeypatch.setattr(cross_entropy, "ce_backward_dc_kernel", _MustNotLaunch())
    m, k, d = 37, 29, 19
    x, c = _unit(m, d, seed=38), _unit(k, d, seed=39)
    gen = torch.Generator().manual_seed(40)
    v, g = torch.randn(k, generator=gen).to(DEV), torch.randn(m, generator=gen).to(DEV)
    hard = _targets(m, k, 41)["hard"]
    lse = ref.linear_cross_entropy_forward(x, c, hard, 10.0)[1]
    lse_s = ref.sinkhorn_target_cross_entropy_forward(x, c, x, c, v, 20.0, 10.0, False)[1]
    got = [tri.linear_cross_entropy_backward(g, x, c, hard, lse, 10.0, need_dx=need_dx, need_dc=need_dc),
           tri.sinkhorn_target_cross_entropy_backward(g, x, c, x, c, v, lse_s, 20.0, 10.0, False,
                                                      need_dx=need_dx, need_dc=need_dc)]
    want = [ref.linear_cross_entropy_backward(g, x, c, hard, lse, 10.0),
            ref.sinkhorn_target_cross_entropy_backward(g, x, c, x, c, v, lse_s, 20.0, 10.0, False)]
    for (dx, dc), (dx_r, dc_r) in zip(got, want):
        assert (dx is None) != need_dx and (dc is None) != need_dc
        if need_dx:
            _close(dx, dx_r, atol=5e-5)
        if need_dc:
            _close(dc, dc_r, atol=5e-5)


@pytest.mark.parametrize("dtype", LOW)
def test_public_cross_entropy_low_precision_is_no_worse_than_plain_torch(dtype):
    gen = torch.Generator().manual_seed(34)
    z = torch.randn(37, 19, generator=gen).to(DEV)
    c = _unit(29, 19, seed=35)
    target = _targets(37, 29, 36)["hard"]

    def ours(z, c, backend):
        return sk.prototype_cross_entropy(z, c, target, 0.1, backend=backend)

    def plain(z, c, backend):  # the truth module's equations, in the dtype of z and c
        return cross_entropy(prototype_logits(z, c, 0.1), target)

    # truth: float64 on the same rounded inputs (input rounding is no kernel's to undo)
    zl, cl = z.to(dtype), c.to(dtype)
    truth = _loss_and_grads(plain, zl.double(), cl.double(), None)
    got = _loss_and_grads(ours, zl, cl, "triton")
    low = _loss_and_grads(plain, zl, cl, None)
    assert [t.dtype for t in got] == [torch.float32, dtype, dtype]
    for name, t, o, p in zip(("loss", "dz", "dC"), truth, got, low):
        assert_no_worse_than_plain(o, p, t, tol=1e-6 * float(t.abs().max()), name=name)


def test_torch_compile_fullgraph_with_triton_backend():
    m, k, d = 37, 29, 19
    gen = torch.Generator().manual_seed(37)
    z, z_t = torch.randn(m, d, generator=gen).to(DEV), torch.randn(m, d, generator=gen).to(DEV)
    c = _unit(k, d, seed=38)

    def step(z, z_t, c):
        v = sk.sinkhorn_streaming(z_t, c, 0.05, 3, backend="triton").v
        return sk.prototype_cross_entropy_sinkhorn(z, c, z_t, c, v, 0.05, 0.1, targets="soft", backend="triton")

    compiled = torch.compile(step, fullgraph=True)
    zc, ze = z.clone().requires_grad_(), z.clone().requires_grad_()
    got, want = compiled(zc, z_t, c), step(ze, z_t, c)
    got.backward()
    want.backward()
    _close(got, want, atol=1e-6)
    _close(zc.grad, ze.grad, atol=1e-6)


# --- memory: the streaming path never builds an M x K array -------------------------------------

class _AllocationRecorder(TorchDispatchMode):
    """Records the byte size of every tensor produced by any op, looking inside our custom ops
    (whose implementations a dispatch mode would otherwise see as one opaque call)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "sigma_kernels":
            impl = OPS[func._schema.name.split("::")[1]]._init_fn
            with self:  # re-enter so the ops inside the implementation are recorded too
                out = impl(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _streaming_loss(backend, targets):
    m, k, d = 257, 67, 19  # M·K = 17219 elements, far above M·D, K·D and the split-M partials
    gen = torch.Generator().manual_seed(39)
    z = torch.randn(m, d, generator=gen).to(DEV).requires_grad_()
    z_t = torch.randn(m, d, generator=gen).to(DEV)
    c = _unit(k, d, seed=40).requires_grad_()
    v = sk.sinkhorn_streaming(z_t, c, 0.05, 2, backend=backend).v
    loss = sk.prototype_cross_entropy_sinkhorn(z, c, z_t, c, v, 0.05, 0.1, targets=targets, backend=backend)
    loss.backward()
    return m * k * 4  # bytes of one fp32 M x K matrix


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_streaming_loss_allocates_nothing_of_size_m_by_k(targets):
    with _AllocationRecorder() as rec:
        mk_bytes = _streaming_loss("triton", targets)
    assert 0 < rec.largest < mk_bytes


def test_allocation_recorder_sees_m_by_k_arrays_of_the_reference():
    with _AllocationRecorder() as rec:
        mk_bytes = _streaming_loss("reference", "hard")
    assert rec.largest >= mk_bytes


def test_primitives_reject_bad_input_with_named_errors():
    s = torch.zeros(4, 3, device=DEV)
    with pytest.raises(TypeError, match="scores"):
        tri.sinkhorn_row_step(s.double(), torch.zeros(3, device=DEV), 1.0, 0.0)
    with pytest.raises(ValueError, match="share D"):
        tri.streaming_assign(torch.zeros(4, 5, device=DEV), torch.zeros(3, 6, device=DEV),
                             torch.zeros(3, device=DEV), 1.0)
    with pytest.raises(ValueError, match="soft target"):
        tri.linear_cross_entropy_forward(torch.zeros(4, 5, device=DEV), torch.zeros(3, 5, device=DEV),
                                         torch.zeros(4, 4, device=DEV), 1.0)
    with pytest.raises(ValueError, match="cy"):
        tri.sinkhorn_target_cross_entropy_forward(torch.zeros(4, 5, device=DEV), torch.zeros(3, 5, device=DEV),
                                                  torch.zeros(4, 2, device=DEV), torch.zeros(3, 5, device=DEV),
                                                  torch.zeros(3, device=DEV), 1.0, 1.0, True)
    huge = torch.zeros(1, device=DEV).expand(2 ** 16, 2 ** 15)  # 2**31 elements without the memory
    with pytest.raises(ValueError, match="2\\*\\*31"):
        tri.sinkhorn_assign(huge, torch.zeros(2 ** 15, device=DEV), 1.0)


def test_mixed_dtype_factors_are_promoted():
    x, c = _unit(37, 19, seed=41, dtype=torch.float16), _unit(29, 19, seed=42)
    v = torch.randn(29, generator=torch.Generator().manual_seed(43)).to(DEV)
    for a, b in zip(tri.streaming_row_step(x, c, v, 20.0, 0.0), ref.streaming_row_step(x, c, v, 20.0, 0.0)):
        _close(a, b)
    target = _targets(37, 29, 44)["hard"]
    g = torch.ones(37, device=DEV)
    loss, lse = tri.linear_cross_entropy_forward(x, c, target, 10.0)
    _close(loss, ref.linear_cross_entropy_forward(x, c, target, 10.0)[0])
    dx, dc = tri.linear_cross_entropy_backward(g, x, c, target, lse, 10.0)
    dx_r, dc_r = ref.linear_cross_entropy_backward(g, x, c, target, lse, 10.0)
    assert dx.dtype == torch.float16 and dc.dtype == torch.float32
    _close(dx, dx_r, atol=4e-3, rtol=2e-3)
    _close(dc, dc_r, atol=5e-5)


GPU_TEST_ROWS = 8192


def _check_against_float64(m, k, d, inv_eps):
    """Every Triton primitive against the float64 truth, element by element no worse than plain
    float32 torch (the reference backend's formulas) beyond a few fp32 roundings of the largest
    value. Hard targets are the float64 argmax, never the kernel's own labels."""
    x, c = _unit(m, d, seed=47), _unit(k, d, seed=48)
    y, cy = _unit(m, d, seed=49), _unit(k, d, seed=50)
    v = torch.randn(k, generator=torch.Generator().manual_seed(51)).to(DEV)
    s = x @ c.T
    f64 = [t.double() for t in (x, c, y, cy, v)]
    x64, c64, y64, cy64, v64 = f64
    s64 = x64 @ c64.T

    def no_worse(ours, plain, truth, name):
        assert_no_worse_than_plain(ours, plain, truth, tol=1e-5 * float(truth.abs().max()), name=name)

    args = (s, v, inv_eps, math.log(m))
    truth = ref.sinkhorn_row_step(s64, v64, inv_eps, math.log(m))
    for name, a, p, t in zip(("u", "col"), tri.sinkhorn_row_step(*args), ref.sinkhorn_row_step(*args), truth):
        no_worse(a, p, t, f"materialised {name}")
    for name, a, p, t in zip(("u", "col"), tri.streaming_row_step(x, c, v, inv_eps, math.log(m)),
                             ref.streaming_row_step(x, c, v, inv_eps, math.log(m)),
                             ref.streaming_row_step(x64, c64, v64, inv_eps, math.log(m))):
        no_worse(a, p, t, f"streaming {name}")
    # assignments: the chosen prototype attains the float64 row maximum up to fp32 rounding (exact
    # ties and 1-ulp differences between tl.dot and cuBLAS may pick another index of the same value)
    t64 = s64 * inv_eps + v64
    for idx in (tri.sinkhorn_assign(s, v, inv_eps), tri.streaming_assign(x, c, v, inv_eps)):
        assert (t64.gather(1, idx[:, None]).squeeze(1) >= t64.max(1).values - 1e-4 * inv_eps).all()

    target_logits64 = (y64 @ cy64.T) * inv_eps + v64
    hard64 = target_logits64.argmax(1)
    # rows whose two best target logits are too close for fp32 to order: weight 0 in the gradient
    # and left out of the per-row loss, so the comparison never depends on a near-tie
    top2 = target_logits64.topk(min(2, k), dim=1).values
    clear = (top2[:, 0] - top2[:, -1] > 1e-3) if k > 1 else torch.ones(m, dtype=torch.bool, device=DEV)
    assert clear.float().mean() > 0.9
    g = clear.float() / m
    for soft in (False, True):
        target64 = torch.softmax(target_logits64, dim=1) if soft else hard64
        loss, lse = tri.sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, inv_eps, 10.0, soft)
        loss_p, lse_p = ref.sinkhorn_target_cross_entropy_forward(x, c, y, cy, v, inv_eps, 10.0, soft)
        loss_t, lse_t = ref.linear_cross_entropy_forward(x64, c64, target64, 10.0)
        no_worse(lse, lse_p, lse_t, f"lse soft={soft}")
        no_worse(loss[clear], loss_p[clear], loss_t[clear], f"loss soft={soft}")
        grads = tri.sinkhorn_target_cross_entropy_backward(g, x, c, y, cy, v, lse, inv_eps, 10.0, soft)
        grads_p = ref.sinkhorn_target_cross_entropy_backward(g, x, c, y, cy, v, lse_p, inv_eps, 10.0, soft)
        grads_t = ref.linear_cross_entropy_backward(g.double(), x64, c64, target64, lse_t, 10.0)
        for name, a, p, t in zip(("dx", "dc"), grads, grads_p, grads_t):
            no_worse(a, p, t, f"{name} soft={soft}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiled kernels, GPU tiles)")
@pytest.mark.parametrize("k", [3000, 5000])  # one-tile rows (K <= 4096) and the two-sweep path
def test_gpu_realistic_sizes_match_float64(k):
    """Recipe sizes (docs/method.md) with the compiled kernels: K = 3000 keeps a whole row per tile."""
    _check_against_float64(GPU_TEST_ROWS, k, 256, 1 / 0.03)


def test_derived_primitives_match_reference():
    """row_logsumexp and the assign + entropy pass (labels from the Triton kernels)."""
    s = _unit(37, 8, seed=4) @ _unit(29, 8, seed=5).T
    x, c = _unit(37, 8, seed=4), _unit(29, 8, seed=5)
    v = torch.randn(29, generator=torch.Generator().manual_seed(6)).to(DEV)
    _close(tri.row_logsumexp(s, 10.0), ref.row_logsumexp(s, 10.0))
    for got, want in ((tri.sinkhorn_assign_entropy(s, v, 20.0), ref.sinkhorn_assign_entropy(s, v, 20.0)),
                      (tri.streaming_assign_entropy(x, c, v, 20.0), ref.streaming_assign_entropy(x, c, v, 20.0))):
        assert torch.equal(got[0], want[0])
        _close(got[1], want[1], atol=1e-4, rtol=1e-5)
