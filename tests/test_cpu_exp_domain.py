"""The `cpu` backend's fused exp-domain Sinkhorn (`sinkhorn_solve_dense`) and the assign +
entropy pass, against the independent float64 truth (tests/truth.py) and the reference.

Criterion per element: |cpu − truth| ≤ |reference fp32 − truth| + small tol, so the exp domain
may be no less exact than the log-domain reference. The guards of the exp domain (score range,
small row and column sums) are driven on purpose: ε = 1e-3 (log domain from the start) and a
range just under the limit (rows whose sums leave the safe range mid-solve).
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from truth import sinkhorn_log_f64

import sigma_kernels as sk
from sigma_kernels.backends import backend_info, get_backend, is_available

pytestmark = pytest.mark.skipif(
    not is_available("cpu"),
    reason=f"compiled extension sigma_kernels._C not built: {backend_info()['cpu']['reason']}")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scores(m, k, seed=0, spread=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(m, k, generator=g) * 2 - 1) * spread).to(dtype)


def assert_no_worse(ours, ref, truth, tol):
    """|ours − truth| ≤ |ref − truth| + tol elementwise (all float64 numpy)."""
    ours, ref, truth = (np.asarray(t, dtype=np.float64) for t in (ours, ref, truth))
    bad = np.abs(ours - truth) > np.abs(ref - truth) + tol
    assert not bad.any(), (f"{bad.sum()} of {bad.size} entries worse than the reference: max |ours - truth| "
                           f"{np.abs(ours - truth).max():.3g}, max |ref - truth| {np.abs(ref - truth).max():.3g}")


@pytest.mark.parametrize("m,k,eps", [(1, 1, 0.05), (1, 7, 0.05), (37, 29, 0.05), (257, 5, 0.02),
                                     (130, 131, 0.03), (301, 77, 1e-3)])
def test_plan_and_potentials_no_worse_than_reference(m, k, eps):
    s = scores(m, k, seed=m + k)
    q_truth, u_truth, v_truth = sinkhorn_log_f64(s.double().numpy(), eps, 10)
    q_cpu = sk.sinkhorn(s, eps, 10, backend="cpu")
    q_ref = sk.sinkhorn(s, eps, 10, backend="reference")
    # potentials are logs of magnitude ~1/ε: their fp32 rounding, relative in Q, is the floor
    tol = 4e-7 * (1.0 / eps + math.log(m * k))
    assert_no_worse(q_cpu.numpy(), q_ref.numpy(), q_truth, tol * np.abs(q_truth) + 1e-7)
    r_cpu = sk.sinkhorn_solve(s, eps, 10, backend="cpu")
    r_ref = sk.sinkhorn_solve(s, eps, 10, backend="reference")
    assert_no_worse(r_cpu.u.numpy(), r_ref.u.numpy(), u_truth, tol)
    assert_no_worse(r_cpu.v.numpy(), r_ref.v.numpy(), v_truth, tol)
    torch.testing.assert_close(r_cpu.marginal_error, r_ref.marginal_error, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("inv_eps", [1000.0, 37.0, 39.0])
def test_guards_keep_the_solve_exact(inv_eps):
    """1e3: range 2000 > the exp-domain limit, log domain from the start; 37–39: range 74–78 is
    accepted, but row sums fall below K·1e-30 for some rows, so the solve leaves the exp domain
    mid-way. Either way the potentials match the log-domain reference."""
    s = scores(300, 50, seed=3)
    eps = 1.0 / inv_eps
    r_cpu = sk.sinkhorn_solve(s, eps, 10, backend="cpu")
    r_ref = sk.sinkhorn_solve(s, eps, 10, backend="reference")
    _, u_truth, v_truth = sinkhorn_log_f64(s.double().numpy(), eps, 10)
    tol = 4e-7 * (inv_eps + math.log(300 * 50))
    assert_no_worse(r_cpu.u.numpy(), r_ref.u.numpy(), u_truth, tol)
    assert_no_worse(r_cpu.v.numpy(), r_ref.v.numpy(), v_truth, tol)
    assert torch.isfinite(r_cpu.u).all() and torch.isfinite(r_cpu.v).all()


def test_low_precision_scores():
    s = scores(200, 33, seed=5, dtype=torch.bfloat16)
    q_cpu = sk.sinkhorn(s, 0.05, 10, backend="cpu")
    q_ref = sk.sinkhorn(s, 0.05, 10, backend="reference")
    q_truth, _, _ = sinkhorn_log_f64(s.double().numpy(), 0.05, 10)
    assert_no_worse(q_cpu.numpy(), q_ref.numpy(), q_truth, 1e-5 * np.abs(q_truth) + 1e-7)


def test_early_stop_matches_reference():
    s = scores(400, 40, seed=7)
    kw = dict(tol=1e-2, check_every=2)
    r_cpu = sk.sinkhorn_solve(s, 0.1, 30, backend="cpu", **kw)
    r_ref = sk.sinkhorn_solve(s, 0.1, 30, backend="reference", **kw)
    # stopping after a different number of iterations would move v by far more than this
    torch.testing.assert_close(r_cpu.v, r_ref.v, rtol=0, atol=5e-5)
    assert r_cpu.marginal_error <= 1e-2


@pytest.mark.parametrize("n_iters,tol", [(30, 1e-2), (30, 0.0), (1, 0.0)])
def test_plan_with_and_without_early_stop(n_iters, tol):
    """The plan is written during the last iteration's pass when that iteration is known ahead,
    and in a pass of its own after an early stop: both must be the plan of the final potentials."""
    s = scores(400, 40, seed=8)
    kw = dict(tol=tol or None, check_every=2)
    q = sk.sinkhorn(s, 0.1, n_iters, backend="cpu", **kw)
    r = sk.sinkhorn_solve(s, 0.1, n_iters, backend="cpu", **kw)
    from_potentials = 400 * torch.exp(s.double() / 0.1 + r.u.double()[:, None] + r.v.double()[None, :])
    torch.testing.assert_close(q.double(), from_potentials, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(q, sk.sinkhorn(s, 0.1, n_iters, backend="reference", **kw), rtol=2e-5, atol=1e-6)


@given(m=st.integers(1, 300), k=st.integers(1, 60), seed=st.integers(0, 2**16),
       eps=st.sampled_from([0.5, 0.05, 0.02]))
@settings(max_examples=25, deadline=None)
def test_property_solve_matches_reference(m, k, seed, eps):
    s = scores(m, k, seed=seed)
    r_cpu = sk.sinkhorn_solve(s, eps, 5, backend="cpu")
    r_ref = sk.sinkhorn_solve(s, eps, 5, backend="reference")
    tol = 8e-7 * (1.0 / eps + math.log(m * k + 1) + 1)
    torch.testing.assert_close(r_cpu.u, r_ref.u, rtol=0, atol=tol)
    torch.testing.assert_close(r_cpu.v, r_ref.v, rtol=0, atol=tol)


@pytest.mark.parametrize("m,k", [(1, 1), (37, 29), (257, 131)])
def test_assign_entropy_against_float64(m, k):
    s = scores(m, k, seed=11)
    v = torch.randn(k, generator=torch.Generator().manual_seed(1))
    for name in ("cpu", "reference"):
        labels, h = get_backend(name).sinkhorn_assign_entropy(s, v, 20.0)
        logits = s.double().numpy() * 20.0 + v.double().numpy()
        logq = logits - logits.max(1, keepdims=True)
        logq -= np.log(np.exp(logq).sum(1, keepdims=True))
        h_truth = float(-(np.exp(logq) * logq).sum())
        assert abs(float(h) - h_truth) <= 1e-5 * max(1.0, abs(h_truth)), name
        assert torch.equal(labels, get_backend("reference").sinkhorn_assign(s, v, 20.0)), name
    x = torch.nn.functional.normalize(torch.randn(m, 9), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, 9), dim=1)
    lab_s, h_s = get_backend("cpu").streaming_assign_entropy(x, c, v, 20.0)
    lab_r, h_r = get_backend("reference").streaming_assign_entropy(x, c, v, 20.0)
    assert torch.equal(lab_s, lab_r)
    torch.testing.assert_close(h_s, h_r.float(), rtol=1e-5, atol=1e-5)


def test_two_threads_equal_one_thread(threads):
    s = scores(1000, 301, seed=2)
    v = torch.randn(301)
    out = []
    for count in (1, 2):
        torch.set_num_threads(count)
        out.append(get_backend("cpu").sinkhorn_solve_dense(s, 20.0, 7, 0.0, 5, True)
                   + get_backend("cpu").sinkhorn_assign_entropy(s, v, 20.0))
    for a, b in zip(*out):
        assert torch.equal(a, b)


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo") or "avx512f" not in open("/proc/cpuinfo").read(),
                    reason="the AVX2 loops are the only ones on this CPU, already tested")
def test_cpu_backend_tests_pass_on_the_avx2_loops():
    """The CPU has AVX-512, so the tests above ran its loops; run them again on the AVX2 ones."""
    env = dict(os.environ, SIGMA_CPU_NO_AVX512="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           "tests/test_cpu_backend.py", "tests/test_cpu_exp_domain.py", "tests/test_softmax_products.py",
           "tests/test_swapped_products.py", "tests/test_ties.py",
           "-k", "not test_cpu_backend_tests_pass_on_the_avx2_loops"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("m,k,d", [(1, 1, 3), (37, 29, 19), (257, 131, 8)])
def test_cross_entropy_with_given_lse_matches_the_fused_one(backend, m, k, d):
    """The loss hands the CE the logits' row LSE from its stored scores; values and gradients
    must equal the CE that computes it itself."""
    g = torch.Generator().manual_seed(m * k)
    z = torch.randn(m, d, generator=g, requires_grad=True)
    c = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1).requires_grad_()
    t = torch.randint(0, k, (m,), generator=g)
    s = sk.prototype_scores(z.detach(), c.detach())
    lse = sk.prototype_logsumexp(s, 0.1, backend=backend)
    truth = np.log(np.exp(s.double().numpy() / 0.1).sum(1))
    np.testing.assert_allclose(lse.numpy(), truth, rtol=1e-6, atol=1e-5)
    given = sk.prototype_cross_entropy(z, c, t, 0.1, lse=lse, backend=backend)
    g_given = torch.autograd.grad(given, (z, c))
    plain = sk.prototype_cross_entropy(z, c, t, 0.1, backend=backend)
    g_plain = torch.autograd.grad(plain, (z, c))
    torch.testing.assert_close(given, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_given, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="lse"):
        sk.prototype_cross_entropy(z, c, torch.softmax(s, 1), 0.1, lse=lse, backend=backend)
