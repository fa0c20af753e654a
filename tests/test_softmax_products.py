"""Cross-entropy from softmax products of stored scores (what SinkhornSwapLoss runs on stored
scores): `prototype_softmax_products` against a float64 computation, and
`prototype_cross_entropy_from_products` (values and gradients) against float64 autograd of the
plain cross-entropy, hard and soft targets, on the `cpu` backend (one pass, P never stored) and
the generic path (P materialised)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from truth import cross_entropy, prototype_logits

import sigma_kernels as sk
from sigma_kernels import _cross_entropy_ops as ops
from sigma_kernels.backends import is_available

BACKENDS = ["reference"] + (["cpu"] if is_available("cpu") else [])


def features(m, k, d, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    v = 0.5 * torch.randn(k, generator=g)
    return z, c, v


def products64(z, c, scale, v=None, x_for=None):
    """(LSE, P·c, Pᵀ·normalize(x_for)) in float64 for P = softmax(normalize(z)·cᵀ·scale + v)."""
    logits = prototype_logits(z.double(), c.double(), 1.0 / scale)
    if v is not None:
        logits = logits + v.double()
    p = torch.softmax(logits, dim=1)
    px = p.T @ F.normalize(x_for.double(), dim=1) if x_for is not None else None
    return torch.logsumexp(logits, dim=1), p @ c.double(), px


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 300), k=st.integers(1, 70), d=st.integers(1, 24), seed=st.integers(0, 2**16),
       with_v=st.booleans())
def test_softmax_products_match_float64(backend, m, k, d, seed, with_v):
    z, c, v = features(m, k, d, seed)
    y = torch.randn(m, d, generator=torch.Generator().manual_seed(seed + 1))
    s = sk.prototype_scores(z, c)
    tau = 0.05 if with_v else 0.1
    got = sk.prototype_softmax_products(s, c, tau, v=v if with_v else None, z=y, backend=backend)
    lse, pc, px = products64(z, c, 1 / tau, v if with_v else None, y)
    torch.testing.assert_close(got.lse.double(), lse, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got.p_c.double(), pc, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.p_x.double(), px, rtol=1e-5, atol=2e-6 * max(1.0, m ** 0.5))
    assert sk.prototype_softmax_products(s, c, tau, backend=backend).p_x is None
    # labels and entropies from the same pass: those of the labelling pass, and float64 entropies
    got = sk.prototype_softmax_products(s, c, tau, v=v if with_v else None, return_labels=True, backend=backend)
    labels, _ = sk.sinkhorn_assign_from_potentials(s, v if with_v else torch.zeros(k), tau, return_entropy=True,
                                                   backend=backend)
    assert torch.equal(got.labels, labels)
    logits = s.double() / tau + (v.double() if with_v else 0.0)
    h64 = torch.special.entr(torch.softmax(logits, dim=1)).sum()
    torch.testing.assert_close(got.entropy.double(), h64, rtol=1e-5, atol=1e-5 * m)


def plain_ce64(z, c, target, tau, weights=None):
    """Float64 autograd truth (loss, dz, dc) of the CE of softmax(normalize(z)·cᵀ/τ): its mean, or
    Σ_i w_i·CE_i with weights (label targets)."""
    z64, c64 = z.detach().double().requires_grad_(), c.detach().double().requires_grad_()
    logits = prototype_logits(z64, c64, tau)
    if weights is None:
        loss = cross_entropy(logits, target)
    else:
        rows = -torch.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]  # label targets
        loss = (rows * weights.double()).sum()
    return (loss, *torch.autograd.grad(loss, (z64, c64)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("targets", ["hard", "soft"])
@pytest.mark.parametrize("m,k,d", [(1, 1, 4), (37, 29, 19), (300, 131, 8)])
def test_cross_entropy_from_products_values_and_gradients(backend, targets, m, k, d):
    z, c, v = features(m, k, d, seed=m + k)
    zt = torch.randn(m, d, generator=torch.Generator().manual_seed(3))  # the target branch's features
    z, c = z.requires_grad_(), c.requires_grad_()
    eps, tau = 0.05, 0.1
    s_t = sk.prototype_scores(zt, c.detach())
    if targets == "hard":
        target = torch.argmax(s_t / eps + v, dim=1)
        t_kw, truth_target = {}, target
        arg = target
    else:
        tp = sk.prototype_softmax_products(s_t, c, eps, v=v, z=z, backend=backend)
        arg, t_kw = tp.p_c, dict(target_x=tp.p_x)
        truth_target = torch.softmax(s_t.double() / eps + v.double(), dim=1)
    prods = sk.prototype_softmax_products(sk.prototype_scores(z.detach(), c.detach()), c, tau, z=z, backend=backend)
    loss = sk.prototype_cross_entropy_from_products(z, c, arg, prods, tau, **t_kw)
    dz, dc = torch.autograd.grad(loss, (z, c))
    loss64, dz64, dc64 = plain_ce64(z, c, truth_target, tau)
    torch.testing.assert_close(loss.double(), loss64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dz.double(), dz64, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(dc.double(), dc64, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uneven_row_weights_reach_z_exactly_and_are_refused_for_prototypes(backend):
    """dz is exact for any upstream gradient; the prototypes' gradient from products assumes equal
    row weights, so uneven ones must raise, never give a wrong gradient."""
    m, k, d = 50, 11, 6
    z, c, _ = features(m, k, d, seed=9)
    z = z.requires_grad_()
    t = torch.randint(0, k, (m,), generator=torch.Generator().manual_seed(1))
    w = torch.rand(m, generator=torch.Generator().manual_seed(2))
    prods = sk.prototype_softmax_products(sk.prototype_scores(z.detach(), c), c, 0.1, z=z, backend=backend)
    rows = sk.prototype_cross_entropy_from_products(z, c, t, prods, 0.1, reduction="none")
    (dz,) = torch.autograd.grad((rows * w).sum(), (z,))
    _, dz64, _ = plain_ce64(z, c, t, 0.1, weights=w)
    torch.testing.assert_close(dz.double(), dz64, rtol=1e-4, atol=1e-7)

    c = c.clone().requires_grad_()
    with pytest.raises(ValueError, match="reduction='none'"):
        sk.prototype_cross_entropy_from_products(z, c, t, prods, 0.1, reduction="none")
    # below the public checks: the backward itself refuses uneven weights
    x = sk.normalize_rows(z)
    rows = ops.cross_entropy_from_products(x, c, t, prods.lse, prods.p_c, prods.p_x, None, 10.0)
    with pytest.raises(RuntimeError, match="same upstream gradient on every row"):
        torch.autograd.grad((rows * w).sum(), (c,))


def test_cross_entropy_from_products_arguments_are_checked():
    z, c, v = features(6, 5, 4, seed=0)
    c = c.requires_grad_()
    s = sk.prototype_scores(z, c.detach())
    t = torch.zeros(6, dtype=torch.int64)
    no_px = sk.prototype_softmax_products(s, c, 0.1)
    with pytest.raises(ValueError, match="z="):
        sk.prototype_cross_entropy_from_products(z, c, t, no_px, 0.1)
    prods = sk.prototype_softmax_products(s, c, 0.1, z=z)
    soft = sk.prototype_softmax_products(s, c, 0.05, v=v)
    with pytest.raises(ValueError, match="target_x="):
        sk.prototype_cross_entropy_from_products(z, c, soft.p_c, prods, 0.1)
    with pytest.raises(ValueError, match=r"product target must have shape \(6, 4\)"):
        sk.prototype_cross_entropy_from_products(z, c, soft.p_c[:, :3], prods, 0.1)
    with pytest.raises(ValueError, match=r"prototypes must have shape \(K=5, D\)"):
        sk.prototype_softmax_products(s, c[:4], 0.1)
    with pytest.raises(ValueError, match=r"z must have shape \(M, D\) = \(6, 4\)"):
        sk.prototype_softmax_products(s, c, 0.1, z=z[:5])


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_of_a_row_holding_nan_follow_torch_argmax(backend):
    z, c, v = features(40, 9, 5, seed=4)
    s = sk.prototype_scores(z, c)
    s[3, 6] = float("nan")
    got = sk.prototype_softmax_products(s, c, 0.05, v=v, return_labels=True, backend=backend)
    assert torch.equal(got.labels, torch.argmax(s / 0.05 + v, dim=1))
    assert got.labels[3] == 6 and torch.isnan(got.entropy)


@pytest.mark.skipif(not is_available("cpu"), reason="needs the cpu backend")
def test_cpu_products_do_not_depend_on_the_thread_count(threads):
    """Row results (LSE, P·C, labels, the entropy sum) are bitwise the same for 1 and 2 threads;
    Pᵀ·x is summed over per-thread partials, so only its last bits may move."""
    z, c, v = features(1000, 301, 12, seed=5)
    s = sk.prototype_scores(z, c)
    out = []
    for count in (1, 2):
        torch.set_num_threads(count)
        out.append(sk.prototype_softmax_products(s, c, 0.05, v=v, z=z, return_labels=True, backend="cpu"))
    one, two = out
    for name in ("lse", "p_c", "labels", "entropy"):
        assert torch.equal(getattr(one, name), getattr(two, name)), name
    torch.testing.assert_close(one.p_x, two.p_x, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_loss_on_cuda_stored_scores_matches_float64(targets):
    """On CUDA small batches take the stored path too, with the generic products (P materialised)
    and the backward's device-side check: the loss and its gradients against float64."""
    from truth import swap_loss_terms

    from sigma.losses import SinkhornSwapLoss
    m, k, d = 2048, 300, 64
    g = torch.Generator().manual_seed(11)
    zv, zp = torch.randn(m, d, generator=g), torch.randn(m, d, generator=g)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    crit = SinkhornSwapLoss(k, d, targets=targets).cuda()
    with torch.no_grad():
        crit.prototypes.copy_(c)
    a, b = zv.cuda().requires_grad_(), zp.cuda().requires_grad_()
    loss = crit(a, b)
    loss.backward()
    z64 = [t.double().requires_grad_() for t in (zv, zp, c)]
    want = sum(swap_loss_terms(*z64, 0.05, 10, 0.1, targets))
    want.backward()
    torch.testing.assert_close(loss.double().cpu(), want.detach(), rtol=1e-4, atol=1e-5)
    if targets == "soft":  # hard labels may flip at fp32 near-ties; soft gradients compare element-wise
        for got, t in zip((a.grad, b.grad, crit.prototypes.grad), z64):
            torch.testing.assert_close(got.double().cpu(), t.grad, rtol=1e-3, atol=1e-7)


def test_products_and_targets_are_checked_for_shape_dtype_and_device():
    z, c, v = features(6, 5, 4, seed=0)
    c = c.requires_grad_()
    s = sk.prototype_scores(z, c.detach())
    prods = sk.prototype_softmax_products(s, c, 0.1, z=z)
    soft = sk.prototype_softmax_products(s, c, 0.05, v=v, z=z)
    cefp = sk.prototype_cross_entropy_from_products
    with pytest.raises(ValueError, match=r"target_x must have shape \(5, 4\)"):
        cefp(z, c, soft.p_c, prods, 0.1, target_x=soft.p_x[:1])  # would broadcast into a wrong dC
    with pytest.raises(TypeError, match="products.p_c must be a floating-point tensor"):
        cefp(z, c, soft.p_c, prods._replace(p_c=prods.p_c.long()), 0.1, target_x=soft.p_x)
    with pytest.raises(ValueError, match="products.p_x is on meta"):
        cefp(z, c, soft.p_c, prods._replace(p_x=prods.p_x.to("meta")), 0.1, target_x=soft.p_x)
    with pytest.raises(ValueError, match="one device"):
        cefp(z, c, soft.p_c, prods._replace(lse=prods.lse.to("meta")), 0.1, target_x=soft.p_x)
    with pytest.raises(ValueError, match="temperature=1e-45 is too small"):
        sk.prototype_softmax_products(s, c, 1e-45)
    with pytest.raises(TypeError, match="prototypes must be float16, bfloat16, float32 or float64"):
        sk.prototype_softmax_products(s, c.detach().int(), 0.1)


@pytest.mark.parametrize("backend", ["auto", "reference"])  # an explicit "cpu" refuses float64 by name
def test_mixed_precisions_compute_in_the_wider_dtype(backend):
    z, c, _ = features(30, 7, 5, seed=1)
    s = sk.prototype_scores(z, c)
    got = sk.prototype_softmax_products(s, c.double(), 0.1, z=z, backend=backend)
    assert got.p_c.dtype == torch.float64
    lse, pc, px = products64(z, c, 10.0, None, z)
    torch.testing.assert_close(got.p_c, pc, rtol=1e-5, atol=1e-6)
    assert sk.prototype_scores(z, c.double()).dtype == torch.float64  # float32 z, float64 prototypes


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_without_finite_scores_gives_lse_minus_inf_and_nan_products(backend):
    z, c, _ = features(20, 6, 4, seed=2)
    s = sk.prototype_scores(z, c)
    s[3] = float("-inf")
    got = sk.prototype_softmax_products(s, c, 0.1, z=z, return_labels=True, backend=backend)
    assert got.lse[3] == float("-inf") and torch.isnan(got.p_c[3]).all() and torch.isnan(got.entropy)
    assert torch.isfinite(got.lse[torch.arange(20) != 3]).all()


def test_a_nan_upstream_gradient_gives_nan_gradients_not_an_error():
    z, c, _ = features(12, 5, 4, seed=3)
    z, c = z.requires_grad_(), c.requires_grad_()
    t = torch.randint(0, 5, (12,), generator=torch.Generator().manual_seed(0))
    prods = sk.prototype_softmax_products(sk.prototype_scores(z.detach(), c.detach()), c, 0.1, z=z)
    loss = sk.prototype_cross_entropy_from_products(z, c, t, prods, 0.1)
    dz, dc = torch.autograd.grad(loss * float("nan"), (z, c))
    assert torch.isnan(dz).all() and torch.isnan(dc).all()


def test_float64_loss_module_takes_float32_features():
    from sigma.losses import SinkhornSwapLoss
    crit = SinkhornSwapLoss(20, 8).double()
    zv, zp = torch.randn(2, 40, 8), torch.randn(2, 40, 8)
    stored = crit(zv, zp)
    streamed = SinkhornSwapLoss(20, 8, streaming=True).double()
    streamed.load_state_dict(crit.state_dict())
    assert stored.dtype == torch.float64
    torch.testing.assert_close(stored, streamed(zv, zp), rtol=1e-10, atol=1e-10)
