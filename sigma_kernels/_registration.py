"""How the custom ops of every family are registered: the namespace, output helpers for the fake
(meta) kernels, and the one autograd helper shared by the differentiable ops.

The op families themselves live next to their public functions: `_sinkhorn_ops.py` (under
`sinkhorn.py`) and `_cross_entropy_ops.py` (under `cross_entropy.py`). Every op takes the concrete
backend name as its last argument; validation and backend choice happen in the public functions.
"""
import torch
from torch import Tensor

NS = "sigma_kernels"

# name -> CustomOpDef of every op registered through `custom_op` (tests look implementations up here)
OPS = {}


def custom_op(name):
    """torch.library.custom_op `sigma_kernels::<name>` (pure: mutates nothing), recorded in OPS."""
    def register(fn):
        op = torch.library.custom_op(f"{NS}::{name}", mutates_args=())(fn)
        OPS[name] = op
        return op
    return register


def vec(like, n, dtype):
    """An uninitialised (n,) tensor on like's device, for fake kernels."""
    return like.new_empty((n,), dtype=dtype)


def or_empty(t, like, dtype=None):
    """Custom ops cannot return None: an output not asked for travels as an empty (0,) tensor, a new
    one each time (outputs must not alias)."""
    return t if t is not None else like.new_empty((0,), dtype=dtype)


def grads_or_empty(dx, dc, x, c):
    """(dx, dc) with a gradient not asked for (None) as an empty (0,) tensor."""
    return or_empty(dx, x), or_empty(dc, c)


def fake_grads(x, c, need_dx, need_dc):
    """The fake kernel of every backward op: (dx like x or empty, dc like c or empty)."""
    return grads_or_empty(torch.empty_like(x) if need_dx else None, torch.empty_like(c) if need_dc else None, x, c)


def register_gradient(op, backward_op, backward_args):
    """Autograd for `op`, differentiable in its first two inputs (x, c) and in nothing else.

    backward_args(*inputs, output) -> dict of backward_op's arguments other than the upstream
    gradient and need_dx / need_dc, by name: tensors (or None) are saved for backward, anything
    else is kept as a constant. The backward is backward_op(gradient of op's first output,
    need_dx=..., need_dc=..., **those) -> (dx, dc), empty tensors for a gradient not asked for.
    The gradients of op's other outputs are ignored: they are by-products (e.g. a row LSE) that
    the public functions never return with a graph.
    """
    def setup_context(ctx, inputs, output):
        args = backward_args(*inputs, output)
        ctx.tensor_names = [k for k, a in args.items() if a is None or isinstance(a, Tensor)]
        ctx.save_for_backward(*(args[k] for k in ctx.tensor_names))
        ctx.constants = {k: a for k, a in args.items() if k not in ctx.tensor_names}
        ctx.n_inputs = len(inputs)

    def backward(ctx, grad, *by_product_grads):
        need_dx, need_dc = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        saved = dict(zip(ctx.tensor_names, ctx.saved_tensors))
        dx, dc = backward_op(grad, need_dx=need_dx, need_dc=need_dc, **saved, **ctx.constants)
        return ((dx if need_dx else None), (dc if need_dc else None)) + (None,) * (ctx.n_inputs - 2)

    op.register_autograd(backward, setup_context=setup_context)


def refuse_double_backward(backward_op, public_name):
    """Autograd for a backward op that refuses, so create_graph=True works and only
    differentiating the gradient again fails, with a message naming the public function."""
    def backward(ctx, *grads):
        raise RuntimeError(f"double backward is not supported by sigma_kernels.{public_name} "
                           f"(its gradient is computed by a fused kernel without an autograd formula)")

    def setup_context(ctx, inputs, output):
        pass

    backward_op.register_autograd(backward, setup_context=setup_context)
