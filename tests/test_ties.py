"""Hard labels at near-ties (docs/numerics.md, "Near-ties"): logits within the tie window of the row
max go to the lowest index, identically on every backend and path, so that rounding never decides a
label; gaps clearly wider than the window keep the exact argmax. Checked against the float64 truth
(tests/truth.py), on each backend available here (triton under the interpreter)."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from truth import TIE_WINDOW, hard_labels, sinkhorn_log, swap_loss_terms

from sigma import SinkhornSwapLoss
from sigma_kernels import _cross_entropy_ops as lib
from sigma_kernels.backends import available_backends, get_backend

# The rerun on the AVX2 loops (test_cpu_exp_domain.py, SIGMA_CPU_NO_AVX512=1) needs only the cpu cases.
BACKENDS = ["cpu"] if os.environ.get("SIGMA_CPU_NO_AVX512") else [b for b in available_backends() if b != "cuda"]
EPS, TAU, ITERS = 0.05, 0.1, 3


# --- the SinkhornSwapLoss cases where the plan is exactly uniform -----------------------------------

def _degenerate_inputs(case, dtype, seed=0):
    """(zv, zp, c): one token, or 9 copies of one token per branch; Q is then exactly uniform."""
    g = torch.Generator().manual_seed(seed)
    m = 1 if case == "one token" else 9
    zv = torch.randn(1, 8, generator=g).expand(m, 8).to(dtype)
    zp = torch.randn(1, 8, generator=g).expand(m, 8).to(dtype)
    c = F.normalize(torch.randn(24, 8, generator=g), dim=1)
    return zv, zp, c


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("case,dtype,seed", [("one token", torch.float32, 0), ("one token", torch.bfloat16, 2),
                                             ("identical rows", torch.float32, 0),
                                             ("identical rows", torch.bfloat16, 1)])
def test_uniform_plan_gives_the_same_loss_on_every_backend_and_path(case, dtype, seed, streaming, backend):
    """The issue's case (reference/stored 16.27, cpu/stored 13.07): every logit of a row is the max in
    exact arithmetic, so every backend and path must take label 0 and match the float64 loss."""
    zv, zp, c = _degenerate_inputs(case, dtype, seed)
    want = sum(swap_loss_terms(zv.double(), zp.double(), c.double(), EPS, ITERS, TAU, "hard")).item()
    crit = SinkhornSwapLoss(24, 8, EPS, ITERS, TAU, backend=backend, streaming=streaming, compute_stats=False)
    with torch.no_grad():
        crit.prototypes.copy_(c)
    got = crit(zv, zp).item()
    assert math.isclose(got, want, rel_tol=1e-5), (got, want)


def test_the_float64_truth_labels_a_uniform_plan_with_index_0():
    """What the loss test above relies on: the truth's targets there are all 0 (a real tie)."""
    zv, _, c = _degenerate_inputs("identical rows", torch.float64)
    s = F.normalize(zv, dim=1) @ c.double().T
    q, _, v = sinkhorn_log(s, EPS, ITERS)
    assert torch.allclose(q, torch.full_like(q, 1 / 24), rtol=1e-12, atol=0)
    assert hard_labels(s / EPS + v, v).tolist() == [0] * 9


# --- planted near-ties on every label path --------------------------------------------------------

def _planted(seed, m, k, v_scale):
    """Logits T (M, K) float64 with, per row, a maximum, entries tied with it (within half the
    window) and the rest clearly below (two to four windows, or more), potentials v (K,), and the
    expected labels: the lowest index among each row's maximum and tied entries."""
    rng = np.random.default_rng(seed)
    v = rng.uniform(-1, 1, k) * v_scale
    top = rng.uniform(0.5, 40, m) * rng.choice([-1, 1], m)  # |top| > 0: a window > 0
    window = TIE_WINDOW * (np.abs(top) + np.abs(v).max())
    kind = rng.choice(["tied", "just below", "below"], (m, k))
    kind[np.arange(m), rng.integers(0, k, m)] = "max"
    offset = np.select([kind == "tied", kind == "just below", kind == "below"],
                       [rng.uniform(0, 0.5, (m, k)) * window[:, None], rng.uniform(2, 4, (m, k)) * window[:, None],
                        4 * window[:, None] + rng.uniform(1e-3, 10, (m, k))], 0.0)
    want = [np.flatnonzero((kind[i] == "max") | (kind[i] == "tied"))[0] for i in range(m)]
    return top[:, None] - offset, v, torch.tensor(want)


@pytest.mark.parametrize("name", BACKENDS)
# Each example runs 8 label paths (seconds under the Triton interpreter): a third of the profile's count.
@settings(max_examples=max(10, settings.default.max_examples // 3))
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 5), k=st.integers(1, 37),
       v_scale=st.sampled_from([0.0, 1.0, 30.0]), inv_eps=st.sampled_from([1.0, 20.0, 1000.0]))
def test_planted_near_ties_go_to_the_lowest_index_on_every_path(name, seed, m, k, v_scale, inv_eps):
    """Scores S = (T − v)/ε⁻¹ in float32 (rounding moves each logit by far less than the window);
    streaming paths get S as x·Iᵀ (exact). Every place a hard label is taken must return the
    planted labels: assign (+ entropy), stored and streaming, softmax and swapped products, and the
    cross-entropy against on-the-fly hard Sinkhorn targets."""
    t, v64, want = _planted(seed, m, k, v_scale)
    s = torch.from_numpy((t - v64) / inv_eps).float()
    v = torch.from_numpy(v64).float()
    assert torch.equal(hard_labels(s.double() * inv_eps + v.double(), v), want)  # the truth agrees
    eye = torch.eye(k)
    g = torch.Generator().manual_seed(m * k)
    x, c = torch.randn(m, 5, generator=g), torch.randn(k, 5, generator=g)
    b = get_backend(name)
    got = {"assign": b.sinkhorn_assign(s, v, inv_eps),
           "assign_entropy": b.sinkhorn_assign_entropy(s, v, inv_eps)[0],
           "streaming_assign": b.streaming_assign(s, eye, v, inv_eps),
           "streaming_assign_entropy": b.streaming_assign_entropy(s, eye, v, inv_eps)[0],
           "softmax_products": lib.softmax_products(s, inv_eps, v, eye, None, True, name)[3]}
    swapped = lib.swapped_softmax_products(s, s, eye, v, v, inv_eps, 1.0, None, False, True, name)[4]
    got["swapped a"], got["swapped b"] = swapped[0], swapped[1]
    for path, labels in got.items():
        assert torch.equal(labels, want), (path, labels.tolist(), want.tolist())
    rows = b.sinkhorn_target_cross_entropy_forward(x, c, s, eye, v, inv_eps, 2.0, False)[0]
    torch.testing.assert_close(rows, b.linear_cross_entropy_forward(x, c, want, 2.0)[0], rtol=0, atol=0,
                               msg="on-the-fly hard targets")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's NumPy on inf − inf
@pytest.mark.parametrize("backend", BACKENDS)
def test_infinite_row_max_takes_no_window(backend):
    """A +inf logit has no tie window (inf − inf is undefined): the first +inf wins, as torch.argmax;
    a row of −inf only gets 0; a −inf potential does not widen the window of finite rows."""
    s = torch.tensor([[1.0, math.inf, math.inf, 2.0], [-math.inf] * 4, [4.0, 5.0, 0.0, 0.0]])
    v = torch.tensor([0.0, 0.0, 0.0, -math.inf])
    assert get_backend(backend).sinkhorn_assign(s, v, 1.0).tolist() == [1, 0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gaps_wider_than_the_window_keep_the_exact_argmax(backend):
    """No change where a label is not a near-tie: random logits, labels equal torch.argmax wherever
    the top-2 gap is clearly (2×) wider than the window, and the window is what the docs state."""
    g = torch.Generator().manual_seed(3)
    s, v = torch.randn(400, 300, generator=g), 0.3 * torch.randn(300, generator=g)
    got = get_backend(backend).sinkhorn_assign(s, v, 20.0)
    t = s.double() * 20.0 + v.double()
    top2 = t.topk(2, dim=1).values
    window = TIE_WINDOW * (top2[:, 0].abs() + v.abs().max().double())
    clear = top2[:, 0] - top2[:, 1] > 2 * window
    assert clear.float().mean() > 0.95
    assert torch.equal(got[clear], t.argmax(1)[clear])
    assert torch.equal(got, hard_labels(t, v))
