"""sigma.losses.SinkhornSwapLoss against an independent float64 restatement of docs/method.md."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from truth import assert_no_worse_than_plain, sinkhorn_log, swap_loss_terms

import sigma.losses as losses_module
from sigma import SinkhornSwapLoss

# --- helpers -----------------------------------------------------------------------------

def make_inputs(m, k, d, dtype=torch.float64, seed=0, shape=None):
    g = torch.Generator().manual_seed(seed)
    shape = shape or (m, d)
    zv = torch.randn(*shape, generator=g, dtype=dtype)
    zp = torch.randn(*shape, generator=g, dtype=dtype)
    c = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    return zv, zp, c


def make_loss(c, dtype=torch.float64, **kwargs):
    kwargs.setdefault("backend", "reference")
    crit = SinkhornSwapLoss(c.shape[0], c.shape[1], **kwargs).to(dtype)
    with torch.no_grad():
        crit.prototypes.copy_(c)
    return crit


def module_loss_and_grads(crit, zv, zp, mask=None):
    zv = zv.clone().requires_grad_()
    zp = zp.clone().requires_grad_()
    crit.zero_grad(set_to_none=True)
    loss = crit(zv, zp, mask)
    loss.backward()
    return loss.detach(), zv.grad, zp.grad, crit.prototypes.grad.clone()


def spec_loss_and_grads(zv, zp, c, epsilon=0.05, n_iters=10, tau=0.1, targets="hard"):
    zv = zv.detach().double().requires_grad_()
    zp = zp.detach().double().requires_grad_()
    c = c.detach().double().requires_grad_()
    t1, t2 = swap_loss_terms(zv, zp, c, epsilon, n_iters, tau, targets)
    (t1 + t2).backward()
    return (t1 + t2).detach(), zv.grad, zp.grad, c.grad


def assert_close_all(got, want, rtol, atol):
    for name, a, b in zip(("loss", "d pred", "d target_feats", "d prototypes"), got, want):
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol,
                                   msg=lambda s, name=name: f"{name}: {s}")


# --- exactness ---------------------------------------------------------------------------

@pytest.mark.parametrize("targets", ["hard", "soft"])
@pytest.mark.parametrize("streaming", [False, True])
def test_float64_matches_spec_restatement(targets, streaming):
    zv, zp, c = make_inputs(37, 29, 19)
    crit = make_loss(c, targets=targets, streaming=streaming, epsilon=0.05, sinkhorn_iterations=10)
    got = module_loss_and_grads(crit, zv, zp)
    want = spec_loss_and_grads(zv, zp, c, targets=targets)
    assert_close_all(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("targets", ["hard", "soft"])
@pytest.mark.parametrize("streaming", [False, True])
def test_float32_matches_spec_restatement(targets, streaming):
    zv, zp, c = make_inputs(53, 41, 23, dtype=torch.float32, seed=1)
    crit = make_loss(c, dtype=torch.float32, targets=targets, streaming=streaming, epsilon=0.03,
                     sinkhorn_iterations=7, temperature=0.2)
    got = module_loss_and_grads(crit, zv, zp)
    want = spec_loss_and_grads(zv, zp, c, epsilon=0.03, n_iters=7, tau=0.2, targets=targets)
    assert_close_all(got, want, rtol=1e-5, atol=1e-6)


@given(m=st.integers(1, 40), k=st.integers(1, 33), d=st.integers(1, 17), iters=st.integers(1, 12),
       eps=st.sampled_from([0.01, 0.05, 0.3]), targets=st.sampled_from(["hard", "soft"]),
       seed=st.integers(0, 2**16))
def test_property_any_shape_matches_spec(m, k, d, iters, eps, targets, seed):
    zv, zp, c = make_inputs(m, k, d, seed=seed)
    if targets == "hard" and k > 1:
        # Hard labels jump at ties of Q; an exact tie in exact arithmetic (e.g. M = 1, where Q is
        # uniform) is broken by rounding, differently by any two implementations. Compare away from ties.
        for z in (zv, zp):
            top2 = torch.log(sinkhorn_log(F.normalize(z, dim=1) @ c.T, eps, iters)[0]).topk(2, dim=1).values
            assume(bool((top2[:, 0] - top2[:, 1]).min() > 1e-9))
    crit = make_loss(c, targets=targets, epsilon=eps, sinkhorn_iterations=iters, compute_stats=False)
    got = module_loss_and_grads(crit, zv, zp)
    want = spec_loss_and_grads(zv, zp, c, epsilon=eps, n_iters=iters, targets=targets)
    assert_close_all(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_gradient_routing(targets):
    """The video-model term reaches pred only; the projection term reaches target_feats and C."""
    zv, zp, c = make_inputs(31, 17, 13, seed=2)
    crit = make_loss(c, targets=targets)
    _, d_pred, d_target, d_c = module_loss_and_grads(crit, zv, zp)

    def term_grads(index):
        a, b, cc = (t.clone().requires_grad_() for t in (zv, zp, c))
        term = swap_loss_terms(a, b, cc, 0.05, 10, 0.1, targets)[index]
        return torch.autograd.grad(term, (a, b, cc), allow_unused=True, materialize_grads=True)

    g1_pred, g1_target, g1_c = term_grads(0)
    g2_pred, g2_target, g2_c = term_grads(1)
    assert g1_c.abs().max() == 0 and g1_target.abs().max() == 0 and g2_pred.abs().max() == 0
    assert g2_c.abs().max() > 0 and g1_pred.abs().max() > 0
    torch.testing.assert_close(d_c, g2_c, rtol=1e-9, atol=1e-12)  # dC is the second term's alone
    torch.testing.assert_close(d_pred, g1_pred, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(d_target, g2_target, rtol=1e-9, atol=1e-12)


def test_hard_and_soft_differ_and_agree_when_assignments_are_crisp():
    zv, zp, c = make_inputs(40, 20, 16, seed=3)
    hard = make_loss(c, targets="hard")(zv, zp)
    soft = make_loss(c, targets="soft")(zv, zp)
    assert abs(hard.item() - soft.item()) > 1e-3
    # Every token sits on its own prototype (a perfect equipartition) and ε is small: Q is one-hot,
    # so soft targets equal the hard ones.
    k = 24
    c2 = F.normalize(torch.randn(k, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4)), dim=1)
    z = c2[torch.randperm(k, generator=torch.Generator().manual_seed(5))] * 3.0
    hard = make_loss(c2, targets="hard", epsilon=0.01)(z, z)
    soft = make_loss(c2, targets="soft", epsilon=0.01)(z, z)
    torch.testing.assert_close(hard, soft, rtol=1e-6, atol=1e-8)


def test_initial_loss_is_about_two_log_k():
    """Random features and prototypes: L ≈ 2·ln K (docs/method.md), with the released K, D, ε, τ.

    More precisely, cosine scores of random unit vectors have variance 1/D, so each term is
    E[LSE_k(S_ik/τ)] − E[S_i,target/τ] ≈ (ln K + 1/(2Dτ²)) − 0: the target comes from the other,
    independent branch. Hence L ≈ 2·ln K + 1/(Dτ²) = 16.01 + 0.39 here.
    """
    k, d, tau = 3000, 256, 0.1
    zv, zp, _ = make_inputs(256, k, d, dtype=torch.float32, seed=6)
    torch.manual_seed(0)  # the module's own prototype init; spread over seeds is about ±0.08
    crit = SinkhornSwapLoss(k, d, temperature=tau, backend="reference")
    loss = crit(zv, zp).item()
    assert abs(loss - 2 * math.log(k)) < 0.05 * 2 * math.log(k)
    assert abs(loss - (2 * math.log(k) + 1 / (d * tau**2))) < 0.1


@pytest.mark.parametrize("streaming", [False, True])
def test_backend_auto_runs_the_compiled_kernels_and_matches_float64(streaming, monkeypatch):
    """"auto" on float32 CPU tensors runs the compiled CPU kernels when they are built (the
    reference otherwise), on a size with several row chunks, with inputs that require grad as in
    training; checked against the float64 truth, not against another backend of ours."""
    from sigma_kernels import _cross_entropy_ops, _sinkhorn_ops
    ran = []
    get_backend = _sinkhorn_ops.get_backend
    for ops in (_sinkhorn_ops, _cross_entropy_ops):
        monkeypatch.setattr(ops, "get_backend", lambda name: ran.append(name) or get_backend(name))
    monkeypatch.delenv("SIGMA_KERNELS_BACKEND", raising=False)
    zv, zp, c = make_inputs(613, 67, 33, dtype=torch.float32, seed=7)
    got = module_loss_and_grads(make_loss(c, dtype=torch.float32, backend="auto", streaming=streaming), zv, zp)
    try:  # availability decided here by importing the extension, not by the resolver under test
        import sigma_kernels._C  # noqa: F401
        expected = "cpu"
    except ImportError:
        expected = "reference"
    assert ran and set(ran) == {expected}
    assert_close_all(got, spec_loss_and_grads(zv, zp, c), rtol=1e-4, atol=1e-6)


# --- the prototypes -----------------------------------------------------------------------

def test_prototypes_are_renormalised_in_place_each_forward():
    zv, zp, c = make_inputs(20, 11, 7, seed=8)
    crit = make_loss(c)
    param = crit.prototypes
    ptr = param.data_ptr()
    with torch.no_grad():
        param.mul_(torch.linspace(0.5, 3.0, 11, dtype=torch.float64)[:, None])
    loss_scaled = crit(zv, zp)
    assert crit.prototypes is param and param.data_ptr() == ptr
    torch.testing.assert_close(param.detach().norm(dim=1), torch.ones(11, dtype=torch.float64))
    torch.testing.assert_close(param.detach(), c)
    torch.testing.assert_close(loss_scaled, make_loss(c)(zv, zp))


def test_default_init_has_unit_rows_and_is_trainable():
    crit = SinkhornSwapLoss()
    assert crit.prototypes.shape == (3000, 256) and crit.prototypes.requires_grad
    torch.testing.assert_close(crit.prototypes.detach().norm(dim=1), torch.ones(3000))
    assert [n for n, _ in crit.named_parameters()] == ["prototypes"]


# --- input layouts -------------------------------------------------------------------------

def test_mask_and_flattened_inputs_agree():
    b, n, d, k = 3, 12, 10, 16
    g = torch.Generator().manual_seed(9)
    full_v = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    full_p = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    c = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i in range(b):
        mask[i, torch.randperm(n, generator=g)[:9]] = True
    flat = module_loss_and_grads(make_loss(c), full_v[mask], full_p[mask])
    with_mask = module_loss_and_grads(make_loss(c), full_v, full_p, mask)
    torch.testing.assert_close(with_mask[0], flat[0])
    torch.testing.assert_close(with_mask[3], flat[3])
    torch.testing.assert_close(with_mask[1][mask], flat[1])
    torch.testing.assert_close(with_mask[2][mask], flat[2])
    assert with_mask[1][~mask].abs().max() == 0  # visible tokens get no gradient
    # VideoMAE layout: the decoder returns only the masked tokens (B, N_mask, D), targets are full.
    gathered_v = full_v[mask].reshape(b, 9, d)
    mixed = module_loss_and_grads(make_loss(c), gathered_v, full_p, mask)
    torch.testing.assert_close(mixed[0], flat[0])
    torch.testing.assert_close(mixed[1].reshape(-1, d), flat[1])
    both_gathered = module_loss_and_grads(make_loss(c), gathered_v, full_p[mask].reshape(b, 9, d), mask)
    torch.testing.assert_close(both_gathered[0], flat[0])
    # (B, N, D) without a mask uses every token.
    no_mask = make_loss(c)(full_v, full_p)
    torch.testing.assert_close(no_mask, make_loss(c)(full_v.reshape(-1, d), full_p.reshape(-1, d)))


def test_unequal_mask_counts_are_supported_with_full_inputs():
    b, n, d, k = 2, 8, 6, 5
    zv, zp, c = make_inputs(0, k, d, seed=10, shape=(b, n, d))
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, 2:8] = True
    got = make_loss(c)(zv, zp, mask)
    torch.testing.assert_close(got, make_loss(c)(zv[mask], zp[mask]))


# --- numerics ------------------------------------------------------------------------------

def _low_precision_loss_and_dc(crit, zv, zp, dtype):
    """Loss and dC of the swapped loss in plain torch, everything in `dtype` (the truth module's
    equations; float64 gives the truth)."""
    c = crit.prototypes.detach().to(dtype).requires_grad_()
    t1, t2 = swap_loss_terms(zv.detach().flatten(0, 1).to(dtype), zp.detach().flatten(0, 1).to(dtype), c,
                             crit.epsilon, crit.sinkhorn_iterations, crit.temperature, crit.targets)
    (t1 + t2).backward()
    return (t1 + t2).detach(), c.grad


def test_autocast_bf16_is_finite_and_no_worse_than_plain_bf16():
    """Under autocast the loss gets bf16 features and computes in float32: against the float64
    truth on those same bf16 values, it is no worse than the loss computed in plain bf16 torch,
    element by element (loss and dC)."""
    torch.manual_seed(11)
    d_in, d, k = 48, 32, 64
    head_v, head_p = torch.nn.Linear(d_in, d), torch.nn.Linear(d_in, d)
    x = torch.randn(4, 50, d_in)
    crit = SinkhornSwapLoss(k, d, backend="reference", targets="soft")
    with torch.no_grad():
        crit.prototypes.copy_(F.normalize(crit.prototypes, dim=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred, feats = head_v(x), head_p(x)
        assert pred.dtype == torch.bfloat16
        loss = crit(pred, feats)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for p in (*head_v.parameters(), *head_p.parameters(), crit.prototypes):
        assert torch.isfinite(p.grad).all()
    truth = _low_precision_loss_and_dc(crit, pred, feats, torch.float64)
    plain = _low_precision_loss_and_dc(crit, pred, feats, torch.bfloat16)
    for name, ours, t, p in zip(("loss", "dC"), (loss, crit.prototypes.grad), truth, plain):
        assert_no_worse_than_plain(ours, p, t, tol=1e-6 * float(t.abs().max()), name=name)
    # half-precision inputs without autocast are accepted too (computed in float32); plain torch
    # here runs in the coarser of the two dtypes
    zv, zp = head_v(x).half(), head_p(x).bfloat16()
    half = crit(zv, zp)
    assert half.dtype == torch.float32
    truth = _low_precision_loss_and_dc(crit, zv, zp, torch.float64)[0]
    plain = _low_precision_loss_and_dc(crit, zv, zp, torch.bfloat16)[0]
    assert_no_worse_than_plain(half, plain, truth, tol=1e-6 * float(truth.abs()), name="loss")
    crit_hard = SinkhornSwapLoss(k, d, backend="reference", epsilon=0.005)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_hard = crit_hard(head_v(x), head_p(x))
    assert torch.isfinite(loss_hard)


@pytest.mark.parametrize("epsilon", [0.005, 0.001])
@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_small_epsilon_is_finite_and_exact(epsilon, targets):
    zv, zp, c = make_inputs(64, 32, 16, dtype=torch.float32, seed=12)
    # The exp-domain iteration of the released code overflows float32 here: exp(S/ε) = inf.
    assert not torch.isfinite(torch.exp(F.normalize(zp, dim=1) @ c.float().T / epsilon)).all()
    got = module_loss_and_grads(make_loss(c, dtype=torch.float32, epsilon=epsilon, targets=targets), zv, zp)
    assert all(torch.isfinite(t).all() for t in got)
    want = spec_loss_and_grads(zv, zp, c, epsilon=epsilon, targets=targets)
    # In float64 the log-domain solve is exact at any ε.
    got64 = module_loss_and_grads(make_loss(c, epsilon=epsilon, targets=targets), zv.double(), zp.double())
    assert_close_all(got64, want, rtol=1e-8, atol=1e-10)
    # In float32, fp32 rounding of S/ε (about 1e-7/ε) can flip a hard label where Q nearly ties,
    # which small ε makes common; the loss then moves by one token's logit gap / M.
    if targets == "soft" or epsilon >= 0.005:
        assert_close_all(got, want, rtol=1e-4, atol=1e-5)
    else:
        assert abs(got[0].item() - want[0].item()) < 1e-2 * want[0].item()


def test_tolerance_stops_early_once_converged():
    zv, zp, c = make_inputs(30, 10, 8, seed=13)
    tol = 1e-6
    early = make_loss(c, epsilon=0.1, sinkhorn_iterations=500, tol=tol, check_every=1, targets="soft")
    loss, stats = early(zv, zp, return_stats=True)
    full = make_loss(c, epsilon=0.1, sinkhorn_iterations=500, targets="soft")
    loss_full, stats_full = full(zv, zp, return_stats=True)
    for key in ("marginal_error_v", "marginal_error_p"):
        assert stats_full[key] < 1e-12  # 500 iterations converge to rounding ...
        assert 1e-12 < stats[key] <= tol  # ... so the tol run stopped early, once within tol
    torch.testing.assert_close(loss, loss_full, rtol=1e-5, atol=1e-7)


def test_streaming_auto_switches_by_size(monkeypatch):
    calls = []
    real = losses_module.sinkhorn_streaming
    monkeypatch.setattr(losses_module, "sinkhorn_streaming", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    zv, zp, c = make_inputs(20, 10, 8, seed=14)
    crit = make_loss(c)
    small = crit(zv, zp)
    assert calls == []
    # M·K = 200 scores: 1600 bytes on the CPU (scores + exponentials); the CUDA budget does not apply
    crit.SCORE_MEMORY_BUDGET = {"cuda": 100, "cpu": 1600}
    assert torch.equal(crit(zv, zp), small) and calls == []
    crit.score_memory_budget = 1599
    big = crit(zv, zp)
    assert len(calls) == 2
    torch.testing.assert_close(small, big)
    with pytest.raises(ValueError, match="score_memory_budget"):
        make_loss(c, score_memory_budget=0)


# --- diagnostics ---------------------------------------------------------------------------

@pytest.mark.parametrize("targets", ["hard", "soft"])
@pytest.mark.parametrize("streaming", [False, True])
def test_stats_match_spec(streaming, targets):
    zv, zp, c = make_inputs(43, 19, 11, seed=15)
    crit = make_loss(c, streaming=streaming, sinkhorn_iterations=4, targets=targets)
    loss, stats = crit(zv, zp, return_stats=True)
    assert stats is crit.last_stats
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in stats.values())
    t1, t2 = swap_loss_terms(zv, zp, c, 0.05, 4, 0.1, targets)
    torch.testing.assert_close(stats["loss_v"], t1)
    torch.testing.assert_close(stats["loss_p"], t2)
    for tag, z in (("v", zv), ("p", zp)):
        s = F.normalize(z, dim=1) @ c.T
        q = sinkhorn_log(s, 0.05, 4)[0]
        entropy = -(torch.special.xlogy(q, q)).sum(1).mean()
        counts = torch.bincount(q.argmax(1), minlength=19).double()
        p = counts / 43
        torch.testing.assert_close(stats[f"entropy_{tag}"], entropy)
        torch.testing.assert_close(stats[f"usage_perplexity_{tag}"], torch.exp(-torch.special.xlogy(p, p).sum()))
        assert stats[f"unused_prototypes_{tag}"].item() == int((counts == 0).sum())
        col_error = (q.sum(0) / 43 - 1 / 19).abs().sum()
        torch.testing.assert_close(stats[f"marginal_error_{tag}"], col_error, rtol=1e-6, atol=1e-12)
        assert col_error > 0  # 4 iterations: not converged, so the metric is informative


def test_stats_can_be_turned_off():
    zv, zp, c = make_inputs(10, 5, 4, seed=16)
    crit = make_loss(c, compute_stats=False)
    crit(zv, zp)
    assert crit.last_stats == {}
    _, stats = crit(zv, zp, return_stats=True)
    assert "entropy_v" in stats


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(num_prototypes=0), ValueError, "num_prototypes"),
    (dict(num_prototypes=2.5), TypeError, "num_prototypes"),
    (dict(num_prototypes=True), TypeError, "num_prototypes"),
    (dict(dim=0), ValueError, "dim"),
    (dict(epsilon=0.0), ValueError, "epsilon"),
    (dict(epsilon=-0.1), ValueError, "epsilon"),
    (dict(epsilon=float("nan")), ValueError, "epsilon"),
    (dict(epsilon="0.05"), TypeError, "epsilon"),
    (dict(sinkhorn_iterations=0), ValueError, "sinkhorn_iterations"),
    (dict(sinkhorn_iterations=2.0), TypeError, "sinkhorn_iterations"),
    (dict(temperature=0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(targets="medium"), ValueError, "targets"),
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(tol=-1.0), ValueError, "tol"),
    (dict(tol=float("nan")), ValueError, "tol"),
    (dict(check_every=0), ValueError, "check_every"),
    (dict(streaming="yes"), ValueError, "streaming"),
    (dict(streaming=1), ValueError, "streaming"),
])
def test_invalid_hyper_parameters(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        SinkhornSwapLoss(**{"num_prototypes": 8, "dim": 4, **kwargs})


def _bad_inputs():
    b, n, d = 2, 6, 4
    z = torch.randn(b, n, d)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[:, :3] = True
    uneven = mask.clone()
    uneven[0, 3] = True
    return [
        ("not a tensor", (z.tolist(), z, None), TypeError, "pred must be a torch.Tensor"),
        ("integer features", (z.long(), z, None), TypeError, "pred must be float"),
        ("1-D", (z[0, 0], z[0, 0], None), ValueError, r"pred must be \(B, N, D\)"),
        ("4-D", (z[None], z[None], None), ValueError, r"pred must be \(B, N, D\)"),
        ("wrong D pred", (torch.randn(b, n, 5), z, None), ValueError, "pred has D=5.*dim=4"),
        ("wrong D target", (z, torch.randn(b, n, 3), None), ValueError, "target_feats has D=3.*dim=4"),
        ("shape mismatch", (z, z[:, :5], None), ValueError, "same shape"),
        ("flat vs 3-D", (z.reshape(-1, d), z, None), ValueError, "same shape"),
        ("non-boolean mask", (z, z, mask.to(torch.uint8)), TypeError, "mask must be a boolean"),
        ("float mask", (z, z, mask.float()), TypeError, "mask must be a boolean"),
        ("mask not a tensor", (z, z, mask.tolist()), TypeError, "mask must be a boolean"),
        ("1-D mask", (z, z, mask[0]), ValueError, r"mask must be \(B, N\)"),
        ("mask batch", (z, z, mask[:1]), ValueError, "B=1"),
        ("flat input with mask", (z.reshape(-1, d), z.reshape(-1, d), mask), ValueError, "pred must be"),
        ("mask N vs gathered count", (z[:, :4], z, mask), ValueError, "N_mask=4"),
        ("unequal masked counts", (z[:, :3], z, uneven), ValueError, "same number|N_mask=3"),
        ("different gathered counts", (z[:, :3], z[:, :2], mask), ValueError, "different numbers"),
        ("empty mask", (z, z, torch.zeros(b, n, dtype=torch.bool)), ValueError, "no True entry"),
        ("empty flat input", (z[:0].reshape(0, d), z[:0].reshape(0, d), None), ValueError, "no tokens"),
        ("meta mask", (z, z, mask.to("meta")), ValueError, "mask is on meta"),
        ("meta features", (z.to("meta"), z, None), ValueError, "pred is on meta"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_inputs_raise_clear_errors(case):
    _, args, exc, words = case
    crit = SinkhornSwapLoss(8, 4, backend="reference")
    with pytest.raises(exc, match=words):
        crit(*args)
