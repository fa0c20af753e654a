"""Hostile-but-realistic inputs (docs/numerics.md): non-finite values, ε and score range, two
forwards before one backward, torch.compile on every layout, double backward, huge features.
Every check runs on each backend available here (triton under the interpreter)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sigma_kernels as sk
from sigma.losses import SinkhornSwapLoss
from sigma_kernels.backends import available_backends

BACKENDS = available_backends()
# Whole-loss checks cost seconds each under the Triton interpreter: their triton cases are slow-marked
# (the op-level checks below still run triton by default).
LOSS_BACKENDS = [pytest.param(b, marks=pytest.mark.slow) if b == "triton" else b for b in BACKENDS]
# the Triton interpreter's NumPy warns on the inf/NaN arithmetic these tests feed it on purpose
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _features(m, d, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g) * scale


# --- huge and tiny features normalise like moderate ones -----------------------------------------

@pytest.mark.parametrize("scale", [1e19, 1e30, 3e38 / 16, 1e-25, 1e-40])
def test_normalize_rows_is_scale_safe(scale):
    z = _features(7, 16)
    want = z.double() / z.double().norm(dim=1, keepdim=True)
    got = sk.normalize_rows(z * scale)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6 if scale >= 1e-38 else 1e-3)


@pytest.mark.parametrize("rescaled", [False, True])
def test_normalize_rows_bitwise_unchanged_on_moderate_rows(rescaled):
    """Bitwise F.normalize, values and gradients, on ordinary rows; also when another row (zero here)
    sends the batch through the power-of-two rescaling."""
    z = _features(33, 20)
    if rescaled:
        z[7] = 0.0
    z = z.requires_grad_()
    g = _features(33, 20, seed=1)
    (sk.normalize_rows(z) * g).sum().backward()
    z2 = z.detach().clone().requires_grad_()
    (F.normalize(z2, dim=1) * g).sum().backward()
    assert torch.equal(sk.normalize_rows(z), F.normalize(z, dim=1))
    assert torch.equal(z.grad, z2.grad)


def test_normalize_rows_zero_and_non_finite_rows():
    z = torch.tensor([[0.0, 0.0], [float("nan"), 1.0], [float("inf"), 1.0], [3.0, 4.0]])
    x = sk.normalize_rows(z)
    assert torch.equal(x[0], torch.zeros(2)) and torch.isnan(x[1:3]).any(dim=1).all()
    assert torch.equal(x[3], torch.tensor([0.6, 0.8]))


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_loss_trains_on_huge_features(backend):
    """|features| = 1e20: same loss and gradient direction as at unit scale (not 2 ln K, zero grad)."""
    torch.manual_seed(0)
    crit = SinkhornSwapLoss(12, 16, sinkhorn_iterations=3, backend=backend, compute_stats=False)
    pred, tgt = _features(40, 16, 1), _features(40, 16, 2)
    want = crit(pred, tgt)
    big_p, big_t = (pred * 1e20).requires_grad_(), (tgt * 1e20).requires_grad_()
    got = crit(big_p, big_t)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.backward()
    assert torch.isfinite(big_p.grad).all() and big_p.grad.abs().sum() > 0 and big_t.grad.abs().sum() > 0


# --- double backward ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_double_backward_is_a_clear_error(backend):
    z = _features(9, 8).requires_grad_()
    c = F.normalize(_features(5, 8, 1), dim=1).requires_grad_()
    t = torch.arange(9) % 5
    cases = [("prototype_cross_entropy", lambda: sk.prototype_cross_entropy(z, c, t, backend=backend)),
             ("prototype_cross_entropy_sinkhorn",
              lambda: sk.prototype_cross_entropy_sinkhorn(z, c, z, c, torch.zeros(5), 0.05, backend=backend))]
    for name, loss_fn in cases:
        gz, = torch.autograd.grad(loss_fn(), z, create_graph=True)  # first order still works
        with pytest.raises(RuntimeError, match=f"double backward is not supported by sigma_kernels.{name}"):
            gz.sum().backward()
    crit = SinkhornSwapLoss(5, 8, sinkhorn_iterations=2, backend=backend)
    gz, = torch.autograd.grad(crit(z, _features(9, 8, 3)), z, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported by sigma_kernels"):
        gz.sum().backward()


# --- two forwards before one backward -------------------------------------------------------------

@pytest.mark.parametrize("targets", ["hard", "soft"])
@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_two_forwards_then_one_backward(backend, targets):
    """(crit(a, b) + crit(c, d)).backward() == crit(a, b).backward(); crit(c, d).backward()."""
    torch.manual_seed(0)
    crit = SinkhornSwapLoss(10, 8, sinkhorn_iterations=3, backend=backend, targets=targets, compute_stats=False)
    with torch.no_grad():
        crit.prototypes.mul_(1.5)  # not unit-norm: the first forward must renormalise them
    start = crit.prototypes.detach().clone()
    views = [_features(24, 8, seed=s).requires_grad_() for s in range(4)]
    a, b, c, d = views
    crit(a, b).backward()
    crit(c, d).backward()
    separate = [t.grad.clone() for t in views + [crit.prototypes]]
    unit = crit.prototypes.detach().clone()
    np.testing.assert_allclose(unit.norm(dim=1).numpy(), 1.0, atol=1e-6)  # renormalised in place
    for t in views + [crit.prototypes]:
        t.grad = None
    with torch.no_grad():
        crit.prototypes.copy_(start)
    (crit(a, b) + crit(c, d)).backward()
    for got, want in zip([t.grad for t in views + [crit.prototypes]], separate):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert torch.equal(crit.prototypes.detach(), unit)


def test_prototype_gradient_is_the_raw_gradient():
    """Renormalisation is outside autograd: dL/dC equals the gradient at the (unit) prototypes used."""
    torch.manual_seed(0)
    crit = SinkhornSwapLoss(6, 8, sinkhorn_iterations=3, backend="reference", compute_stats=False)
    with torch.no_grad():
        crit.prototypes.mul_(3.0)
    a, b = _features(20, 8), _features(20, 8, 1)
    crit(a, b).backward()
    c = crit.prototypes.detach().clone().requires_grad_()
    labels = sk.sinkhorn_assign(sk.prototype_scores(a, c.detach()), 0.05, 3, backend="reference")
    sk.prototype_cross_entropy(b, c, labels, 0.1, backend="reference").backward()
    torch.testing.assert_close(crit.prototypes.grad, c.grad)


# --- non-finite input: NaN out, labels as torch.argmax, never a finite loss -----------------------

NAN, INF = float("nan"), float("inf")


def _scores(m=37, k=11, seed=0):
    return sk.prototype_scores(_features(m, 8, seed), F.normalize(_features(k, 8, seed + 100), dim=1))


def _poisoned(kind):
    s = _scores()
    if kind == "nan":
        s[5, 7] = NAN
    elif kind == "+inf":
        s[5, 7] = INF
    elif kind == "-inf row":
        s[5, :] = -INF
    elif kind == "-inf column":
        s[:, 3] = -INF
    return s


@pytest.mark.parametrize("kind", ["nan", "+inf", "-inf row", "-inf column"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_scores_give_nan_potentials_and_plan(backend, kind):
    s = _poisoned(kind)
    res = sk.sinkhorn_solve(s, 0.05, 3, backend=backend)
    assert torch.isnan(res.u).all() and torch.isnan(res.v).all() and torch.isnan(res.marginal_error)
    assert torch.isnan(sk.sinkhorn(s, 0.05, 3, backend=backend)).all()
    labels = sk.sinkhorn_assign(s, 0.05, 3, backend=backend)
    assert torch.equal(labels, torch.zeros_like(labels))  # all logits NaN: the first NaN, index 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_isolated_minus_inf_score_is_a_zero_weight_entry(backend):
    s = _scores()
    s[5, 7] = -INF
    got = sk.sinkhorn(s, 0.05, 3, backend=backend)
    want = sk.sinkhorn(s.double(), 0.05, 3, backend="reference")
    assert got[5, 7] == 0
    torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_rank_nan_highest_on_every_backend(backend):
    """torch.argmax semantics: a NaN logit wins, the first one if several; the same labels everywhere."""
    s, v = _scores(), 0.1 * _features(11, 1, 5).squeeze(1)
    s[4, 9] = NAN          # a NaN after the row's maximum still wins
    s[6, 2], s[6, 8] = NAN, NAN
    v_nan = v.clone()
    v_nan[6] = NAN
    for scores, pot in ((s, v), (_scores(), v_nan), (s, v_nan)):
        want = torch.argmax(scores.double() / 0.05 + pot.double(), dim=1)
        got = sk.sinkhorn_assign_from_potentials(scores, pot, 0.05, backend=backend)
        assert torch.equal(got, want)
    z = _features(9, 8)
    z[2, 0] = NAN
    c = F.normalize(_features(11, 8, 1), dim=1)
    want = torch.argmax(sk.normalize_rows(z).double() @ c.double().T / 0.05 + v_nan.double(), dim=1)
    assert torch.equal(sk.sinkhorn_assign_from_potentials_streaming(z, c, v_nan, 0.05, backend=backend), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_logit_makes_the_entropy_sum_nan_on_every_backend(backend):
    """softmax of a row holding NaN is NaN, so is its entropy: one NaN score (finite potentials), or
    one NaN potential, makes the summed entropy NaN, stored or streaming; finite input stays finite."""
    s, v = _scores(), 0.1 * _features(11, 1, 5).squeeze(1)
    ent = sk.sinkhorn_assign_from_potentials(s, v, 0.05, return_entropy=True, backend=backend)[1]
    assert torch.isfinite(ent)
    s[4, 9] = NAN
    assert torch.isnan(sk.sinkhorn_assign_from_potentials(s, v, 0.05, return_entropy=True, backend=backend)[1])
    v_nan = v.clone()
    v_nan[3] = NAN
    assert torch.isnan(sk.sinkhorn_assign_from_potentials(_scores(), v_nan, 0.05, return_entropy=True,
                                                          backend=backend)[1])
    z, c = _features(9, 8), F.normalize(_features(11, 8, 1), dim=1)
    z[2, 0] = NAN
    assert torch.isnan(sk.sinkhorn_assign_from_potentials_streaming(z, c, v, 0.05, return_entropy=True,
                                                                    backend=backend)[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_streaming_non_finite_features_give_nan(backend):
    z, c = _features(21, 8), F.normalize(_features(6, 8, 1), dim=1)
    z[3, 1] = INF
    res = sk.sinkhorn_streaming(z, c, 0.05, 3, backend=backend)
    assert torch.isnan(res.u).all() and torch.isnan(res.v).all()
    assert torch.equal(sk.sinkhorn_assign_streaming(z, c, 0.05, 3, backend=backend), torch.zeros(21, dtype=torch.long))


@pytest.mark.parametrize("targets", ["hard", "soft"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_on_the_fly_targets_from_non_finite_input_give_nan_rows(backend, targets):
    z, zt = _features(13, 8), _features(13, 8, 1)
    c = F.normalize(_features(5, 8, 2), dim=1)
    v = 0.1 * _features(5, 1, 3).squeeze(1)
    kw = dict(targets=targets, reduction="none", backend=backend)
    clean = sk.prototype_cross_entropy_sinkhorn(z, c, zt, c, v, 0.05, **kw)
    assert torch.isfinite(clean).all()
    v_nan = v.clone()
    v_nan[2] = NAN
    assert torch.isnan(sk.prototype_cross_entropy_sinkhorn(z, c, zt, c, v_nan, 0.05, **kw)).all()
    zt_bad = zt.clone()
    zt_bad[4, 0] = NAN
    rows = sk.prototype_cross_entropy_sinkhorn(z, c, zt_bad, c, v, 0.05, **kw)
    assert torch.isnan(rows[4]) and torch.equal(rows[torch.arange(13) != 4], clean[torch.arange(13) != 4])
    c_bad = c.clone()
    c_bad[1, 1] = INF
    assert torch.isnan(sk.prototype_cross_entropy_sinkhorn(z, c, zt, c_bad, v, 0.05, **kw)).all()


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("targets", ["hard", "soft"])
@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_loss_of_non_finite_features_is_non_finite_and_backward_runs(backend, targets, streaming):
    """What an fp16 grad scaler relies on: a NaN/inf loss (never finite, never an exception)."""
    crit = SinkhornSwapLoss(6, 8, sinkhorn_iterations=3, backend=backend, targets=targets, streaming=streaming)
    for poison in (NAN, INF, -INF):
        for which in (0, 1):
            feats = [_features(2 * 9, 8, 1).reshape(2, 9, 8), _features(2 * 9, 8, 2).reshape(2, 9, 8)]
            feats[which][1, 4, 3] = poison
            feats = [f.requires_grad_() for f in feats]
            loss = crit(*feats)
            assert not torch.isfinite(loss), (poison, which)
            loss.backward()
    half = (_features(18, 8, 3) * 7e4).half().reshape(2, 9, 8)  # overflows to inf in fp16
    assert not torch.isfinite(crit(half, _features(18, 8, 4).reshape(2, 9, 8)))


# --- ε and the score range ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_epsilon_and_score_range_beyond_float32_are_rejected(backend):
    s = _scores()
    with pytest.raises(ValueError, match=r"epsilon=1e-39 is too small: 1/epsilon = 1e\+39 overflows float32"):
        sk.sinkhorn(s, 1e-39, 3, backend=backend)
    for scores, eps in ((s, 1e-8), (s * 1e30, 0.05)):
        with pytest.raises(ValueError, match=f"Sinkhorn with epsilon={eps:g} is beyond what float32 resolves"):
            sk.sinkhorn(scores, eps, 3, backend=backend)
    z, c = _features(15, 8), F.normalize(_features(4, 8, 1), dim=1)
    with pytest.raises(ValueError, match="epsilon=1e-07 is beyond"):
        sk.sinkhorn_streaming(z, c, 1e-7, 3, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_epsilon_within_range_is_computed_correctly(backend):
    """ε = 1e-3 on cosine scores is inside the guarded range: rows sum to 1 and Q matches float64."""
    s = _scores(60, 7)
    got = sk.sinkhorn(s, 1e-3, 5, backend=backend)
    want = sk.sinkhorn(s.double(), 1e-3, 5, backend="reference")
    torch.testing.assert_close(got.sum(1).double(), torch.ones(60, dtype=torch.float64), rtol=0, atol=2e-3)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-3)


def test_loss_rejects_an_epsilon_float32_cannot_resolve():
    with pytest.raises(ValueError, match="epsilon=1e-05 is too small"):
        SinkhornSwapLoss(4, 8, epsilon=1e-5)
    SinkhornSwapLoss(4, 8, epsilon=1e-3)  # accepted


# --- torch.compile(fullgraph=True) on every documented layout, with the eager checks ---------------

def _layouts():
    b, n, d = 2, 8, 8
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, [0, 2, 3, 6, 7]] = True
    mask[1, [1, 2, 4, 5, 6]] = True
    p, t = _features(b * n, d, 1).reshape(b, n, d), _features(b * n, d, 2).reshape(b, n, d)
    gp, gt = p[mask].reshape(b, -1, d), t[mask].reshape(b, -1, d)
    return mask, {"(M, D)": (p.reshape(-1, d), t.reshape(-1, d), None), "(B, N, D)": (p, t, None),
                  "(B, N, D)+mask": (p, t, mask), "(B, N_mask, D)+mask": (gp, gt, mask),
                  "mixed+mask": (gp, t, mask)}


def _compiled_matches_eager(crit, compiled, pred, tgt, mask):
    crit.prototypes.grad = None
    want_in = [pred.clone().requires_grad_(), tgt.clone().requires_grad_()]
    got_in = [pred.clone().requires_grad_(), tgt.clone().requires_grad_()]
    want = crit(*want_in, mask)
    want.backward()
    want_c = crit.prototypes.grad.clone()
    crit.prototypes.grad = None
    got = compiled(*got_in, mask)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip([t.grad for t in got_in] + [crit.prototypes.grad], [t.grad for t in want_in] + [want_c]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


# Each layout is a recompilation (~10 s here): by default the two masked layouts (the data-dependent
# token count, and the gathered layout's count check); the whole matrix, stored and streaming, is slow.
@pytest.mark.parametrize("streaming,every_layout", [(False, False), pytest.param(False, True, marks=pytest.mark.slow),
                                                    pytest.param(True, True, marks=pytest.mark.slow)])
def test_compile_fullgraph_every_layout_aot_eager(streaming, every_layout):
    torch._dynamo.reset()
    mask, layouts = _layouts()
    crit = SinkhornSwapLoss(6, 8, sinkhorn_iterations=3, backend="reference", streaming=streaming)
    compiled = torch.compile(crit, fullgraph=True, backend="aot_eager")
    names = list(layouts) if every_layout else ["(B, N, D)+mask", "(B, N_mask, D)+mask"]
    for name in names:
        _compiled_matches_eager(crit, compiled, *layouts[name])
    # the compiled graph checks what eager checks: equal counts for gathered inputs, some token
    gp, gt, _ = layouts["(B, N_mask, D)+mask"]
    uneven = mask.clone()
    uneven[0, 0], uneven[1, 0] = False, True
    uneven[1, 1] = True
    with pytest.raises(ValueError, match="N_mask=5 in every sample"):
        crit(gp, gt, uneven)
    with pytest.raises(RuntimeError, match="N_mask=5 tubes in every sample"):
        compiled(gp, gt, uneven)
    p, t, _ = layouts["(B, N, D)+mask"]
    none = torch.zeros_like(mask)
    with pytest.raises(ValueError, match="no tokens to train on"):
        crit(p, t, none)
    with pytest.raises(RuntimeError):
        compiled(p, t, none)


@pytest.mark.slow
def test_compile_fullgraph_masked_layout_inductor():
    torch._dynamo.reset()
    mask, layouts = _layouts()
    crit = SinkhornSwapLoss(6, 8, sinkhorn_iterations=3, backend="reference")
    _compiled_matches_eager(crit, torch.compile(crit, fullgraph=True), *layouts["(B, N, D)+mask"])


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_compile_dynamic_shapes_aot_eager(targets):
    """torch.compile(dynamic=True) makes Python floats symbolic: the argument checks (ε, τ, tol)
    must trace, and one graph serves two token counts with the eager values."""
    torch._dynamo.reset()
    crit = SinkhornSwapLoss(6, 8, sinkhorn_iterations=3, targets=targets)
    compiled = torch.compile(crit, fullgraph=True, dynamic=True, backend="aot_eager")
    for m in (12, 19):
        _compiled_matches_eager(crit, compiled, _features(m, 8, 1), _features(m, 8, 2), None)
