"""Backend selection, availability errors, import without the extension, torch.compile."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import sigma_kernels as sk
from sigma_kernels import backends


def test_reference_always_available():
    assert "reference" in sk.available_backends()
    assert sk.backend_info()["reference"] == {"available": True, "reason": None, "fallbacks": ()}


def _extension_built():
    """Decided here by importing the extension, not by the registry's availability check."""
    try:
        import sigma_kernels._C  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_usable():
    """triton installed, and a CUDA device or the interpreter to run its kernels."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def test_auto_picks_by_device(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    expected_cpu = "cpu" if _extension_built() else "reference"
    assert sk.resolve_backend("auto", "cpu", torch.float32) == expected_cpu
    assert sk.resolve_backend("auto", "cpu", torch.float16) == expected_cpu
    assert sk.resolve_backend("auto", "cpu", torch.float64) == "reference"
    expected_cuda = "triton" if _triton_usable() else "reference"
    assert sk.resolve_backend("auto", "cuda", torch.float32) == expected_cuda
    assert sk.resolve_backend("auto", "cuda", torch.float64) == "reference"
    assert sk.resolve_backend("auto", "meta", torch.float32) == "reference"


def test_environment_variable_overrides_auto_only(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert sk.resolve_backend("auto", "cpu", torch.float32) == "reference"
    if backends.is_available("triton"):
        assert sk.resolve_backend("triton", "cpu", torch.float32) == "triton"  # explicit wins
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=backends.ENV_VAR):
        sk.resolve_backend("auto", "cpu", torch.float32)


def test_unavailable_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(backends._cache, "cpu", (None, "the compiled extension is not built"))
    with pytest.raises(sk.BackendUnavailableError, match="backend 'cpu' is not available: the compiled extension"):
        sk.sinkhorn(torch.randn(4, 3), 0.05, 2, backend="cpu")
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert sk.resolve_backend("auto", "cpu", torch.float32) == "reference"


def test_missing_primitives_fall_back_to_reference_visibly(monkeypatch):
    import types
    fake = types.ModuleType("fake_backend")
    fake.sinkhorn_assign = lambda s, v, inv_eps: torch.zeros(s.shape[0], dtype=torch.int64)
    monkeypatch.setitem(sys.modules, "fake_backend", fake)
    monkeypatch.setitem(backends._MODULES, "cpu", "fake_backend")
    monkeypatch.delitem(backends._cache, "cpu", raising=False)
    ns = backends.get_backend("cpu")
    assert ns.sinkhorn_assign is fake.sinkhorn_assign
    assert "sinkhorn_row_step" in ns.fallbacks and "sinkhorn_assign" not in ns.fallbacks
    monkeypatch.delitem(backends._cache, "cpu")


def test_import_and_run_without_the_extension():
    code = (
        "import sys; sys.modules['sigma_kernels._C'] = None\n"
        "import torch, sigma_kernels as sk\n"
        "assert not sk.backend_info()['cpu']['available']\n"
        "assert sk.resolve_backend('auto', 'cpu', torch.float32) == 'reference'\n"
        "q = sk.sinkhorn(torch.randn(5, 3), 0.05, 3)\n"
        "assert torch.allclose(q.sum(1), torch.ones(5))\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != backends.ENV_VAR}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_torch_compile_fullgraph_through_every_op():
    def step(s, z, c):
        idx = sk.sinkhorn_assign(s, 0.05, 3)
        q = sk.sinkhorn(s, 0.05, 3)
        r = sk.sinkhorn_streaming(z, c, 0.05, 3)
        return (sk.prototype_cross_entropy(z, c, idx) + sk.prototype_cross_entropy(z, c, q)
                + sk.prototype_cross_entropy_sinkhorn(z, c, z, c, r.v, 0.05, targets="soft"))

    g = torch.Generator().manual_seed(0)
    s = torch.randn(37, 29, generator=g)
    z = torch.randn(37, 19, generator=g)
    c = torch.nn.functional.normalize(torch.randn(29, 19, generator=g), dim=1)
    z1, c1 = z.clone().requires_grad_(), c.clone().requires_grad_()
    z2, c2 = z.clone().requires_grad_(), c.clone().requires_grad_()
    compiled = torch.compile(step, fullgraph=True, backend="eager")
    a = compiled(s, z1, c1)
    b = step(s, z2, c2)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(z1.grad, z2.grad)
    torch.testing.assert_close(c1.grad, c2.grad)


def test_availability_matches_what_is_installed():
    assert backends.is_available("cpu") == _extension_built()
    assert backends.is_available("triton") == _triton_usable()


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_custom_ops_pass_opcheck(backend):
    """Schema, fake (meta) kernels, autograd registration and AOT dispatch of every op, with each
    backend behind it (triton under the interpreter on CPU tensors)."""
    from torch.library import opcheck as full_opcheck
    if not backends.is_available(backend):
        pytest.skip(backends.backend_info()[backend]["reason"])
    if backend == "triton" and torch.cuda.is_available():
        device = "cuda"
    else:
        device = "cpu"
    g = torch.Generator().manual_seed(1)
    s = torch.randn(7, 5, generator=g).to(device)
    x = torch.nn.functional.normalize(torch.randn(7, 3, generator=g), dim=1).to(device).requires_grad_()
    c = torch.randn(5, 3, generator=g).to(device).requires_grad_()
    t = torch.randint(0, 5, (7,), generator=g).to(device)
    v = torch.zeros(5, device=device)
    # Interpreted Triton is slow per call: its run skips the AOT-dispatch replay (which traces the
    # fake kernels, the same for every backend, and is covered by the reference run).
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    if backend == "triton" and device == "cpu":
        def opcheck(op, args):
            return full_opcheck(op, args, test_utils=checks)
    else:
        opcheck = full_opcheck
    ops = torch.ops.sigma_kernels
    opcheck(ops.sinkhorn_solve, (s, 20.0, 3, 0.0, 5, backend))
    opcheck(ops.sinkhorn_solve_streaming, (x.detach(), c.detach(), 20.0, 3, 0.0, 5, backend))
    opcheck(ops.sinkhorn_plan, (s, torch.zeros(7, device=device), v, 20.0, 1.0, backend))
    opcheck(ops.sinkhorn_assign, (s, v, 20.0, backend))
    opcheck(ops.sinkhorn_assign_streaming, (x.detach(), c.detach(), v, 20.0, backend))
    opcheck(ops.linear_cross_entropy, (x, c, t, 10.0, backend))
    opcheck(ops.sinkhorn_target_cross_entropy, (x, c, x.detach(), c.detach(), v, 20.0, 10.0, True, backend))
    opcheck(ops.sinkhorn_transport, (s, 20.0, 3, 0.0, 5, backend))
    opcheck(ops.sinkhorn_assign_entropy, (s, v, 20.0, backend))
    opcheck(ops.sinkhorn_assign_entropy_streaming, (x.detach(), c.detach(), v, 20.0, backend))
    opcheck(ops.row_logsumexp, (s, 10.0, backend))
    lse_rows = torch.logsumexp(x.detach() @ c.detach().T * 10.0, dim=1)
    opcheck(ops.linear_cross_entropy_given_lse, (x, c, t, lse_rows, 10.0, backend))
    # autograd with only one factor requiring grad (the backward skips the other gradient)
    opcheck(ops.linear_cross_entropy, (x, c.detach(), t, 10.0, backend))
    opcheck(ops.linear_cross_entropy, (x.detach(), c, t, 10.0, backend))
    xd, cd = x.detach(), c.detach()
    lse, grad = torch.randn(7, generator=g).to(device), torch.rand(7, generator=g).to(device)
    for need_dx, need_dc in ((True, True), (True, False), (False, True)):
        opcheck(ops.linear_cross_entropy_backward, (grad, xd, cd, t, lse, 10.0, need_dx, need_dc, backend))
        opcheck(ops.sinkhorn_target_cross_entropy_backward,
                (grad, xd, cd, xd, cd, v, lse, 20.0, 10.0, True, need_dx, need_dc, backend))
