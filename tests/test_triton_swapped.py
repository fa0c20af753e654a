"""The triton swapped soft-target products (sigma_kernels/backends/triton/swapped.py), stored and
streaming S_a, against float64 (tests/truth.py) and the reference composition, and the loss's
streaming soft path that uses them. Under TRITON_INTERPRET=1 on CPU (conftest.py): shapes stay tiny.
"""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from truth import prototype_logits, swap_loss_terms  # noqa: E402

import sigma_kernels as sk  # noqa: E402
from sigma import SinkhornSwapLoss  # noqa: E402
from sigma_kernels.backends import composed, get_backend  # noqa: E402
from sigma_kernels.backends.triton._common import override_blocks  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
EPS, TAU = 0.05, 0.1
# 16-wide tiles and 3 split-M programs: several row / column / feature tiles, masked edges and the
# partial sums of the column kernel all run on small shapes.
SMALL = dict(block_m_swapped=16, block_k_swapped=16, block_d=16, block_d_out=16, block_d_backward=16,
             max_programs=3)


def branches(m, k, d, seed):
    g = torch.Generator().manual_seed(seed)
    za, zb = torch.randn(m, d, generator=g), torch.randn(m, d, generator=g)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    va, vb = 0.5 * torch.randn(k, generator=g), 0.5 * torch.randn(k, generator=g)
    return tuple(t.to(DEV) for t in (za, zb, c, va, vb))


def swapped64(za, zb, c, va, vb):
    """Float64 per term: rows, (P − Q')·c, (P − Q')ᵀ·normalize(z); and Q_a, Q_b."""
    s = [prototype_logits(z.double(), c.double()) for z in (za, zb)]
    q = [torch.softmax(s[i] / EPS + v.double(), dim=1) for i, v in enumerate((va, vb))]
    out = []
    for side in range(2):
        other = q[1 - side]
        rows = torch.logsumexp(s[side] / TAU, dim=1) - (other * s[side]).sum(dim=1) / TAU
        diff = torch.softmax(s[side] / TAU, dim=1) - other
        out.append((rows, diff @ c.double(), diff.T @ F.normalize((za, zb)[side].double(), dim=1)))
    return out, q


def products(streaming, za, zb, c, va, vb, backend="triton", **kw):
    scores = None if streaming else sk.prototype_scores(za, c)
    return sk.prototype_swapped_products(scores, zb, c, va, vb, EPS, TAU, z_a=za, backend=backend, **kw)


def check_against_float64(got, za, zb, c, va, vb):
    m = za.shape[0]
    want, q = swapped64(za, zb, c, va, vb)
    for term, (rows, gc, gx) in zip((got.a, got.b), want):
        torch.testing.assert_close(term.rows.double().cpu(), rows.cpu(), rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(term.g_c.double().cpu(), gc.cpu(), rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(term.g_x.double().cpu(), gx.cpu(), rtol=1e-5, atol=2e-6 * max(1.0, m ** 0.5))
    s = (prototype_logits(za.double(), c.double()), prototype_logits(zb.double(), c.double()))
    for side, v in enumerate((va, vb)):
        # labels: an argmax of the float64 logits S/ε + v, up to float32 rounding of near-ties
        logits = (s[side] / EPS + v.double()).cpu()
        picked = logits.gather(1, got.labels[side].cpu()[:, None]).squeeze(1)
        assert bool((picked >= logits.amax(dim=1) - 1e-4).all()), side
        h64 = torch.special.entr(q[side]).sum()
        torch.testing.assert_close(got.entropy[side].double().cpu(), h64.cpu(), rtol=1e-5, atol=1e-5 * m)


def test_triton_fuses_both_swapped_products_and_the_others_compose():
    for streaming in (True, False):
        assert sk.has_fused_swapped_products(DEV, torch.float32, streaming=streaming, backend="triton")
        assert not sk.has_fused_swapped_products("cpu", torch.float32, streaming=streaming, backend="reference")
    tri = get_backend("triton")
    for name in ("swapped_softmax_products", "streaming_swapped_softmax_products"):
        assert getattr(tri, name).__module__ == "sigma_kernels.backends.triton.swapped"


@pytest.mark.parametrize("streaming,blocks,m,k,d", [
    (True, "default", 1, 1, 4), (False, "default", 1, 1, 4), (True, "default", 37, 29, 19),
    (False, "default", 37, 29, 19), (True, "small", 45, 35, 33), (False, "small", 37, 29, 19)])
def test_values_labels_entropies_match_float64(streaming, blocks, m, k, d):
    """Odd shapes (no dimension a multiple of any tile); with small tiles D = 33 spans three
    feature chunks and K = 35 three column tiles."""
    za, zb, c, va, vb = branches(m, k, d, seed=m + k + d)
    with override_blocks(**(SMALL if blocks == "small" else {})):
        got = products(streaming, za, zb, c, va, vb, grad_b=True, return_labels=True)
    check_against_float64(got, za, zb, c, va, vb)


@pytest.mark.parametrize("streaming", [True, False])
def test_matches_the_reference_composition_and_returns_what_was_asked(streaming):
    za, zb, c, va, vb = branches(37, 29, 19, seed=5)
    got = products(streaming, za, zb, c, va, vb, grad_b=True, return_labels=True)
    want = products(streaming, za, zb, c, va, vb, backend="reference", grad_b=True, return_labels=True)
    for g, w in zip((*got.a[:3], *got.b[:3], got.entropy), (*want.a[:3], *want.b[:3], want.entropy)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert torch.equal(got.labels, want.labels)
    bare = products(streaming, za, zb, c, va, vb)
    assert bare.a.g_x is not None and bare.b.g_x is None and bare.labels is None and bare.entropy is None
    torch.testing.assert_close(bare.b.g_c, got.b.g_c, rtol=0, atol=0)
    if not streaming:  # stored S_a without z_a: no prototype gradient for term a either
        s = sk.prototype_scores(za, c)
        assert sk.prototype_swapped_products(s, zb, c, va, vb, EPS, TAU, backend="triton").a.g_x is None


@pytest.mark.parametrize("m,k,d", [(1, 1, 4), (300, 131, 8)])
def test_plain_torch_composition_without_stored_scores_matches_float64(m, k, d, monkeypatch):
    """The stand-in that backends without the fused pass run (scores_a=None on the reference),
    over several row chunks."""
    monkeypatch.setattr(composed, "_SWAPPED_CHUNK_SCORES", 7 * k)  # 7 rows per chunk
    za, zb, c, va, vb = branches(m, k, d, seed=m + k)
    got = products(True, za, zb, c, va, vb, backend="reference", grad_b=True, return_labels=True)
    check_against_float64(got, za, zb, c, va, vb)


def test_low_precision_factors_match_the_reference_on_the_same_rounded_inputs():
    za, zb, c, va, vb = branches(37, 29, 19, seed=6)
    tri = get_backend("triton")
    for dtype in (torch.float16, torch.bfloat16):
        xa, xb = (F.normalize(z, dim=1).to(dtype) for z in (za, zb))
        cl = c.to(dtype)
        got = tri.streaming_swapped_softmax_products(xa, xb, cl, va, vb, 1 / EPS, 1 / TAU, True, True)
        want = composed.streaming_swapped_softmax_products(xa, xb, cl, va, vb, 1 / EPS, 1 / TAU, True, True)
        for name, g, w in zip(("rows", "g", "h_a", "h_b"), got[:4], want[:4]):
            torch.testing.assert_close(g.float(), w.float(), rtol=1e-4, atol=2e-5, msg=lambda s, n=name: f"{n}: {s}")


@settings(max_examples=6, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 20), d=st.integers(1, 12), streaming=st.booleans(),
       seed=st.integers(0, 2**16))
def test_property_any_small_shape_matches_float64(m, k, d, streaming, seed):
    za, zb, c, va, vb = branches(m, k, d, seed)
    with override_blocks(**SMALL):
        got = products(streaming, za, zb, c, va, vb, grad_b=True, return_labels=True)
    check_against_float64(got, za, zb, c, va, vb)


def _loss_and_grads(crit, zv, zp):
    zv, zp = zv.clone().requires_grad_(), zp.clone().requires_grad_()
    crit.zero_grad(set_to_none=True)
    loss = crit(zv, zp)
    loss.backward()
    return loss.detach(), zv.grad, zp.grad, crit.prototypes.grad.clone()


def test_streaming_soft_loss_runs_one_swapped_pass_and_matches_float64(monkeypatch):
    """SinkhornSwapLoss(targets="soft", streaming=True) on triton: the value and the gradients of
    pred, target_feats and the prototypes against the float64 restatement of the objective, with
    the swapped pass (and not the per-term fused cross-entropy) doing the work."""
    m, k, d = 37, 29, 19
    g = torch.Generator().manual_seed(7)
    zv, zp = torch.randn(m, d, generator=g).to(DEV), torch.randn(m, d, generator=g).to(DEV)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1).to(DEV)
    tri = get_backend("triton")
    calls = []
    for name in ("streaming_swapped_softmax_products", "sinkhorn_target_cross_entropy_forward"):
        fn = getattr(tri, name)
        monkeypatch.setattr(tri, name, lambda *a, fn=fn, name=name, **kw: calls.append(name) or fn(*a, **kw))
    crit = SinkhornSwapLoss(k, d, epsilon=EPS, temperature=TAU, targets="soft", streaming=True,
                            backend="triton").to(DEV)
    with torch.no_grad():
        crit.prototypes.copy_(c)
    got = _loss_and_grads(crit, zv, zp)
    assert calls == ["streaming_swapped_softmax_products"]
    zv64, zp64, c64 = (t.double().cpu().requires_grad_() for t in (zv, zp, c))
    t1, t2 = swap_loss_terms(zv64, zp64, c64, EPS, crit.sinkhorn_iterations, TAU, "soft")
    (t1 + t2).backward()
    for name, a, b in zip(("loss", "d pred", "d target_feats", "d prototypes"), got,
                          ((t1 + t2).detach(), zv64.grad, zp64.grad, c64.grad)):
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-4, atol=1e-6, msg=lambda s, n=name: f"{n}: {s}")
    # the diagnostics come from the swapped pass's labels and entropies: those of the per-term path
    stats = dict(crit.last_stats)
    ref = SinkhornSwapLoss(k, d, epsilon=EPS, temperature=TAU, targets="soft", streaming=True,
                           backend="reference").to(DEV)
    with torch.no_grad():
        ref.prototypes.copy_(c)
    ref(zv, zp)
    assert stats.keys() == ref.last_stats.keys()
    for key, value in ref.last_stats.items():
        torch.testing.assert_close(stats[key].double(), value.double(), rtol=1e-4, atol=1e-5,
                                   msg=lambda s, key=key: f"{key}: {s}")


@pytest.mark.slow
def test_torch_compile_fullgraph_through_the_streaming_soft_loss():
    m, k, d = 37, 29, 19
    g = torch.Generator().manual_seed(8)
    zv, zp = torch.randn(m, d, generator=g).to(DEV), torch.randn(m, d, generator=g).to(DEV)
    crit = SinkhornSwapLoss(k, d, targets="soft", streaming=True, backend="triton").to(DEV)
    want = _loss_and_grads(crit, zv, zp)
    compiled = torch.compile(crit, fullgraph=True, backend="aot_eager")
    got = _loss_and_grads(compiled, zv, zp)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_streaming_swapped_op_passes_opcheck(backend):
    """Schema, fake kernel and dispatch of the new custom op (the interpreted triton run skips the
    AOT-dispatch replay, as in test_dispatch.py: it traces the same fake kernel as the reference)."""
    from torch.library import opcheck
    za, zb, c, va, vb = branches(7, 5, 3, seed=9)
    xa, xb = F.normalize(za, dim=1), F.normalize(zb, dim=1)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    kw = {"test_utils": utils} if backend == "triton" and DEV == "cpu" else {}
    # each (grad_b, labels) pair is a different output layout; the reference's full opcheck is slow
    for grad_b, labels in ((False, True), (True, False)) if backend == "triton" else ((True, True),):
        opcheck(torch.ops.sigma_kernels.streaming_swapped_softmax_products,
                (xa, xb, c, va, vb, 20.0, 10.0, grad_b, labels, backend), **kw)
        opcheck(torch.ops.sigma_kernels.swapped_softmax_products,
                (xa @ c.T, xb, c, va, vb, 20.0, 10.0, xa if labels else None, grad_b, labels, backend), **kw)
