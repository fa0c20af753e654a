"""Reference prototype scoring and swapped cross-entropy: values vs float64 NumPy, gradients
by gradcheck, and the identities between its modes."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from truth import cross_entropy, cross_entropy_f64, prototype_logits

import sigma_kernels as sk

REF = dict(backend="reference")
odd_dims = st.sampled_from([1, 2, 5, 19, 29, 37])


def features(m, k, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g).to(dtype)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1).to(dtype)
    return z, c


@given(m=odd_dims, k=odd_dims, d=st.sampled_from([1, 3, 19]), seed=st.integers(0, 2**16),
       soft=st.booleans(), tau=st.sampled_from([0.1, 1.0]))
def test_loss_matches_float64(m, k, d, seed, soft, tau):
    z, c = features(m, k, d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    target = torch.softmax(torch.randn(m, k, generator=g), 1) if soft else torch.randint(0, k, (m,), generator=g)
    loss = sk.prototype_cross_entropy(z, c, target, tau, **REF)
    assert loss.dtype == torch.float32 and loss.shape == ()
    want = cross_entropy_f64(z.numpy(), c.numpy(), target.numpy(), tau)
    assert abs(loss.item() - want) <= 1e-4 * max(1.0, abs(loss.item()))


def test_soft_one_hot_equals_hard_and_plain_torch():
    z, c = features(37, 29, 19, seed=1)
    idx = torch.randint(0, 29, (37,), generator=torch.Generator().manual_seed(2))
    hard = sk.prototype_cross_entropy(z, c, idx, 0.1, **REF)
    soft = sk.prototype_cross_entropy(z, c, F.one_hot(idx, 29).float(), 0.1, **REF)
    plain = F.cross_entropy(F.normalize(z, dim=1) @ c.T / 0.1, idx)
    torch.testing.assert_close(hard, soft)
    torch.testing.assert_close(hard, plain)


@pytest.mark.parametrize("soft", [False, True])
def test_gradcheck_float64(soft):
    z, c = features(7, 5, 3, seed=3, dtype=torch.float64)
    z.requires_grad_()
    c.requires_grad_()
    g = torch.Generator().manual_seed(4)
    if soft:
        target = torch.softmax(torch.randn(7, 5, generator=g, dtype=torch.float64), 1)
    else:
        target = torch.randint(0, 5, (7,), generator=g)
    assert torch.autograd.gradcheck(lambda a, b: sk.prototype_cross_entropy(a, b, target, 0.1, **REF), (z, c))


@pytest.mark.parametrize("soft", [False, True])
def test_gradcheck_sinkhorn_targets_float64(soft):
    z, c = features(6, 4, 3, seed=5, dtype=torch.float64)
    y, _ = features(6, 4, 3, seed=6, dtype=torch.float64)
    v = sk.sinkhorn_streaming(y, c, 0.05, 3, **REF).v
    cy = c.clone()  # gradcheck perturbs c in place; the target side must stay fixed
    z.requires_grad_()
    c.requires_grad_()

    def fn(a, b):
        return sk.prototype_cross_entropy_sinkhorn(a, b, y, cy, v, 0.05, 0.1, targets="soft" if soft else "hard", **REF)
    assert torch.autograd.gradcheck(fn, (z, c))


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_sinkhorn_targets_on_the_fly_equal_materialised_targets(targets):
    z, c = features(37, 29, 19, seed=7)
    y, _ = features(37, 29, 19, seed=8)
    res = sk.sinkhorn_streaming(y, c, 0.05, 10, **REF)
    q = sk.sinkhorn(sk.prototype_scores(y, c), 0.05, 10, **REF)
    target = q if targets == "soft" else q.argmax(1)
    a = sk.prototype_cross_entropy_sinkhorn(z, c, y, c, res.v, 0.05, 0.1, targets=targets, **REF)
    b = sk.prototype_cross_entropy(z, c, target, 0.1, **REF)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradients_match_plain_torch_autograd():
    z, c = features(29, 13, 7, seed=9)
    t = torch.softmax(torch.randn(29, 13, generator=torch.Generator().manual_seed(10)), 1)
    z1, c1 = z.clone().requires_grad_(), c.clone().requires_grad_()
    z2, c2 = z.double().requires_grad_(), c.double().requires_grad_()
    sk.prototype_cross_entropy(z1, c1, t, 0.1, **REF).backward()
    cross_entropy(prototype_logits(z2, c2, 0.1), t.double()).backward()
    torch.testing.assert_close(z1.grad.double(), z2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1.grad.double(), c2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["z", "c", "both"])
@pytest.mark.parametrize("loss", ["given", "sinkhorn"])
def test_gradients_only_for_inputs_that_need_them(loss, which):
    z, c = features(29, 13, 7, seed=13)
    zt, _ = features(29, 13, 7, seed=14)
    v = torch.randn(13, generator=torch.Generator().manual_seed(15))
    t = torch.softmax(F.normalize(zt, dim=1) @ c.T / 0.05 + v, 1)  # what the Sinkhorn loss computes itself
    zq, cq = z.clone().requires_grad_(which in ("z", "both")), c.clone().requires_grad_(which in ("c", "both"))
    if loss == "given":
        sk.prototype_cross_entropy(zq, cq, t, 0.1, **REF).backward()
    else:
        sk.prototype_cross_entropy_sinkhorn(zq, cq, zt, c, v, 0.05, 0.1, targets="soft", **REF).backward()
    z2, c2 = z.double().requires_grad_(), c.double().requires_grad_()
    cross_entropy(prototype_logits(z2, c2, 0.1), t.double()).backward()
    assert (zq.grad is None) == (which == "c") and (cq.grad is None) == (which == "z")
    if zq.grad is not None:
        torch.testing.assert_close(zq.grad.double(), z2.grad, rtol=1e-5, atol=1e-6)
    if cq.grad is not None:
        torch.testing.assert_close(cq.grad.double(), c2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("need_dx,need_dc", [(True, False), (False, True), (False, False)])
def test_backward_primitives_return_none_for_gradients_not_asked_for(need_dx, need_dc):
    from sigma_kernels.backends import reference as ref
    x, c = features(11, 5, 4, seed=16)
    x = F.normalize(x, dim=1)
    t, g, v = torch.arange(11) % 5, torch.rand(11), torch.randn(5)
    lse = ref.linear_cross_entropy_forward(x, c, t, 10.0)[1]
    full = ref.linear_cross_entropy_backward(g, x, c, t, lse, 10.0)
    lse_s = ref.sinkhorn_target_cross_entropy_forward(x, c, x, c, v, 20.0, 10.0, True)[1]
    full_s = ref.sinkhorn_target_cross_entropy_backward(g, x, c, x, c, v, lse_s, 20.0, 10.0, True)
    for got, want in ((ref.linear_cross_entropy_backward(g, x, c, t, lse, 10.0, need_dx, need_dc), full),
                      (ref.sinkhorn_target_cross_entropy_backward(g, x, c, x, c, v, lse_s, 20.0, 10.0, True,
                                                                  need_dx, need_dc), full_s)):
        for grad, wanted, needed in zip(got, want, (need_dx, need_dc)):
            if needed:
                torch.testing.assert_close(grad, wanted)
            else:
                assert grad is None


def test_reductions():
    z, c = features(11, 5, 4, seed=11)
    t = torch.arange(11) % 5
    rows = sk.prototype_cross_entropy(z, c, t, reduction="none", **REF)
    assert rows.shape == (11,)
    torch.testing.assert_close(sk.prototype_cross_entropy(z, c, t, reduction="sum", **REF), rows.sum())
    torch.testing.assert_close(sk.prototype_cross_entropy(z, c, t, **REF), rows.mean())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_fp32_loss_and_grads_in_input_dtype(dtype):
    z, c = features(37, 29, 19, seed=12, dtype=dtype)
    z.requires_grad_()
    c.requires_grad_()
    t = torch.arange(37) % 29
    loss = sk.prototype_cross_entropy(z, c, t, **REF)
    loss.backward()
    assert loss.dtype == torch.float32 and z.grad.dtype == dtype and c.grad.dtype == dtype
    truth = cross_entropy_f64(z.detach().float().numpy(), c.detach().float().numpy(), t.numpy(), 0.1)
    assert abs(loss.item() - truth) < 1e-4 * max(1, truth)


def test_prototype_scores_softmax_helpers():
    """Against float64 logits from z and c directly, not against our own scores."""
    z, c = features(13, 7, 5, seed=13)
    logits64 = prototype_logits(z.double(), c.double(), 0.5)
    tol = dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sk.prototype_scores(z, c, 0.5).double(), logits64, **tol)
    torch.testing.assert_close(sk.prototype_softmax(z, c, 0.5).double(), torch.softmax(logits64, 1), **tol)
    torch.testing.assert_close(sk.prototype_log_softmax(z, c, 0.5).double(), torch.log_softmax(logits64, 1), **tol)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_non_contiguous_inputs(backend):
    """Column-sliced z, transposed prototypes, stride-0 (expanded) soft targets, transposed target
    features: each backend gives what it gives on contiguous copies (values and gradients), and
    the float64 truth."""
    if backend not in sk.available_backends():
        pytest.skip(sk.backend_info()[backend]["reason"])
    g = torch.Generator().manual_seed(17)
    z_base = torch.randn(23, 2 * 11, generator=g)
    c_base = F.normalize(torch.randn(11, 29, generator=g), dim=0)
    t = torch.softmax(torch.randn(29, generator=g), 0).expand(23, 29)
    y = torch.randn(11, 23, generator=g).T
    v = torch.randn(29, generator=g)

    def z_view(b):
        return b[:, ::2]

    def c_view(b):
        return b.T

    def run(loss_fn, strided):
        zb, cb = z_base.clone().requires_grad_(), c_base.clone().requires_grad_()
        if strided:
            z, c, tt, yy = z_view(zb), c_view(cb), t, y
            assert not any(a.is_contiguous() for a in (z, c, tt, yy))
        else:  # contiguous leaves holding the same values
            zb = z_view(z_base).contiguous().requires_grad_()
            cb = c_view(c_base).contiguous().requires_grad_()
            z, c, tt, yy = zb, cb, t.contiguous(), y.contiguous()
        loss = loss_fn(z, c, tt, yy)
        loss.backward()
        dz, dc = (z_view(zb.grad), c_view(cb.grad)) if strided else (zb.grad, cb.grad)
        return loss.detach(), dz, dc

    def given_targets(z, c, t, y):
        return sk.prototype_cross_entropy(z, c, t, 0.1, backend=backend)

    def sinkhorn_targets(z, c, t, y):
        return sk.prototype_cross_entropy_sinkhorn(z, c, y, c.detach(), v, 0.05, 0.1, targets="soft",
                                                   backend=backend)

    for loss_fn in (given_targets, sinkhorn_targets):
        for a, b in zip(run(loss_fn, True), run(loss_fn, False)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=loss_fn.__name__)
    want = cross_entropy_f64(z_view(z_base).numpy(), c_view(c_base).numpy(), t.numpy(), 0.1)
    got = run(given_targets, True)[0].item()
    assert abs(got - want) <= 1e-5 * max(1.0, abs(want))
