"""Bad input raises a clear error that names the argument."""
import pytest
import torch

import sigma_kernels as sk

S = torch.randn(6, 4)
Z = torch.randn(6, 3)
C = torch.randn(4, 3)
IDX = torch.tensor([0, 1, 2, 3, 0, 1])


@pytest.mark.parametrize("call, exc, match", [
    (lambda: sk.sinkhorn(torch.randn(6), 0.05, 3), ValueError, "scores must be 2-D"),
    (lambda: sk.sinkhorn(torch.randn(2, 3, 4), 0.05, 3), ValueError, "scores must be 2-D"),
    (lambda: sk.sinkhorn(torch.ones(6, 4, dtype=torch.int64), 0.05, 3), TypeError, "scores must be float"),
    (lambda: sk.sinkhorn([[1.0]], 0.05, 3), TypeError, "scores must be a torch.Tensor"),
    (lambda: sk.sinkhorn(torch.randn(0, 4), 0.05, 3), ValueError, "scores must be non-empty"),
    (lambda: sk.sinkhorn(torch.randn(6, 0), 0.05, 3), ValueError, "scores must be non-empty"),
    (lambda: sk.sinkhorn(S, 0.0, 3), ValueError, "epsilon must be finite and > 0"),
    (lambda: sk.sinkhorn(S, -0.1, 3), ValueError, "epsilon"),
    (lambda: sk.sinkhorn(S, float("nan"), 3), ValueError, "epsilon"),
    (lambda: sk.sinkhorn(S, "0.05", 3), TypeError, "epsilon"),
    (lambda: sk.sinkhorn(S, 0.05, 0), ValueError, "n_iters must be >= 1"),
    (lambda: sk.sinkhorn(S, 0.05, 2.5), TypeError, "n_iters must be an int"),
    (lambda: sk.sinkhorn(S, 0.05, 3, tol=-1.0), ValueError, "tol"),
    (lambda: sk.sinkhorn(S, 0.05, 3, tol=1e-3, check_every=0), ValueError, "check_every"),
    (lambda: sk.sinkhorn(S, 0.05, 3, backend="fast"), ValueError, "backend must be one of"),
    (lambda: sk.sinkhorn(S, 0.05, 3, backend=1), TypeError, "backend must be a string"),
    (lambda: sk.sinkhorn_streaming(Z, torch.randn(4, 5)), ValueError, "z has D=3 features but prototypes has D=5"),
    (lambda: sk.prototype_cross_entropy(Z, torch.randn(4, 5), IDX), ValueError, "D=3 features"),
    (lambda: sk.prototype_cross_entropy(Z, C, IDX, temperature=0), ValueError, "temperature must be finite and > 0"),
    (lambda: sk.prototype_cross_entropy(Z, C, IDX, temperature=-1), ValueError, "temperature"),
    (lambda: sk.prototype_cross_entropy(Z, C, torch.tensor([0, 1, 2, 4, 0, 1])),
     ValueError, r"class index 4, outside \[0, K\)"),
    (lambda: sk.prototype_cross_entropy(Z, C, torch.tensor([0, 1, 2, -1, 0, 1])), ValueError, "class index -1"),
    (lambda: sk.prototype_cross_entropy(Z, C, IDX[:5]), ValueError, r"index target must have shape \(M,\)"),
    (lambda: sk.prototype_cross_entropy(Z, C, torch.rand(6, 5)),
     ValueError, r"probability target must have shape \(M, K\)"),
    (lambda: sk.prototype_cross_entropy(Z, C, torch.rand(5, 4)), ValueError, "probability target"),
    (lambda: sk.prototype_cross_entropy(Z, C, IDX.bool()), TypeError, "target must be int64"),
    (lambda: sk.prototype_cross_entropy(Z, C, IDX.tolist()), TypeError, "target must be a torch.Tensor"),
    (lambda: sk.prototype_cross_entropy(Z, C, IDX, reduction="avg"), ValueError, "reduction must be one of"),
    (lambda: sk.prototype_cross_entropy(Z.int(), C, IDX), TypeError, "z must be float"),
    (lambda: sk.prototype_cross_entropy(Z, C.int(), IDX), TypeError, "prototypes must be float"),
    (lambda: sk.prototype_cross_entropy(Z[:0], C, IDX[:0]), ValueError, "z must be non-empty"),
    (lambda: sk.prototype_cross_entropy(Z, C[:0], IDX), ValueError, "prototypes must be non-empty"),
    (lambda: sk.prototype_cross_entropy(Z, C, IDX.to("meta")), ValueError, "target is on meta"),
    (lambda: sk.prototype_cross_entropy(Z, C.to("meta"), IDX), ValueError, "one device"),
    (lambda: sk.prototype_cross_entropy_sinkhorn(Z, C, Z, C, torch.zeros(5), 0.05),
     ValueError, r"v_target must have shape \(4,\)"),
    (lambda: sk.prototype_cross_entropy_sinkhorn(Z, C, Z[:5], C, torch.zeros(4), 0.05),
     ValueError, "z_target must have M=6"),
    (lambda: sk.prototype_cross_entropy_sinkhorn(Z, C, Z, C, torch.zeros(4), 0.0), ValueError, "epsilon"),
    (lambda: sk.prototype_cross_entropy_sinkhorn(Z, C, Z, C, torch.zeros(4), 0.05, targets="argmax"),
     ValueError, "targets must be"),
    (lambda: sk.prototype_scores(Z, C, temperature=0.0), ValueError, "temperature"),
    (lambda: sk.sinkhorn_assign_from_potentials(S, torch.zeros(4), 0.05, return_entropy="no"),
     TypeError, "return_entropy must be True or False, got str 'no'"),
    (lambda: sk.sinkhorn_assign_from_potentials_streaming(Z, C, torch.zeros(4), 0.05, return_entropy=1),
     TypeError, "return_entropy must be True or False"),
    (lambda: sk.prototype_softmax_products(S, C, 0.1, return_labels="no"), TypeError, "return_labels must be"),
    (lambda: sk.prototype_swapped_products(S, Z, C, torch.zeros(4), torch.zeros(4), 0.05, grad_b="no"),
     TypeError, "grad_b must be True or False"),
    (lambda: sk.prototype_swapped_products(S, Z, C, torch.zeros(4), torch.zeros(4), 0.05, return_labels=None),
     TypeError, "return_labels must be True or False"),
    (lambda: sk.prototype_swapped_products(S, None, C, torch.zeros(4), torch.zeros(4), 0.05),
     TypeError, "z_b must be a torch.Tensor"),
])
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_float64_rejected_by_single_precision_backends():
    with pytest.raises(TypeError, match="does not support dtype torch.float64"):
        sk.sinkhorn(S.double(), 0.05, 3, backend="triton")


def test_non_contiguous_features_work():
    z = torch.randn(3, 6).T  # (6, 3), non-contiguous
    c = torch.randn(3, 4).T
    a = sk.prototype_cross_entropy(z, c, IDX, backend="reference")
    b = sk.prototype_cross_entropy(z.contiguous(), c.contiguous(), IDX, backend="reference")
    torch.testing.assert_close(a, b)
