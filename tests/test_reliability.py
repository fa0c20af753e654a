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


@pytest.mark.parametrize("backend", BACKENDS)
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

@pytest.mark.parametrize("backend", BACKENDS)
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
@pytest.mark.parametrize("backend", BACKENDS)
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
