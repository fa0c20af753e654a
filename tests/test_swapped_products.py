"""Swapped soft-target products (what SinkhornSwapLoss runs with soft targets on stored scores):
`prototype_swapped_products` against float64 computations written here from the definitions, and
the two cross-entropies built from them (values and gradients) against float64 autograd of the
plain soft-target cross-entropy, on the `cpu` backend (one pass, branch b's scores recomputed in
row chunks) and the generic path (plain torch over row chunks)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from truth import cross_entropy, prototype_logits

import sigma_kernels as sk
from sigma_kernels.backends import composed, is_available

BACKENDS = ["reference"] + (["cpu"] if is_available("cpu") else [])
EPS, TAU = 0.05, 0.1


def branches(m, k, d, seed):
    g = torch.Generator().manual_seed(seed)
    za, zb = torch.randn(m, d, generator=g), torch.randn(m, d, generator=g)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    va, vb = 0.5 * torch.randn(k, generator=g), 0.5 * torch.randn(k, generator=g)
    return za, zb, c, va, vb


def swapped64(za, zb, c, va, vb, eps=EPS, tau=TAU):
    """Float64 (rows, (P − Q')·c, (P − Q')ᵀ·normalize(z)) of both terms, and Q_a, Q_b."""
    s = [prototype_logits(z.double(), c.double()) for z in (za, zb)]
    q = [torch.softmax(s[i] / eps + v.double(), dim=1) for i, v in enumerate((va, vb))]
    out = []
    for side in range(2):
        other = q[1 - side]
        rows = torch.logsumexp(s[side] / tau, dim=1) - (other * s[side]).sum(dim=1) / tau
        diff = torch.softmax(s[side] / tau, dim=1) - other
        x = F.normalize((za, zb)[side].double(), dim=1)
        out.append((rows, diff @ c.double(), diff.T @ x))
    return out, q


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 600), k=st.integers(1, 70), d=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_swapped_products_match_float64(backend, m, k, d, seed):
    za, zb, c, va, vb = branches(m, k, d, seed)
    s = sk.prototype_scores(za, c)
    got = sk.prototype_swapped_products(s, zb, c, va, vb, EPS, TAU, z_a=za, grad_b=True, return_labels=True,
                                        backend=backend)
    want, q = swapped64(za, zb, c, va, vb)
    for term, (rows, gc, gx) in zip((got.a, got.b), want):
        torch.testing.assert_close(term.rows.double(), rows, rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(term.g_c.double(), gc, rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(term.g_x.double(), gx, rtol=1e-5, atol=2e-6 * max(1.0, m ** 0.5))
    # Q's labels are those of the labelling pass; entropies against float64
    sb = sk.prototype_scores(zb, c)
    for side, (scores, v) in enumerate(((s, va), (sb, vb))):
        labels = sk.sinkhorn_assign_from_potentials(scores, v, EPS, backend=backend)
        assert torch.equal(got.labels[side], labels), side
        h64 = torch.special.entr(q[side]).sum()
        torch.testing.assert_close(got.entropy[side].double(), h64, rtol=1e-5, atol=1e-5 * m)
    # the products asked for, and no more
    bare = sk.prototype_swapped_products(s, zb, c, va, vb, EPS, TAU, backend=backend)
    assert bare.a.g_x is None and bare.b.g_x is None and bare.labels is None and bare.entropy is None
    torch.testing.assert_close(bare.a.g_c, got.a.g_c, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,k,d,eps", [(1, 1, 4, EPS), (37, 29, 19, EPS), (300, 131, 8, EPS), (300, 131, 8, 1e-3)])
def test_swapped_cross_entropies_values_and_gradients(backend, m, k, d, eps):
    """CE(P_a, Q_b) with live prototypes + CE(P_b, Q_a) with detached ones, from the products,
    against float64 autograd of the plain soft-target cross-entropy; also at ε = 1e-3, where
    exp(S/ε) overflows float32 and only shifted exponentials stay finite."""
    za, zb, c, va, vb = branches(m, k, d, seed=m + k)
    a, b, cc = (t.clone().requires_grad_() for t in (za, zb, c))
    prods = sk.prototype_swapped_products(sk.prototype_scores(za, c), zb, cc, va, vb, eps, TAU, z_a=a,
                                          backend=backend)
    loss = (sk.prototype_cross_entropy_from_products(a, cc, None, prods.a, TAU)
            + sk.prototype_cross_entropy_from_products(b, cc.detach(), None, prods.b, TAU))
    loss.backward()
    a64, b64, c64 = (t.double().requires_grad_() for t in (za, zb, c))
    _, q = swapped64(za, zb, c, va, vb, eps=eps)
    want = (cross_entropy(prototype_logits(a64, c64, TAU), q[1])
            + cross_entropy(prototype_logits(b64, c64.detach(), TAU), q[0]))
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-5)
    # float32 scores carry ~6e-8 of rounding, i.e. ~6e-8/ε in Q's logits: 6e-5 relative at ε = 1e-3
    atol = 1e-7 if eps >= 0.01 else 1e-6
    for got, ref in ((a.grad, a64.grad), (b.grad, b64.grad), (cc.grad, c64.grad)):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=atol)


@pytest.mark.skipif(not is_available("cpu"), reason="needs the cpu backend")
def test_cpu_swapped_products_do_not_depend_on_the_thread_count(threads):
    """Row results (the rows, (P − Q')·c, labels, entropy sums) are bitwise the same for 1 and 2
    threads; the (K, D) products are summed over per-thread partials, so only their last bits may
    move."""
    za, zb, c, va, vb = branches(1000, 301, 12, seed=5)
    s = sk.prototype_scores(za, c)
    out = []
    for count in (1, 2):
        torch.set_num_threads(count)
        out.append(sk.prototype_swapped_products(s, zb, c, va, vb, EPS, TAU, z_a=za, grad_b=True,
                                                 return_labels=True, backend="cpu"))
    one, two = out
    for side in ("a", "b"):
        t1, t2 = getattr(one, side), getattr(two, side)
        assert torch.equal(t1.rows, t2.rows) and torch.equal(t1.g_c, t2.g_c), side
        torch.testing.assert_close(t1.g_x, t2.g_x, rtol=1e-6, atol=1e-6)
    assert torch.equal(one.labels, two.labels) and torch.equal(one.entropy, two.entropy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_without_finite_scores_gives_nan_in_that_row_only(backend):
    za, zb, c, va, vb = branches(20, 6, 4, seed=2)
    s = sk.prototype_scores(za, c)
    s[3] = float("-inf")
    got = sk.prototype_swapped_products(s, zb, c, va, vb, EPS, TAU, z_a=za, return_labels=True, backend=backend)
    others = torch.arange(20) != 3
    for term in (got.a, got.b):
        assert torch.isnan(term.rows[3]) and torch.isnan(term.g_c[3]).all()
        assert torch.isfinite(term.rows[others]).all() and torch.isfinite(term.g_c[others]).all()
    assert torch.isnan(got.entropy[0]) and torch.isfinite(got.entropy[1])


def test_arguments_are_checked():
    za, zb, c, va, vb = branches(6, 5, 4, seed=0)
    s = sk.prototype_scores(za, c)
    swap = sk.prototype_swapped_products
    with pytest.raises(ValueError, match=r"z_b must have shape \(M, D\) = \(6, 4\)"):
        swap(s, zb[:5], c, va, vb, EPS, TAU)
    with pytest.raises(ValueError, match=r"z_a must have shape \(M, D\) = \(6, 4\)"):
        swap(s, zb, c, va, vb, EPS, TAU, z_a=za[:, :3])
    with pytest.raises(ValueError, match="v_b"):
        swap(s, zb, c, va, vb[:4], EPS, TAU)
    with pytest.raises(ValueError, match=r"prototypes must have shape \(K=5, D\)"):
        swap(s, zb, c[:4], va, vb, EPS, TAU)
    with pytest.raises(ValueError, match="one device"):
        swap(s, zb, c, va, vb.to("meta"), EPS, TAU)
    with pytest.raises(ValueError, match="temperature=1e-45 is too small"):
        swap(s, zb, c, va, vb, EPS, 1e-45)
    prods = swap(s, zb, c, va, vb, EPS, TAU)
    cefp = sk.prototype_cross_entropy_from_products
    live = c.clone().requires_grad_()
    with pytest.raises(ValueError, match="already hold their targets"):
        cefp(za, c, torch.zeros(6, dtype=torch.long), prods.a, TAU)
    with pytest.raises(ValueError, match="g_x is None: make the products .* z_a= for term a or grad_b=True"):
        cefp(za, live, None, prods.a, TAU)  # no z_a given: no prototype gradient possible
    with pytest.raises(ValueError, match="made at temperature=0.1, but temperature=0.2"):
        cefp(za, c, None, prods.a, 0.2)
    with pytest.raises(ValueError, match=r"products.g_c must have shape \(6, 4\)"):
        cefp(za, c, None, prods.a._replace(g_c=prods.a.g_c[:2]), TAU)
    with pytest.raises(TypeError, match="pass products.a or products.b"):
        cefp(za, c, None, prods, TAU)
    with pytest.raises(TypeError, match="target=None needs TargetedProducts"):
        cefp(za, c, None, sk.prototype_softmax_products(s, c, TAU, z=za), TAU)
    with_x = swap(s, zb, c, va, vb, EPS, TAU, z_a=za)
    with pytest.raises(ValueError, match="reduction='none'"):
        cefp(za, live, None, with_x.a, TAU, reduction="none")


def test_a_float64_input_is_not_rounded_to_float32():
    """The widest input decides the compute dtype: float64 features or potentials with float32
    scores and prototypes give float64 products (on the generic path), equal to float64 ones."""
    za, zb, c, va, vb = branches(40, 7, 5, seed=6)
    s = sk.prototype_scores(za.double(), c.double()).float()
    got = sk.prototype_swapped_products(s, zb.double(), c, va, vb, EPS, TAU, backend="auto")
    want = sk.prototype_swapped_products(s.double(), zb.double(), c.double(), va.double(), vb.double(), EPS, TAU,
                                         backend="reference")
    assert got.a.g_c.dtype == torch.float64
    torch.testing.assert_close(got.b.g_c, want.b.g_c, rtol=0, atol=0)
    assert sk.prototype_softmax_products(s, c, TAU, v=va.double(), backend="auto").p_c.dtype == torch.float64


def test_generic_path_covers_several_row_chunks(monkeypatch):
    """The plain-torch path works in row chunks; with chunks of a few rows it agrees with one chunk."""
    za, zb, c, va, vb = branches(50, 9, 5, seed=4)
    s = sk.prototype_scores(za, c)
    whole = sk.prototype_swapped_products(s, zb, c, va, vb, EPS, TAU, z_a=za, return_labels=True,
                                          backend="reference")
    monkeypatch.setattr(composed, "_SWAPPED_CHUNK_SCORES", 9 * 7)  # 7 rows per chunk
    chunked = sk.prototype_swapped_products(s, zb, c, va, vb, EPS, TAU, z_a=za, return_labels=True,
                                            backend="reference")
    for side in ("a", "b"):
        for name in ("rows", "g_c"):
            torch.testing.assert_close(getattr(getattr(chunked, side), name), getattr(getattr(whole, side), name),
                                       rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked.a.g_x, whole.a.g_x, rtol=1e-5, atol=1e-6)
    assert torch.equal(chunked.labels, whole.labels)
    torch.testing.assert_close(chunked.entropy, whole.entropy, rtol=1e-5, atol=1e-5)
