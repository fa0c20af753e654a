"""The loss diagnostics on the `cpu` backend: their values (against the reference backend's, on
float32 inputs) and their cost: turning them on adds no GEMM and no M×K-sized tensor, only the
entropy in the pass that labels the tokens."""
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from sigma.losses import SinkhornSwapLoss
from sigma_kernels.backends import backend_info, is_available

pytestmark = pytest.mark.skipif(
    not is_available("cpu"),
    reason=f"compiled extension sigma_kernels._C not built: {backend_info()['cpu']['reason']}")

M, K, D = 150, 37, 16


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    zv = torch.randn(M, D, generator=g, requires_grad=True)
    zp = torch.randn(M, D, generator=g, requires_grad=True)
    c = F.normalize(torch.randn(K, D, generator=g), dim=1)
    return zv, zp, c


def loss_module(c, **kw):
    crit = SinkhornSwapLoss(K, D, **kw)
    with torch.no_grad():
        crit.prototypes.copy_(c)
    return crit


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_cpu_stats_and_gradients_match_reference(targets, streaming):
    zv, zp, c = inputs(1)
    out = {}
    for backend in ("cpu", "reference"):
        crit = loss_module(c, backend=backend, targets=targets, streaming=streaming)
        a, b = zv.detach().clone().requires_grad_(), zp.detach().clone().requires_grad_()
        loss, stats = crit(a, b, return_stats=True)
        loss.backward()
        out[backend] = (loss, stats, a.grad, b.grad, crit.prototypes.grad)
    loss_c, stats_c, *grads_c = out["cpu"]
    loss_r, stats_r, *grads_r = out["reference"]
    torch.testing.assert_close(loss_c, loss_r, rtol=2e-5, atol=2e-6)
    for g_c, g_r in zip(grads_c, grads_r):
        torch.testing.assert_close(g_c, g_r, rtol=2e-4, atol=2e-6)
    assert stats_c.keys() == stats_r.keys()
    for key in stats_c:
        if key.startswith(("unused", "usage")):
            assert torch.equal(stats_c[key], stats_r[key]), key
        else:
            torch.testing.assert_close(stats_c[key], stats_r[key], rtol=2e-5, atol=2e-6, msg=key)


class _Record(TorchDispatchMode):
    """Every op called, with whether it is a GEMM or returns an M×K-sized tensor."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        # views share their input's memory: only new M×K-sized tensors count
        big = not func.is_view and any(isinstance(t, torch.Tensor) and t.numel() >= M * K for t in outs)
        name = func.name()
        gemm = name.split("::")[-1].split(".")[0] in ("mm", "addmm", "bmm", "matmul")
        if big or gemm or name.startswith("sigma_kernels"):
            self.calls.append(name.split(".")[0])
        return out


def _recorded(crit, zv, zp):
    with _Record() as rec:
        crit(zv, zp).backward()
    return Counter(rec.calls)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_stats_add_no_score_recomputation(targets, streaming):
    zv, zp, c = inputs(2)
    kw = dict(backend="cpu", targets=targets, streaming=streaming)
    on = _recorded(loss_module(c, compute_stats=True, **kw), zv, zp)
    off = _recorded(loss_module(c, compute_stats=False, **kw), zv, zp)
    extra = on - off
    missing = off - on
    if targets == "hard":
        # the labelling pass also returns the entropy: the same op count, one op swapped per branch
        name = "sigma_kernels::sinkhorn_assign_entropy" + ("_streaming" if streaming else "")
        assert extra == Counter({name: 2})
        assert sum(missing.values()) == 2 and all("sinkhorn_assign" in n for n in missing)
    elif not streaming:
        # soft targets on stored scores: the targets' softmax-products pass gives the labels and
        # entropies too, so the diagnostics add no op at all (only a flag changes)
        assert extra == Counter() and missing == Counter(), (extra, missing)
    else:
        # soft targets need no labels otherwise: one labelling pass per branch, nothing else
        assert missing == Counter()
        assert set(extra) <= {"sigma_kernels::sinkhorn_assign_entropy",
                              "sigma_kernels::sinkhorn_assign_entropy_streaming",
                              "sigma_kernels_ext::sinkhorn_assign_entropy",
                              "sigma_kernels_ext::streaming_assign_entropy"}
        assert sum(v for n, v in extra.items() if n.startswith("sigma_kernels::")) == 2
    assert not any("mm" in n for n in extra), extra


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_stored_path_backward_touches_no_score_matrix(backend, targets):
    """With stored scores the cross-entropies run on softmax products computed in the forward: the
    backward makes no M×K-sized tensor and no GEMM over the scores (only M×D and K×D work)."""
    zv, zp, c = inputs(3)
    crit = loss_module(c, backend=backend, targets=targets, streaming=False)
    loss = crit(zv, zp)
    seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = [t for t in (*args, *(out if isinstance(out, (tuple, list)) else (out,)))
                       if isinstance(t, torch.Tensor)]
            seen.append((func.name(), max((t.numel() for t in tensors), default=0)))
            return out

    with Spy():
        loss.backward()
    assert seen, "the backward ran no op"
    assert max(n for _, n in seen) < M * K, [s for s in seen if s[1] >= M * K]
    assert zv.grad is not None and zp.grad is not None and crit.prototypes.grad is not None
